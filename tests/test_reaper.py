"""No process an episode started outlives it: real workers, real command episodes whose
processes escape their process group (a setsid grandchild, one in a group of its own, a
double-forked daemon), ended every way an episode or its worker can end."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from openrange_mesh.mesh.pool import WorkerPool
from openrange_mesh.mesh.worker import Done, WorkItem
from openrange_mesh.model import EpisodeSpec

from .helpers import wait_until
from .meshkit import MARKER_ENV, marked_processes
from .test_worker import results

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reaper needs Linux")

# Starts three processes that leave the episode's process group, writes the four pids (its own
# first) to argv[1], then lives argv[2] seconds.
ESCAPE = """
import os, subprocess, sys, time
pids = [os.getpid()]
pids.append(subprocess.Popen(["setsid", "sleep", "300"]).pid)  # a session of its own
pids.append(subprocess.Popen(["sleep", "300"], process_group=0).pid)  # a group of its own
read, write = os.pipe()
if os.fork() == 0:  # a daemon: fork, setsid, fork, and the middle one exits
    os.setsid()
    if os.fork() == 0:
        os.write(write, str(os.getpid()).encode())
        time.sleep(300)
    os._exit(0)
os.wait()
pids.append(int(os.read(read, 32)))
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(" ".join(map(str, pids)))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def marker() -> Iterator[str]:
    """A marker for one test's episode processes; whatever carries it is killed at the end."""
    marker = f"reaper-{uuid.uuid4().hex}"
    yield marker
    for pid, _ in marked_processes(marker):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    pool = WorkerPool(1, None)
    pool.start()
    yield pool
    pool.close()


def escaping(pids: Path, marker: str, seconds: float, timeout: float | None = None) -> WorkItem:
    """Episode e1: runs ESCAPE, which writes its pids to ``pids``; its processes carry ``marker``."""
    script = pids.with_name("escape.py")
    script.write_text(ESCAPE)
    params = {"argv": [sys.executable, str(script), str(pids), str(seconds)], "env": {MARKER_ENV: marker}}
    return WorkItem("e1", 1, EpisodeSpec(runtime="command", params=params, timeout=timeout))


def started(pids: Path, marker: str) -> list[int]:
    """The episode's four pids, once it wrote them and all four run."""
    written = wait_until(lambda: pids.exists() and pids.read_text().split(), 20, what="the episode's pids")
    started = [int(pid) for pid in written]
    alive = {pid for pid, _ in marked_processes(marker)}
    assert len(started) == 4 and set(started) <= alive, (started, alive)
    return started


def assert_none_left(marker: str) -> None:
    try:
        wait_until(lambda: not marked_processes(marker), 5, what="the episode's processes to go")
    except AssertionError:
        raise AssertionError(f"processes outlived their episode: {marked_processes(marker)}") from None


def test_normal_exit(pool: WorkerPool, marker: str, tmp_path: Path) -> None:
    pool.dispatch([escaping(tmp_path / "pids", marker, 0)])
    (done,) = results(pool, 1)
    assert done.kind == "succeeded", done
    assert len((tmp_path / "pids").read_text().split()) == 4
    assert_none_left(marker)


def test_cancel(pool: WorkerPool, marker: str, tmp_path: Path) -> None:
    pool.dispatch([escaping(tmp_path / "pids", marker, 300)])
    started(tmp_path / "pids", marker)
    assert pool.cancel("e1")
    (done,) = results(pool, 1)
    assert done.kind == "cancelled", done
    assert_none_left(marker)


def test_timeout(pool: WorkerPool, marker: str, tmp_path: Path) -> None:
    pool.dispatch([escaping(tmp_path / "pids", marker, 300, timeout=4)])
    started(tmp_path / "pids", marker)
    (done,) = results(pool, 1)
    assert done.kind == "timeout", done
    assert_none_left(marker)


def test_worker_stopped(pool: WorkerPool, marker: str, tmp_path: Path) -> None:
    """SIGTERM (pool stop, drain, reset): the worker stops the episode and sweeps on its way out."""
    pool.dispatch([escaping(tmp_path / "pids", marker, 300)])
    started(tmp_path / "pids", marker)
    pool.close()
    assert_none_left(marker)


def test_worker_killed(pool: WorkerPool, marker: str, tmp_path: Path) -> None:
    """SIGKILL (the agent kills a stuck worker): the worker cannot sweep, the pool does."""
    pool.dispatch([escaping(tmp_path / "pids", marker, 300)])
    started(tmp_path / "pids", marker)
    wait_until(lambda: pool.running(), what="the worker's slot to say it runs e1")
    assert pool.kill("e1", "stuck")
    (done,) = results(pool, 1)
    assert done == Done("e1", 1, "failed", "stuck")
    assert_none_left(marker)


def test_a_batch_goes_on_after_a_sweep(pool: WorkerPool, marker: str, tmp_path: Path) -> None:
    """The sweep between a batch's episodes kills the last one's leftovers and nothing else:
    the next episode of the group starts its own processes and ends as it would."""
    then = EpisodeSpec(runtime="command", params={"argv": ["sh", "-c", "sleep 0.2; exit 3"]})
    pool.dispatch([escaping(tmp_path / "pids", marker, 0), WorkItem("e2", 1, then)])
    first, second = results(pool, 2)
    assert first.kind == "succeeded", first
    assert (second.kind, second.error) == ("failed", "exit status 3"), second
    assert_none_left(marker)
