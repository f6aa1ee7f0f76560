"""The agent side of its worker processes: long-lived, reused, replaced when one dies.

The agent's loop waits on every worker's pipe and process sentinel at once, with its own waker
(``wait``): messages become ``Done`` results on a queue and a dead worker is replaced in the
thread that reads the results, not in a supervisor thread of its own (handing each result over
from one thread to another cost ~90 us of CPU per short episode here, the thread's wake-up
mostly). One thread uses a pool, so it takes no lock. A worker that dies mid-episode fails
that episode with the reason (the signal, or why the agent killed it); the episodes of its group
that had not started, and those whose results it had not sent yet, come back as ``released``
so the agent can put them back in the queue. Which episode a worker runs is read from its
shared-memory ``Slot``, not from messages (slot.py).

A worker first says whether it could start (open its store). One that could not, or that died
before saying so, hands back everything it was given as ``released`` (the host's failure: no
attempt is spent) and is started again after a backoff (``START_BACKOFF``, doubling up to
``START_BACKOFF_MAX``) instead of at once, forever (issue 11: a worker that could not open its
store died at start, was restarted in a loop, and every episode it was given was lost). These
failures, and a worker's store faults and released results, go to ``on_fault`` (agent/health.py).

A worker running a batch may have one more batch queued behind it (look-ahead), so it never
waits for the round trips that commit one batch and claim the next. Single episodes are never
queued behind anything: a long episode's claim should not sit on a busy host.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import selectors
import signal
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from . import files, reaper
from .child import Done, WorkItem, worker_main
from .slot import Slot

log = logging.getLogger(__name__)

# How often results inside a batch wake the agent's loop, at most (see ``wait``).
RESULT_WAKE = 0.05
_QUIET, _RESULT, _URGENT = 0, 1, 2  # what a worker's messages ask of the agent's loop
STOP_GRACE = 3.0  # seconds a worker gets to stop its episode (a command runtime takes up to 2) before SIGKILL
START_BACKOFF = 0.5  # seconds before a worker that could not start is started again; doubles
START_BACKOFF_MAX = 30.0
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["openrange_mesh.worker.child"])


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    conn: Connection
    slot: Slot
    items: dict[int, WorkItem] = field(default_factory=dict)  # dispatched, not yet done, by seq
    sent: int = 0  # items dispatched so far: the seq of the last one (worker.py numbers them alike)
    groups: list[bool] = field(default_factory=list)  # per dispatched group not yet done: a batch?
    kill_reason: str | None = None
    ready: bool = False  # it said it started (its store opened)
    start_error: str | None = None  # why it could not start, as it said
    marker: str = ""  # tags what its episodes exec (reaper.py): unique to the process

    def current(self) -> Activity | None:
        """The episode this worker runs now, from its slot."""
        seen = self.slot.read()
        item = self.items.get(seen[0]) if seen else None
        return Activity(item.episode_id, seen[1], seen[2]) if item and seen else None

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


class Pool(Protocol):
    """What the agent's parts use of its workers. ``WorkerPool`` is the agent's; whoever builds
    an ``Agent`` may hand it another (``make_pool``): scripts/scalesim.py completes episodes in
    the agent's own process, to run hundreds of agents' registry traffic on one machine. One
    thread (the agent's loop) calls it. ``results`` holds what finished, for the loop to take."""

    size: int
    results: queue.SimpleQueue[Done]

    def start(self) -> None: ...

    def wait(self, timeout: float) -> bool:
        """Up to ``timeout`` for news; True: the loop should run now (see ``WorkerPool.wait``)."""
        ...

    def idle(self) -> int: ...

    def started(self) -> int: ...

    def ahead(self) -> int: ...

    def running(self) -> dict[str, Activity]: ...

    def dispatch(self, items: list[WorkItem]) -> None: ...

    def cancel(self, episode_id: str) -> bool: ...

    def kill(self, episode_id: str, reason: str) -> bool: ...

    def reset(self) -> None: ...

    def abandon(self) -> None: ...

    def close(self) -> None: ...


class WorkerPool:
    def __init__(
        self,
        size: int,
        store_url: str | None,
        waker: Any = None,
        on_fault: Callable[[str], None] | None = None,
        cache: tuple[str, int] | None = None,
    ) -> None:
        self.size = size
        self.store_url = store_url
        self.cache = cache  # (directory, bytes) of the host's snapshot cache; None: the defaults
        self.results: queue.SimpleQueue[Done] = queue.SimpleQueue()
        self.on_fault = on_fault or (lambda reason: None)
        self._workers: list[_Worker] = []  # live ones; a slot waiting out its backoff has none
        self._restarts: dict[int, float] = {}  # slot index -> monotonic time to start it again
        self._backoff: dict[int, float] = {}  # slot index -> its next backoff
        self._closed = False
        self._woken_at = 0.0
        # Workers' pipes and sentinels, and the owner's ``waker`` (anything with a fileno), kept
        # registered: building a poll set per wait cost ~60 us a call.
        self._selector = selectors.DefaultSelector()
        if waker is not None:
            self._selector.register(waker, selectors.EVENT_READ, None)

    def start(self) -> None:
        self._workers = [self._spawn(i) for i in range(self.size)]

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for a worker's message or death, or for the waker to be
        ready, and handle what the workers said. True: the owner's loop should run now (the
        waker is ready, a group ended, a worker died, or results inside a batch have waited
        ``RESULT_WAKE``: a batch is committed when it ends or its first result has lingered,
        agent/holdings.py COMMIT_LINGER, so the loop need not run for each result)."""
        wake = self._restart_due() if self._restarts else _QUIET
        if self._restarts:  # wake up to start the next one
            timeout = min(timeout, min(self._restarts.values()) - time.monotonic())
        for key, _ in self._selector.select(0.0 if wake else max(timeout, 0.0)):
            if key.data is None:  # the waker
                wake = _URGENT
                continue
            worker, dead = key.data
            wake = max(wake, self._handle(worker, dead=dead))
        now = time.monotonic()
        if wake == _URGENT or (wake == _RESULT and now - self._woken_at >= RESULT_WAKE):
            self._woken_at = now
            return True
        return False

    def idle(self) -> int:
        return sum(1 for w in self._workers if not w.groups)

    def started(self) -> int:
        """Workers that said they started."""
        return sum(1 for w in self._workers if w.ready)

    def ahead(self) -> int:
        """Workers that can take a batch queued behind the one they run."""
        return sum(1 for w in self._workers if w.takes_ahead)

    def running(self) -> dict[str, Activity]:
        return {a.episode_id: a for a in map(_Worker.current, self._workers) if a is not None}

    def dispatch(self, items: list[WorkItem]) -> None:
        """Give a group to an idle worker, or a batch to one that takes it ahead."""
        batch = len(items) > 1
        worker = next((w for w in self._workers if not w.groups), None)
        if worker is None and batch:
            worker = next((w for w in self._workers if w.takes_ahead), None)
        if worker is None:
            raise RuntimeError("no worker free for a group (claims must follow idle() and ahead())")
        worker.groups.append(batch)
        for item in items:
            worker.sent += 1
            worker.items[worker.sent] = item
        try:
            worker.conn.send(("run", items))
        except OSError:
            log.warning("worker %d is gone; its episodes come back when it is replaced", worker.index)

    def cancel(self, episode_id: str) -> bool:
        for worker in self._workers:
            if any(item.episode_id == episode_id for item in worker.items.values()):
                worker.conn.send(("cancel", episode_id))
                return True
        return False

    def kill(self, episode_id: str, reason: str) -> bool:
        """Kill the worker running ``episode_id`` (a runtime stuck inside a call); the episode
        ends as failed with ``reason`` and the worker is replaced."""
        for worker in self._workers:
            if (activity := worker.current()) is not None and activity.episode_id == episode_id:
                worker.kill_reason = reason
                _kill(worker)
                return True
        return False

    def reset(self) -> None:
        """Stop every worker and start fresh ones; their results are discarded (lease lost)."""
        old, self._workers = self._workers, []
        self._restarts.clear()
        _stop(old)
        for worker in old:
            self._unwatch(worker)
            worker.conn.close()
        self._workers = [self._spawn(i) for i in range(self.size)]

    def abandon(self) -> None:
        """For a process about to exit at once: SIGTERM every worker and return; each stops its
        episode and exits. Waits for nothing and changes no state, so a signal handler may call
        it whatever the loop it interrupted was doing (``close`` waits up to ``STOP_GRACE``)."""
        for worker in list(self._workers):
            worker.process.terminate()

    def close(self) -> None:
        self._closed = True
        _stop(self._workers)
        self._selector.close()

    # --- workers ---------------------------------------------------------------------------

    def _spawn(self, index: int) -> _Worker:
        parent, child = _CONTEXT.Pipe()
        cells = _CONTEXT.RawArray("d", 4)
        marker = uuid.uuid4().hex
        process = _CONTEXT.Process(
            target=worker_main,
            args=(child, self.store_url, cells, marker, self.cache),
            name=f"worker-{index}",
            daemon=True,
        )
        process.start()
        child.close()
        worker = _Worker(index, process, parent, Slot(cells), marker=marker)
        self._selector.register(worker.conn, selectors.EVENT_READ, (worker, False))
        self._selector.register(worker.process.sentinel, selectors.EVENT_READ, (worker, True))
        return worker

    def _unwatch(self, worker: _Worker) -> None:
        for obj in (worker.conn, worker.process.sentinel):
            with suppress(KeyError, ValueError, OSError):  # not registered, or already closed
                self._selector.unregister(obj)

    def _handle(self, worker: _Worker, *, dead: bool) -> int:
        if worker not in self._workers:
            return _QUIET
        if not dead:
            try:  # one message per readiness: the selector reports the pipe again if more wait
                # (Connection.poll builds a poll set per call, ~25 us: twice per message)
                return self._on_message(worker, worker.conn.recv())
            except (EOFError, OSError):
                pass  # the pipe broke: the process is dying; handle it as dead
        self._on_death(worker)
        return _URGENT

    def _on_message(self, worker: _Worker, message: tuple[object, ...]) -> int:
        """Apply a worker's results; how much the agent's loop needs to hear of them."""
        if message[0] != "done":
            return self._on_news(worker, message)
        results = message[1]
        assert isinstance(results, list)
        for seq, done in results:
            worker.items.pop(seq, None)
            self.results.put(done)
            if done.kind == "released":  # the worker's store failed it (worker.run_item)
                self.on_fault(done.error or "released by its worker")
        if message[2] and worker.groups:  # its group's last result: free as the result is
            worker.groups.pop(0)  # seen, so the agent can claim in the txn that commits it
            return _URGENT
        return _RESULT

    def _on_news(self, worker: _Worker, message: tuple[object, ...]) -> int:
        """("hello", None | why it cannot start) once; ("fault", what failed) on a store fault."""
        reason = message[1] if isinstance(message[1], str) else None
        if message[0] == "hello" and reason is None:
            worker.ready = True
            self._backoff.pop(worker.index, None)
        elif message[0] == "hello":
            worker.start_error = reason
        elif message[0] == "fault" and reason:
            self.on_fault(reason)
        return _QUIET

    def _on_death(self, worker: _Worker) -> None:
        with suppress(EOFError, OSError):  # results it sent before dying count
            while worker.conn.poll():
                self._on_message(worker, worker.conn.recv())
        running = worker.current()  # the slot outlives the process
        started = worker.slot.last_started()
        worker.process.join(1)
        reaper.kill_marked(worker.marker)  # killed, it could not kill what its episode left
        if worker.process.pid is not None:
            files.remove_leftovers(worker.process.pid)  # nor remove its artifacts directory
        reason = worker.kill_reason or _death_reason(worker.process.exitcode)
        if not worker.ready:
            self._could_not_start(worker, worker.start_error or reason)
            return
        for seq, item in worker.items.items():
            if running is not None and item.episode_id == running.episode_id:
                self.results.put(Done(item.episode_id, item.attempt, "failed", reason))
            else:
                why = _UNREPORTED if seq <= started else _NOT_STARTED
                self.results.put(Done(item.episode_id, item.attempt, "released", why))
        self._unwatch(worker)
        worker.conn.close()
        if self._closed:
            return
        log.warning("worker %d died (%s); starting a new one", worker.index, reason)
        self._workers[self._workers.index(worker)] = self._spawn(worker.index)

    def _could_not_start(self, worker: _Worker, reason: str) -> None:
        """Everything it was given goes back untouched; its slot is started again after a
        backoff. The fault is the host's (agent/health.py)."""
        why = f"its worker could not start ({reason})"
        for item in worker.items.values():
            self.results.put(Done(item.episode_id, item.attempt, "released", why))
        self._unwatch(worker)
        worker.conn.close()
        self._workers.remove(worker)
        self.on_fault(f"worker could not start: {reason}")
        if self._closed:
            return
        delay = self._backoff.get(worker.index, START_BACKOFF)
        self._backoff[worker.index] = min(delay * 2, START_BACKOFF_MAX)
        self._restarts[worker.index] = time.monotonic() + delay
        log.warning("worker %d could not start (%s); trying again in %.1f s", worker.index, reason, delay)

    def _restart_due(self) -> int:
        """Start the slots whose backoff ended; _URGENT if any did (the loop may claim for them)."""
        now = time.monotonic()
        due = [index for index, at in self._restarts.items() if at <= now]
        for index in due:
            del self._restarts[index]
            self._workers.append(self._spawn(index))
        return _URGENT if due else _QUIET


def _stop(workers: list[_Worker]) -> None:
    """SIGTERM first: a worker then stops its episode's handle and kills what the episode started
    (reaper.py). SIGKILL after STOP_GRACE; what that orphans is found by the worker's marker."""
    for worker in workers:
        worker.process.terminate()
    deadline = time.monotonic() + STOP_GRACE
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            _kill(worker)
            worker.process.join(5)
            reaper.kill_marked(worker.marker)


def _kill(worker: _Worker) -> None:
    """SIGKILL a worker and, first, what its episode started: it cannot sweep once killed."""
    try:
        if worker.process.pid is not None and worker.process.is_alive():  # its pid is not another's yet
            reaper.kill_tree(worker.process.pid)
    finally:  # kill_tree stopped it (SIGSTOP): it must not stay so
        worker.process.kill()


_NOT_STARTED = "its worker died before it started"  # both released: not counted (ledger.release)
_UNREPORTED = "its worker died before reporting its result"


def _death_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"worker process killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"worker process killed by signal {-exitcode}"
    return f"worker process exited with status {exitcode}"
