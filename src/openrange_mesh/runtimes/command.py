"""The ``command`` runtime: an episode is a subprocess.

Params: exactly one of ``argv`` (a list of strings) or ``cmd`` (a string, split with ``shlex``; no
shell is involved unless you run one); ``env`` (strings added to the agent's environment); ``cwd``.

``reset()`` starts the process in a new session (so its own process group), stdin from /dev/null,
with ``OPENRANGE_SEED`` set when the episode has a seed. Each stdout line that is a JSON object
becomes an event (``"type"`` defaults to ``"output"``; ``"t"`` is always the time we read it); other
lines, and objects nested more than ``MAX_EVENT_DEPTH`` deep, become ``{"type": "log", "line": ...}``.
The last stderr lines are kept for the error message. Exit status 0 succeeds. ``stop()`` sends
SIGTERM to the group, then SIGKILL after ``STOP_GRACE``. No checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shlex
import signal
import subprocess
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

from ..errors import RuntimeFailure, SpecError
from . import _params
from .base import Outcome, new_event

SEED_ENV = "OPENRANGE_SEED"
STOP_GRACE = 2.0  # seconds between SIGTERM and SIGKILL
STDERR_LINES = 20  # kept for collect() and the error message
_MAX_LINE = 64 * 1024  # a longer stdout line is cut into pieces
MAX_EVENT_DEPTH = 64  # a stdout JSON object nested deeper stays a "log" line
_MAX_STDERR_LINE = 500
_EXIT_POLL = 0.05  # how often to look for the exit where pidfd_open is missing
_PARAMS = ("argv", "cmd", "env", "cwd")


@dataclass(frozen=True)
class CommandParams:
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str | None


def parse_params(params: Mapping[str, Any]) -> CommandParams:
    _params.check_keys(params, allowed=_PARAMS)
    if ("argv" in params) == ("cmd" in params):
        raise SpecError(_params.field("argv"), "give exactly one of argv (a list of strings) or cmd (a string)")
    if "cmd" in params:
        cmd = _params.get_str(params, "cmd") or ""
        try:
            argv = shlex.split(cmd)
        except ValueError as exc:
            raise SpecError(_params.field("cmd"), f"cannot split {cmd!r}: {exc}") from exc
        if not argv:
            raise SpecError(_params.field("cmd"), "is blank")
    else:
        argv = params["argv"]
        if not isinstance(argv, list | tuple) or not argv or not all(isinstance(a, str) for a in argv):
            raise SpecError(_params.field("argv"), f"must be a non-empty list of strings, not {argv!r}")
    return CommandParams(tuple(argv), _params.get_dict(params, "env", str_values=True), _params.get_str(params, "cwd"))


class CommandRuntime:
    name = "command"

    def validate(self, params: Mapping[str, Any]) -> None:
        parse_params(params)

    def realize(
        self, params: Mapping[str, Any], *, seed: int | None, snapshot: bytes | None = None, snapshot_path: Any = None
    ) -> CommandHandle:
        """A snapshot reaches the command as a path, in ``$OPENRANGE_SNAPSHOT`` (worker/files.py
        sets it for the episode); a checkpoint's bytes it cannot resume from."""
        p = parse_params(params)
        if snapshot is not None:
            raise RuntimeFailure("the command runtime cannot resume from a checkpoint's bytes: name a snapshot")
        return CommandHandle(p, seed)


class CommandHandle:
    supports_checkpoint = False

    def __init__(self, p: CommandParams, seed: int | None) -> None:
        self._p = p
        self._seed = seed
        self._proc: subprocess.Popen[bytes] | None = None
        self._selector: selectors.BaseSelector | None = None
        self._pidfd: int | None = None
        self._streams: dict[int, tuple[str, IO[bytes], bytearray]] = {}  # fd -> (name, pipe, partial line)
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_LINES)
        self._events: list[dict[str, Any]] = []
        self._status: int | None = None  # as Popen.returncode: -N for signal N
        self._outcome: Outcome | None = None
        self._stopped = False

    def reset(self) -> None:
        if self._stopped:
            raise RuntimeFailure("command: handle is stopped")
        self._kill()
        self._stderr_tail.clear()
        self._status = self._outcome = None
        self._start()
        assert self._proc is not None
        self._events.append(new_event("reset", pid=self._proc.pid))

    def surface(self) -> dict[str, Any]:
        pid = self._proc.pid if self._proc is not None else None
        return {"pid": pid, "argv": list(self._p.argv), "cwd": self._p.cwd}

    def advance(self, max_seconds: float) -> None:
        if self._stopped or self._proc is None:
            raise RuntimeFailure("command: advance() before reset() or after stop()")
        if self._outcome is not None:
            return
        assert self._selector is not None
        deadline = time.monotonic() + max_seconds
        while True:
            status = self._exit_status()
            if status is not None:
                self._finish(status)
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            timeout = remaining if self._pidfd is not None else min(remaining, _EXIT_POLL)
            for key, _ in self._selector.select(timeout):
                if key.fd in self._streams:
                    self._read(key.fd)

    def poll_events(self) -> list[dict[str, Any]]:
        events, self._events = self._events, []
        return events

    def terminal(self) -> Outcome | None:
        return self._outcome

    def checkpoint(self) -> bytes:
        raise RuntimeFailure("the command runtime does not support checkpoints")

    def restore(self, data: bytes) -> None:
        raise RuntimeFailure("the command runtime does not support checkpoints")

    def collect(self) -> dict[str, Any]:
        status = self._status
        return {
            "exit_status": status if status is None or status >= 0 else None,
            "signal": _signal_name(-status) if status is not None and status < 0 else None,
            "stderr_tail": list(self._stderr_tail),
        }

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._kill()

    def _start(self) -> None:
        env = {**os.environ, **self._p.env}
        if self._seed is not None:
            env[SEED_ENV] = str(self._seed)
        try:
            proc = subprocess.Popen(
                self._p.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=self._p.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise RuntimeFailure(f"cannot start {self._p.argv[0]!r}: {exc}") from exc
        self._proc, self._selector = proc, selectors.DefaultSelector()
        for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            assert pipe is not None
            os.set_blocking(pipe.fileno(), False)
            self._streams[pipe.fileno()] = (name, pipe, bytearray())
            self._selector.register(pipe.fileno(), selectors.EVENT_READ)
        try:  # Linux >= 5.3: the exit wakes select(); elsewhere advance() polls for it
            self._pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            self._pidfd = None
        else:
            self._selector.register(self._pidfd, selectors.EVENT_READ)

    def _exit_status(self) -> int | None:
        """The leader's exit status without reaping it: a zombie keeps the group id reserved,
        so ``stop()`` can signal the group without hitting an unrelated, newer one."""
        assert self._proc is not None
        try:
            info = os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped already (by stop() or a stray wait())
            return self._proc.poll()
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def _read(self, fd: int) -> bool:
        """Read one chunk from ``fd``; False when nothing more is there for now."""
        name, pipe, partial = self._streams[fd]
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return False
        if not chunk:
            self._close_stream(fd)
            return False
        partial += chunk
        *lines, rest = partial.split(b"\n")
        if len(rest) > _MAX_LINE:
            lines.append(rest)
            rest = bytearray()
        self._streams[fd] = (name, pipe, rest)
        for line in lines:
            self._line(name, line)
        return True

    def _line(self, stream: str, raw: bytes | bytearray) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        if stream == "stderr":
            if text.strip():
                self._stderr_tail.append(text[:_MAX_STDERR_LINE])
        else:
            self._events.append(_stdout_event(text))

    def _close_stream(self, fd: int) -> None:
        name, pipe, partial = self._streams.pop(fd)
        if partial:
            self._line(name, bytes(partial))
        if self._selector is not None:
            self._selector.unregister(fd)
        pipe.close()

    def _finish(self, status: int) -> None:
        for fd in list(self._streams):
            for _ in range(16):  # what the process wrote before it exited; a grandchild may write on
                if not self._read(fd):
                    break
        self._close_pipes()
        self._status = status
        if status == 0:
            self._outcome = Outcome(True)
        elif status > 0:
            last = self._stderr_tail[-1] if self._stderr_tail else ""
            self._outcome = Outcome(False, f"exit status {status}: {last}" if last else f"exit status {status}")
        else:
            self._outcome = Outcome(False, f"killed by signal {_signal_name(-status)}")
        summary = self.collect()
        self._events.append(
            new_event(
                "terminal",
                succeeded=self._outcome.succeeded,
                error=self._outcome.error,
                exit_status=summary["exit_status"],
                signal=summary["signal"],
            )
        )

    def _close_pipes(self) -> None:
        for fd in list(self._streams):
            self._close_stream(fd)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self._selector is not None:
            self._selector.close()
            self._selector = None

    def _kill(self) -> None:
        """Terminate the whole group, then reap the leader: no process outlives the handle."""
        proc = self._proc
        if proc is None:
            return
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while self._exit_status() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        # SIGKILL for a leader that ignored SIGTERM and for children that outlived it (when the leader
        # had exited before stop(), its leftovers get no grace: the episode is over).
        self._signal_group(signal.SIGKILL)
        proc.wait()
        self._close_pipes()
        self._proc = None

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)


def _stdout_event(text: str) -> dict[str, Any]:
    obj = _json_object(text) if text.startswith("{") else None
    if obj is not None:
        kind = obj.get("type")
        return {**obj, "type": kind if isinstance(kind, str) and kind else "output", "t": time.time()}
    return new_event("log", line=text)


def _json_object(text: str) -> dict[str, Any] | None:
    """The JSON object a stdout line holds, or None: not JSON, not an object, or nested deeper
    than ``MAX_EVENT_DEPTH``. Such a line stays text (a "log" event) and the episode goes on:
    json recurses once per level, so ~1000 levels raise RecursionError here, and an event
    nearly that deep would raise again wherever it is encoded (the store's JSON lines, and
    msgpack's nesting limit). What a line costs is bounded by its length (``_MAX_LINE``)."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) and _depth_at_most(obj, MAX_EVENT_DEPTH) else None


def _depth_at_most(value: object, limit: int) -> bool:
    """Whether ``value``'s containers nest at most ``limit`` deep (iterative: a deep value
    must not exhaust the stack that measures it)."""
    todo = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return False
            todo += ((inner, depth + 1) for inner in (item.values() if isinstance(item, dict) else item))
    return True


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
