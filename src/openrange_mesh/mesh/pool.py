"""The agent side of its worker processes: long-lived, reused, replaced when one dies.

One supervisor thread waits on every worker's pipe and process sentinel at once, turns messages
into ``Done`` results on a queue, and replaces a dead worker. A worker that dies mid-episode fails
that episode with the reason (the signal, or why the agent killed it); the episodes of its group
that had not started come back as ``released`` so the agent can put them back in the queue.

A worker running a batch may have one more batch queued behind it (look-ahead), so it never
waits for the round trips that commit one batch and claim the next. Single episodes are never
queued behind anything: a long episode's claim should not sit on a busy host.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from .worker import Done, WorkItem, worker_main

log = logging.getLogger(__name__)

# How often results inside a batch wake the agent's loop, at most (see ``_supervise``).
RESULT_WAKE = 0.05
# After a result that woke nobody, the supervisor waits this long before reading the pipes
# again, so a batch's results are read several at a time: on a busy machine each wake-up of
# this thread costs the worker a context switch (CartPole through the mesh: ~+10% episodes/s).
COALESCE = 0.002
_QUIET, _RESULT, _URGENT = 0, 1, 2  # what a worker's messages ask of the agent's loop
STOP_GRACE = 3.0  # seconds a worker gets to stop its episode (a command runtime takes up to 2) before SIGKILL
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["openrange_mesh.mesh.worker"])


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    conn: Connection
    items: list[WorkItem] = field(default_factory=list)  # dispatched, not yet done, in order
    current: str | None = None
    groups: list[bool] = field(default_factory=list)  # per dispatched group not yet done: a batch?
    kill_reason: str | None = None

    @property
    def takes_ahead(self) -> bool:
        """Running one batch with nothing behind it: a second batch may queue."""
        return self.groups == [True]


@dataclass(frozen=True)
class Activity:
    """What a worker is doing, for timeouts and the watchdog (monotonic times)."""

    episode_id: str
    started_at: float
    progress_at: float


class WorkerPool:
    def __init__(self, size: int, store_url: str | None, on_change: Callable[[], None] = lambda: None) -> None:
        self.size = size
        self.store_url = store_url
        self.on_change = on_change
        self.results: queue.SimpleQueue[Done] = queue.SimpleQueue()
        self._workers: list[_Worker] = []
        self._activity: dict[str, Activity] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._woken_at = 0.0
        self._thread = threading.Thread(target=self._supervise, name="worker-pool", daemon=True)

    def start(self) -> None:
        with self._lock:
            self._workers = [self._spawn(i) for i in range(self.size)]
        self._thread.start()

    def idle(self) -> int:
        with self._lock:
            return sum(1 for w in self._workers if not w.groups)

    def ahead(self) -> int:
        """Workers that can take a batch queued behind the one they run."""
        with self._lock:
            return sum(1 for w in self._workers if w.takes_ahead)

    def running(self) -> dict[str, Activity]:
        with self._lock:
            return dict(self._activity)

    def dispatch(self, items: list[WorkItem]) -> None:
        """Give a group to an idle worker, or a batch to one that takes it ahead."""
        batch = len(items) > 1
        with self._lock:
            worker = next((w for w in self._workers if not w.groups), None)
            if worker is None and batch:
                worker = next((w for w in self._workers if w.takes_ahead), None)
            if worker is None:
                raise RuntimeError("no worker free for a group (claims must follow idle() and ahead())")
            worker.groups.append(batch)
            worker.items += items
            try:
                worker.conn.send(("run", items))
            except OSError:
                log.warning("worker %d is gone; its episodes come back when it is replaced", worker.index)

    def cancel(self, episode_id: str) -> bool:
        with self._lock:
            for worker in self._workers:
                if any(item.episode_id == episode_id for item in worker.items):
                    worker.conn.send(("cancel", episode_id))
                    return True
        return False

    def kill(self, episode_id: str, reason: str) -> bool:
        """Kill the worker running ``episode_id`` (a runtime stuck inside a call); the episode
        ends as failed with ``reason`` and the worker is replaced."""
        with self._lock:
            for worker in self._workers:
                if worker.current == episode_id:
                    worker.kill_reason = reason
                    worker.process.kill()
                    return True
        return False

    def reset(self) -> None:
        """Stop every worker and start fresh ones; their results are discarded (lease lost)."""
        with self._lock:
            old, self._workers = self._workers, []
            self._activity.clear()
            _stop(old)
            for worker in old:
                worker.conn.close()
            self._workers = [self._spawn(i) for i in range(self.size)]

    def abandon(self) -> None:
        """For a process about to exit at once: SIGTERM every worker and return; each stops its
        episode and exits. Takes no lock, so a signal handler may call it whatever the thread it
        interrupted holds (``close`` from there could deadlock on the lock ``reset`` holds)."""
        for worker in list(self._workers):
            worker.process.terminate()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            _stop(self._workers)
        self._thread.join(5)

    # --- supervisor thread -----------------------------------------------------------------

    def _spawn(self, index: int) -> _Worker:
        parent, child = _CONTEXT.Pipe()
        process = _CONTEXT.Process(
            target=worker_main, args=(child, self.store_url), name=f"worker-{index}", daemon=True
        )
        process.start()
        child.close()
        return _Worker(index, process, parent)

    def _supervise(self) -> None:
        while not self._closed.is_set():
            with self._lock:
                waitables = {w.conn: w for w in self._workers} | {w.process.sentinel: w for w in self._workers}
            ready = wait(list(waitables), timeout=0.2)
            wake = _QUIET
            for obj in ready:
                worker = waitables[obj]  # type: ignore[index]
                wake = max(wake, self._handle(worker, dead=not isinstance(obj, Connection)))
            now = time.monotonic()
            # A result inside a batch need not wake the agent's loop each time: the loop commits
            # a batch when it ends or its first result has lingered (agent_state.COMMIT_LINGER).
            if wake == _URGENT or (wake == _RESULT and now - self._woken_at >= RESULT_WAKE):
                self._woken_at = now
                self.on_change()
            elif wake == _RESULT:
                time.sleep(COALESCE)  # let a batch's next results gather: one wake-up for several

    def _handle(self, worker: _Worker, *, dead: bool) -> int:
        with self._lock:
            if worker not in self._workers:
                return _QUIET
            if not dead:
                try:
                    wake = _QUIET
                    while worker.conn.poll():
                        wake = max(wake, self._on_message(worker, worker.conn.recv()))
                    return wake
                except (EOFError, OSError):
                    pass  # the pipe broke: the process is dying; handle it as dead
            self._on_death(worker)
            return _URGENT

    def _on_message(self, worker: _Worker, message: tuple[object, ...]) -> int:
        """Apply a worker's message; how much the agent's loop needs to hear of it."""
        kind = message[0]
        now = time.monotonic()
        if kind == "started":
            self._started(worker, str(message[1]), now)
        elif kind == "progress":
            episode_id = str(message[1])
            if episode_id in self._activity:
                self._activity[episode_id] = Activity(episode_id, self._activity[episode_id].started_at, now)
        elif kind == "done":
            done = message[1]
            assert isinstance(done, Done)
            if worker.items and worker.items[0].episode_id == done.episode_id:
                worker.items.pop(0)  # in order, as nearly always
            else:
                worker.items = [i for i in worker.items if i.episode_id != done.episode_id]
            worker.current = None
            self._activity.pop(done.episode_id, None)
            if message[3]:  # the episode it starts next (one message, not two, per episode)
                self._started(worker, str(message[3]), now)
            self.results.put(done)
            if message[2] and worker.groups:  # its group's last result: free as the result is
                worker.groups.pop(0)  # seen, so the agent can claim in the txn that commits it
                return _URGENT
            return _RESULT
        return _QUIET

    def _started(self, worker: _Worker, episode_id: str, now: float) -> None:
        worker.current = episode_id
        self._activity[episode_id] = Activity(episode_id, now, now)

    def _on_death(self, worker: _Worker) -> None:
        worker.process.join(1)
        reason = worker.kill_reason or _death_reason(worker.process.exitcode)
        for item in worker.items:
            self._activity.pop(item.episode_id, None)
            if item.episode_id == worker.current:
                self.results.put(Done(item.episode_id, item.attempt, "failed", reason))
            else:
                self.results.put(Done(item.episode_id, item.attempt, "released", "worker died before it started"))
        worker.conn.close()
        if self._closed.is_set():
            return
        log.warning("worker %d died (%s); starting a new one", worker.index, reason)
        self._workers[self._workers.index(worker)] = self._spawn(worker.index)


def _stop(workers: list[_Worker]) -> None:
    """SIGTERM first: a worker then stops its episode's handle, so what the episode started (a
    command runtime's process group) goes too; SIGKILL would orphan it. SIGKILL after STOP_GRACE."""
    for worker in workers:
        worker.process.terminate()
    deadline = time.monotonic() + STOP_GRACE
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(5)


def _death_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"worker process killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"worker process killed by signal {-exitcode}"
    return f"worker process exited with status {exitcode}"
