"""No process an episode started outlives it, whatever it did (setsid, double fork, a group of its own).

A runtime stops what it started (the command runtime kills its process group), but a process
that left the group or the session escapes that. So, on Linux:

* Each worker is a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``): an orphan among its
  descendants is re-parented to the worker, not to init, so every process an episode started
  stays in the worker's process tree. After each episode the worker kills that whole tree and
  reaps it (``kill_leftovers``); the check for an episode that started nothing is one
  ``waitid`` syscall (~1 us), so CartPole episodes do not pay for command episodes.
* A worker cannot sweep once SIGKILLed. When the agent kills one (stuck, or deaf to SIGTERM),
  it first stops it and kills the tree under it (``kill_tree``). A worker killed by someone
  else (the OOM killer) leaves its tree to the nearest subreaper above it or to init (its
  parent is the forkserver, which is neither); for that, each worker sets ``WORKER_ENV`` to a
  marker unique to the process, which every program an episode execs inherits, and the pool
  kills the processes that carry a dead worker's marker (``kill_marked``). What escapes that
  case: a program that execs with a scrubbed environment (``env -i``, sudo) or overwrites its
  environment block (setproctitle), and a process forked by the worker itself without exec
  (its environment block is the forkserver's).

* A worker whose agent dies (kill -9) is sent SIGTERM by the kernel (``stop_with_agent``), so
  it stops its episode and sweeps even while stuck in a runtime call that never reads its pipe.

Elsewhere every function here does nothing: a runtime's own ``stop()`` is all there is.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import multiprocessing
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

WORKER_ENV = "OPENRANGE_WORKER"  # a worker's marker, inherited by the programs its episodes run
SWEEP_TIMEOUT = 1.0  # seconds to wait for SIGKILLed leftovers to die (one stuck in the kernel may not)
_PR_SET_CHILD_SUBREAPER = 36
_IS_LINUX = sys.platform.startswith("linux")
# /proc/<pid>/task/<tid>/children needs CONFIG_PROC_CHILDREN (set by the common distributions' kernels)
_HAS_CHILDREN_FILES = _IS_LINUX and Path(f"/proc/self/task/{os.getpid()}/children").exists()


def become_subreaper(marker: str) -> bool:
    """Called once by a worker: adopt the orphans among its descendants, and mark what its
    episodes exec with ``marker``. False where that is not possible (not Linux)."""
    if not _IS_LINUX:
        return False
    os.environ[WORKER_ENV] = marker
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("cannot become a child subreaper: %s", os.strerror(ctypes.get_errno()))
        return False
    return True


def stop_with_agent() -> None:
    """Called once by a worker: SIGTERM it when its agent dies, so it stops its episode and
    sweeps even while a runtime call is stuck and the closed pipe goes unread (the handler runs
    once the call is back in Python: one stuck in C code stays stuck). PR_SET_PDEATHSIG would
    watch the forkserver, which outlives the agent while any worker lives; so the kernel is asked
    to signal us (O_ASYNC, F_SETSIG) when multiprocessing's parent sentinel, a pipe whose only
    writer is the agent, reaches EOF."""
    parent = multiprocessing.parent_process()
    fd = parent.sentinel if parent is not None else None
    if not _IS_LINUX or fd is None:
        return
    fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
    fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGTERM)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
    if select.select([fd], [], [], 0)[0]:  # the agent died before that took effect
        os.kill(os.getpid(), signal.SIGTERM)


def has_children() -> bool:
    """Whether this process has a child, running or unreaped; it stays unreaped."""
    if not _IS_LINUX:
        return False
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def kill_leftovers(timeout: float = SWEEP_TIMEOUT) -> int:
    """SIGKILL every descendant of this process and reap them; the number killed. For a worker
    between episodes, when nothing of the next one runs yet: nothing here may live on."""
    if not has_children():
        return 0
    me = os.getpid()
    killed = _kill_passes(lambda: _live(_descendants(me)), timeout, between=_reap)
    _reap()  # the last pass's dead
    return killed


def kill_tree(root: int, timeout: float = SWEEP_TIMEOUT) -> int:
    """For the pool, about to SIGKILL worker ``root``: stop it (so it starts nothing more), then
    SIGKILL every process under it; the number killed. Its subreaper keeps the tree whole until
    then; its killed children stay zombies until it dies and whoever adopts them reaps them."""
    if not _IS_LINUX:
        return 0
    _signal(root, signal.SIGSTOP)
    return _kill_passes(lambda: _live(_descendants(root)), timeout)


def kill_marked(marker: str, timeout: float = SWEEP_TIMEOUT) -> int:
    """SIGKILL every process whose environment carries ``marker`` (a dead worker's), whoever
    adopted it; the number killed. Scans /proc: ~ms, for a worker's death only."""
    if not _IS_LINUX:
        return 0
    needle = f"{WORKER_ENV}={marker}".encode()
    return _kill_passes(lambda: _marked(needle), timeout)


def _kill_passes(find: Callable[[], list[int]], timeout: float, between: Callable[[], int] | None = None) -> int:
    """SIGKILL what ``find`` returns, pass after pass, until no pass finds one we may signal: a
    process forked during a pass, or orphaned by a kill (re-parented to a subreaper, which
    keeps it in the tree), is found by the next. The number killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        if between is not None:
            between()
        hit = [pid for pid in find() if _signal(pid, signal.SIGKILL)]
        if not hit:
            return len(killed)
        killed.update(hit)
        if time.monotonic() >= deadline:  # stuck in the kernel (D state): SIGKILL acts when it returns
            log.warning("processes %s outlived SIGKILL for %g s; leaving them", hit, timeout)
            return len(killed)
        time.sleep(0.001)


def _signal(pid: int, sig: signal.Signals) -> bool:
    """Whether ``sig`` reached ``pid`` (not gone, and ours to signal: a setuid program is not)."""
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _live(pids: list[int]) -> list[int]:
    return [pid for pid in pids if _state(pid) not in (b"Z", None)]


def _descendants(root: int) -> list[int]:
    """The process tree under ``root``, parents before children (zombies included)."""
    found: list[int] = []
    pending = [root]
    while pending:
        children = _children(pending.pop())
        found.extend(children)
        pending.extend(children)
    return found


def _children(pid: int) -> list[int]:
    """Children of every thread of ``pid`` (a re-parented orphan goes to any live thread)."""
    if not _HAS_CHILDREN_FILES:
        return _children_by_scan(pid)
    children: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:  # gone already
        return children
    for tid in tasks:
        with contextlib.suppress(OSError):
            children.extend(map(int, Path(f"/proc/{pid}/task/{tid}/children").read_bytes().split()))
    return children


def _children_by_scan(pid: int) -> list[int]:
    """The same from every process's parent pid: for kernels without CONFIG_PROC_CHILDREN."""
    children = []
    for entry in os.scandir("/proc"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if entry.name.isdigit():
                stat = Path(entry.path, "stat").read_bytes().rsplit(b")", 1)[1].split()
                if int(stat[1]) == pid:
                    children.append(int(entry.name))
    return children


def _reap() -> int:
    """Reap every child that has exited; how many."""
    reaped = 0
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped += 1


def _marked(needle: bytes) -> list[int]:
    """Live processes whose environment holds ``needle`` (a NAME=value item) exactly."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        if needle in environ.split(b"\0") and _state(int(entry.name)) not in (b"Z", None):
            found.append(int(entry.name))
    return found


def _state(pid: int) -> bytes | None:
    """The state letter of ``pid`` (b"Z" for a zombie), or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
