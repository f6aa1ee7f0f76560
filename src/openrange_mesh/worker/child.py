"""The child side of an agent's worker process: runs groups of episodes, one at a time.

A crashing runtime (segfault, SIGKILL, OOM) takes only this process down; the agent notices the
dead process, fails the episode with the reason and starts a new worker. Runtimes are loaded by
name in the child, so nothing unpicklable crosses the pipe.

Protocol, all tuples over one ``multiprocessing`` connection:

    agent -> worker   ("run", [WorkItem, ...])     run these episodes in order
                      ("cancel", episode_id)       stop that episode (running or not yet started)
    worker -> agent   ("hello", None | why)        first: started, or why it cannot (then it exits)
                      ("fault", what failed)       its store refused events (the host's failure)
                      ("done", [(seq, Done), ...], end)
                                                   results, in order; ``seq`` numbers the items in
                                                   the order they were sent (1, 2, ...); ``end``:
                                                   the last one ends its group

What runs now is not a message: the worker writes it into a small shared-memory slot (``Slot``)
that the agent reads when it checks timeouts. A batch's results are sent together when the
group ends, or once the oldest one's episode started ``RESULT_FLUSH`` ago: one message, one
wake-up of the agent, per few dozen short episodes instead of two per episode (on two busy
cores each wake-up costs the worker a context switch).

Events: an episode writes its own chunks (``episodes/<id>/attempt-<n>/``) once it has run for
``FLUSH_SECONDS``; one that ends sooner hands them to the worker's shared buffer, written as one
file for many short episodes (``shared/<name>.jsonl``, events tagged with episode and attempt),
at most ``FLUSH_SECONDS`` after it started filling, or once the worker has waited
``SHARED_LINGER`` for more work. Two directories and a file per short episode cost more than a
short episode (70-300 us of kernel time here, far more on NFS). The result, sent at once, names
the file (``Done.events``); a worker killed before writing it loses those events (diagnostics:
the results are in etcd).
"""

from __future__ import annotations

import logging
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

from ..errors import ArtifactNotFound, MeshError, SpecError, StoreError
from ..model import EpisodeSpec
from ..runtimes import load_runtime
from ..specs import check_json, is_plain_json
from ..store import Store, open_store
from ..store.events import FLUSH_SECONDS, encode_events
from ..store.layout import batch_events_path, events_path, shared_events_path, snapshot_path
from . import reaper

log = logging.getLogger(__name__)

SLICE_SECONDS = 0.25
# A batch's results wait at most this long in the worker (the agent commits a batch's results
# when it ends or once they have waited agent_state.COMMIT_LINGER); a long episode's slices
# check it too, so the results before it do not wait for it. An episode that ran this long is
# reported at once: a worker that crashes loses at most this much finished work.
RESULT_FLUSH = 0.02
# How often a worker looks for cancels and queued batches while it runs a batch, at most: each
# look is a poll() syscall, and a batch's episodes may be shorter than a millisecond.
POLL_EVERY = 0.005
# How long a worker with short episodes' events unwritten waits for more work before writing
# them; a busy worker writes them every FLUSH_SECONDS, or SHARED_EVENTS at a time.
SHARED_LINGER = 0.05
SHARED_EVENTS = 10_000


@dataclass(frozen=True, slots=True)
class WorkItem:
    episode_id: str
    attempt: int
    spec: EpisodeSpec
    batch: str | None = None  # the claim id of a batch: its episodes share event chunks

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled per episode: a plain tuple, not dataclasses' state (which calls fields() each time)
        return WorkItem, (self.episode_id, self.attempt, self.spec, self.batch)


@dataclass(frozen=True, slots=True)
class Done:
    episode_id: str
    attempt: int
    kind: str  # "succeeded", "failed", "cancelled", "timeout"
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    events: str | None = None  # the shared events file its events went to (a short episode's)

    def __reduce__(self) -> tuple[Any, ...]:
        return Done, (self.episode_id, self.attempt, self.kind, self.error, self.result, self.events)


class _Events:
    """Buffers events and writes them to the store as numbered chunks: one attempt's own
    chunks, or a batch's shared chunks (events tagged with episode and attempt). Creating a file
    costs ~0.5 ms on a plain ext4 disk, more than a CartPole episode: short batched episodes
    must share their files."""

    def __init__(
        self,
        store: Store | None,
        item: WorkItem,
        shared: _Shared | None = None,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.item = item
        self.shared = shared  # where a short single episode's events go (None: its own chunks)
        self.report = report  # tells the agent its store failed
        self.buffer: list[dict[str, Any]] = []
        self.chunk = 0
        self.flushed_at = time.monotonic()

    def add(self, events: list[dict[str, Any]], item: WorkItem | None = None) -> None:
        if item is not None and item.batch is not None:
            events = [{**e, "episode": item.episode_id, "attempt": item.attempt} for e in events]
        self.buffer.extend(events)
        if time.monotonic() - self.flushed_at >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.flushed_at = time.monotonic()
        if self.store is None or not self.buffer:
            return
        item = self.item
        if item.batch is not None:
            path = batch_events_path(item.batch, self.chunk)
        else:
            path = events_path(item.episode_id, item.attempt, self.chunk)
        _write(self.store, path, self.buffer, self.report)
        self.buffer = []
        self.chunk += 1

    def finish(self) -> str | None:
        """The episode ended: write what is left. One that never wrote a chunk of its own
        hands its events to the shared buffer; returns the shared file's name then."""
        if self.chunk == 0 and self.shared is not None and self.buffer:
            name = self.shared.take(self.item, self.buffer)
            self.buffer = []
            return name
        self.flush()
        return None


class _Shared:
    """Short single episodes' events, tagged with episode and attempt, written together: one
    file per flush, named after the first episode in it."""

    def __init__(self, store: Store, report: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.report = report
        self.buffer: list[dict[str, Any]] = []
        self.name: str | None = None
        self.since = 0.0

    def take(self, item: WorkItem, events: list[dict[str, Any]]) -> str:
        if self.name is None:
            self.name, self.since = f"{item.episode_id}.{item.attempt}", time.monotonic()
        name = self.name
        self.buffer.extend({**e, "episode": item.episode_id, "attempt": item.attempt} for e in events)
        if len(self.buffer) >= SHARED_EVENTS:
            self.flush()
        return name

    @property
    def pending(self) -> bool:
        return self.name is not None

    def flush_if_due(self) -> None:
        if self.name is not None and time.monotonic() - self.since >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.name is None:
            return
        _write(self.store, shared_events_path(self.name), self.buffer, self.report)
        self.buffer, self.name = [], None


def _write(store: Store, path: str, events: list[dict[str, Any]], report: Callable[[str], None] | None) -> None:
    """Events are diagnostics: a store that refuses them fails no episode (results are in
    etcd), but it is the host's failure, and the agent hears of it (agent/health.py)."""
    try:
        data = encode_events(events)
    except (RecursionError, ValueError, TypeError):  # an episode's data, not the store: keep the rest
        kept = [event for event in events if is_plain_json(event)]
        log.warning("dropping %d events that are not plain JSON data", len(events) - len(kept))
        data = encode_events(kept)
    try:
        store.put_bytes(path, data, durable=False)
    except StoreError as exc:
        log.warning("dropping %d events: %s", len(events), exc)
        if report is not None:
            report(f"store refused events: {exc}")


class _Tagged:
    """One batched episode's view of the batch's shared events."""

    def __init__(self, shared: _Events, item: WorkItem) -> None:
        self.shared = shared
        self.item = item

    def add(self, events: list[dict[str, Any]]) -> None:
        self.shared.add(events, self.item)

    def flush(self) -> None:
        """The batch flushes once, when the group ends (or on its own clock)."""

    def finish(self) -> str | None:
        return None  # the batch's chunks: the attempt names its claim


def run_item(
    item: WorkItem,
    store: Store | None,
    is_cancelled: Callable[[], bool],
    on_progress: Callable[[], None],
    events: _Events | _Tagged | None = None,
) -> Done:
    """Run one episode to its end; every failure becomes a Done, never an exception."""
    spec = item.spec
    events = events if events is not None else _Events(store, item)
    started = time.monotonic()
    last_progress = started
    handle = None
    try:
        snapshot = store.get_bytes(snapshot_path(spec.snapshot)) if spec.snapshot and store else None
    except ArtifactNotFound as exc:  # the spec's fault: it names a snapshot that is not there
        return Done(item.episode_id, item.attempt, "failed", str(exc))
    except StoreError as exc:  # the host's: the episode goes back untouched (pool.py tells health)
        return Done(item.episode_id, item.attempt, "released", f"its host's store failed: {exc}")
    try:
        handle = load_runtime(spec.runtime).realize(spec.params, seed=spec.seed, snapshot=snapshot)
        handle.reset()
        while (outcome := handle.terminal()) is None:
            now = time.monotonic()
            if is_cancelled():
                return _finish(handle, events, item, "cancelled", "cancelled")
            if spec.timeout is not None and now - started > spec.timeout:
                return _finish(handle, events, item, "timeout", f"timed out after {spec.timeout:g} s")
            if spec.progress_timeout is not None and now - last_progress > spec.progress_timeout:
                return _finish(handle, events, item, "timeout", f"no progress for {spec.progress_timeout:g} s")
            handle.advance(SLICE_SECONDS)
            new = handle.poll_events()
            if new:
                events.add(new)
                on_progress()  # a store into shared memory (``Slot``): no need to throttle it
                last_progress = time.monotonic()
        kind = "succeeded" if outcome.succeeded else "failed"
        return _finish(handle, events, item, kind, outcome.error)
    except (MeshError, Exception) as exc:
        log.debug("episode %s raised", item.episode_id, exc_info=True)
        if handle is not None:
            _safe_stop(handle)
        return Done(item.episode_id, item.attempt, "failed", f"{type(exc).__name__}: {exc}")
    except BaseException:  # SystemExit from SIGTERM: the agent's pool is stopping this worker
        if handle is not None:
            _safe_stop(handle)  # what the episode started (a command's process group) goes with it
        raise


def _finish(handle: Any, events: _Events | _Tagged, item: WorkItem, kind: str, error: str | None) -> Done:
    try:
        events.add(handle.poll_events())
        result = dict(handle.collect())
    finally:
        _safe_stop(handle)
    if not is_plain_json(result):  # the episode's own fault: it must not crash this worker or the commit
        return Done(item.episode_id, item.attempt, "failed", _not_plain(result), {}, events.finish())
    return Done(item.episode_id, item.attempt, kind, error, result, events.finish())


def _not_plain(result: dict[str, Any]) -> str:
    try:
        check_json("result", result)
    except SpecError as exc:
        return f"its result is not plain JSON data: {exc}"
    return "its result is not plain JSON data"


def _safe_stop(handle: Any) -> None:
    try:
        handle.stop()
    except Exception:
        log.warning("stopping a handle failed", exc_info=True)


class Slot:
    """What a worker runs, in shared memory: the seq of the item it started last, when that
    started and last made progress (``time.monotonic()``: one clock for every process of a
    Linux machine), and whether it still runs. The worker writes, the agent reads, without a
    lock: a reader takes the seq before and after the times, and the worker writes the times
    before the seq, so an item is never paired with times older than its start."""

    def __init__(self, cells: Any) -> None:
        self.cells = cells  # a multiprocessing RawArray("d", 4): seq, started, progress, running

    def start(self, seq: int, now: float) -> None:
        self.cells[1] = self.cells[2] = now
        self.cells[0] = seq
        self.cells[3] = 1.0

    def progress(self) -> None:
        self.cells[2] = time.monotonic()

    def clear(self) -> None:
        self.cells[3] = 0.0

    def last_started(self) -> int:
        return int(self.cells[0])

    def read(self) -> tuple[int, float, float] | None:
        """(seq, started, progress) of the item running now, or None."""
        seq = int(self.cells[0])
        started, progress = self.cells[1], self.cells[2]
        running = self.cells[3] == 1.0 and int(self.cells[0]) == seq
        return (seq, started, progress) if running else None


def worker_main(conn: Connection, store_url: str | None, cells: Any, marker: str = "") -> None:
    """Entry point of a worker process. SIGTERM (the pool stopping it) stops the running episode
    and exits. SIGINT is the agent's business: Ctrl-C in a terminal reaches the whole process
    group, and the agent drains, letting running episodes finish. ``marker`` tags what its
    episodes exec, so the pool finds their leftovers should this process be SIGKILLed (reaper.py)."""
    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _ignore)  # a handler, not SIG_IGN, which an episode's exec would inherit
    reaper.become_subreaper(marker)
    reaper.stop_with_agent()
    try:
        try:
            store = open_store(store_url) if store_url else None
        except Exception as exc:  # any reason at all: one line to the agent, not a traceback per restart
            conn.send(("hello", f"cannot open store {store_url}: {exc}"))
            return
        conn.send(("hello", None))
        _serve(conn, store, Slot(cells))
    except (EOFError, OSError):
        return  # the agent is gone (its end of the pipe closed)
    finally:  # stopped mid-episode: the handle is stopped; what escaped its stop() goes now
        reaper.kill_leftovers()


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _ignore(signum: int, frame: FrameType | None) -> None:
    pass


class _Inbox:
    """What the agent sent: groups to run in order (each item with its seq), and cancels. Read
    between episodes and while one runs, at most every ``POLL_EVERY``, so a cancel or a batch
    queued ahead arrives promptly."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.groups: deque[list[tuple[int, WorkItem]]] = deque()
        self.cancelled: set[str] = set()
        self.received = 0  # items received so far: the seq of the last one
        self.polled_at = 0.0

    def poll(self) -> None:
        now = time.monotonic()
        if now - self.polled_at < POLL_EVERY:
            return
        self.polled_at = now
        while self.conn.poll():
            self._take(self.conn.recv())

    def wait(self) -> None:
        self._take(self.conn.recv())

    def ready(self, timeout: float) -> bool:
        """Whether a message arrives within ``timeout`` seconds (it is read by ``wait``)."""
        return self.conn.poll(timeout)

    def _take(self, message: tuple[Any, ...]) -> None:
        if message[0] == "cancel":
            self.cancelled.add(message[1])
            return
        group = []
        for item in message[1]:
            self.received += 1
            group.append((self.received, item))
        self.groups.append(group)

    def is_cancelled(self, episode_id: str) -> bool:
        self.poll()
        return episode_id in self.cancelled


class _Outbox:
    """Results not yet sent: sent when their group ends, or once the episode of the oldest
    started ``RESULT_FLUSH`` ago (checked between episodes and between a long episode's slices)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.results: list[tuple[int, Done]] = []
        self.oldest = 0.0

    def add(self, seq: int, done: Done, started: float) -> None:
        if not self.results:
            self.oldest = started  # so a long episode's result is due at once
        self.results.append((seq, done))

    def send(self, end: bool) -> None:
        self.conn.send(("done", self.results, end))
        self.results = []

    def fault(self, what: str) -> None:
        self.conn.send(("fault", what))

    def send_if_stale(self) -> None:
        if self.results and time.monotonic() - self.oldest >= RESULT_FLUSH:
            self.send(False)


def _serve(conn: Connection, store: Store | None, slot: Slot) -> None:
    inbox, outbox = _Inbox(conn), _Outbox(conn)
    short = _Shared(store, outbox.fault) if store is not None else None  # short single episodes' events
    try:
        while True:  # until the pipe breaks (the agent is gone): worker_main returns then
            if not inbox.groups:
                if short is not None and short.pending and not inbox.ready(SHARED_LINGER):
                    short.flush()  # idle: write them now rather than when work comes
                inbox.wait()
                continue
            _run_group(inbox.groups.popleft(), inbox, outbox, store, slot, short)
    finally:  # stopped (SIGTERM) or orphaned: what short episodes left is written still
        if short is not None:
            short.flush()


def _run_group(
    group: list[tuple[int, WorkItem]],
    inbox: _Inbox,
    outbox: _Outbox,
    store: Store | None,
    slot: Slot,
    short: _Shared | None,
) -> None:
    def check(episode_id: str) -> bool:  # between a running episode's slices
        outbox.send_if_stale()
        return inbox.is_cancelled(episode_id)

    shared = _Events(store, group[0][1], report=outbox.fault) if group[0][1].batch is not None else None
    for index, (seq, item) in enumerate(group):
        inbox.poll()
        if short is not None:
            short.flush_if_due()
        started = time.monotonic()
        if item.episode_id in inbox.cancelled:
            done = Done(item.episode_id, item.attempt, "cancelled", "cancelled before it started")
        else:
            slot.start(seq, started)
            sink = _sink(store, item, shared, short, outbox.fault)
            done = run_item(item, store, partial(check, item.episode_id), slot.progress, sink)
            reaper.kill_leftovers()  # before its result: no process of an ended episode lives on
            slot.clear()
        inbox.cancelled.discard(item.episode_id)
        outbox.add(seq, done, started)
        if index < len(group) - 1:
            outbox.send_if_stale()
            continue
        if shared is not None:
            shared.flush()  # before the group's last results: the agent may dispatch to us then
        outbox.send(end=True)


def _sink(
    store: Store | None,
    item: WorkItem,
    batch: _Events | None,
    short: _Shared | None,
    report: Callable[[str], None],
) -> _Events | _Tagged:
    """Where an episode's events go: its batch's shared chunks, or its own chunks unless it
    ends before the first is due (then the worker's shared file of short episodes)."""
    if batch is not None and item.batch is not None:
        return _Tagged(batch, item)
    return _Events(store, item, short, report)
