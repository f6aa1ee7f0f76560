"""Where an episode's events go, and when they reach the store: before its result does.

* An episode writes its own chunks (``episodes/<id>/attempt-<n>/``) once it has run for
  ``FLUSH_SECONDS``, and the rest when it ends (``Chunks``).
* A batch's episodes share chunks (``batches/<claim id>/``, events tagged with episode and
  attempt): written before any of their results leaves the worker (``Chunks`` again).
* A single episode that ends with none of its events written yet, and a log of a few small
  events (``INLINE_EVENTS``: a reset and a terminal event), keeps them in its record, however
  long it ran: its result leaves at once, and the agent commits it in the txn that claims the
  freed worker's next. (A long one's terminal event would otherwise write a two-event file,
  in two new directories, as it ends: on NFS or S3 that costs more than the record's bytes.)
* Any other that ends before its first chunk is due hands its events to the worker's
  file of short episodes (``ShortEvents``, ``shared/<name>.jsonl``), written for many at once:
  two directories and a file per short episode cost more than a short episode (70-300 us of
  kernel time here, far more on NFS). Its result waits in the worker until that file is
  written (child.py's outbox), so the agent never commits a record naming a file that is not
  there yet.

An episode whose spec keeps fewer events (``events="summary"`` or ``"none"``) has its sink
filtered (``Summary``) or replaced (``Dropped``): what it does not keep is never tagged,
encoded or written, and a record that kept none says so (``NOT_KEPT``).

Events are diagnostics: a store that refuses them fails no episode (results are in etcd), but
the agent hears of it (agent/health.py), and the attempt's record says its events were not
stored (``NOT_STORED``) rather than pointing at a file that will not come.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import StoreError
from ..specs import is_plain_json
from ..store import Store
from ..store.events import FLUSH_SECONDS, NOT_KEPT, NOT_STORED, encode_events, kept
from ..store.layout import batch_events_path, events_path, shared_events_path

log = logging.getLogger(__name__)

SHARED_EVENTS = 10_000  # events in the file of short episodes: written at once past this many
# A single episode's events ride in its record when they encode to at most this many bytes and
# none was written yet: a reset and a terminal event (~200 bytes) are most short episodes' log.
# Past it they go to a file: etcd carries every record to every watcher, several times.
INLINE_EVENTS = 1024
INLINE_COUNT = 16  # more events than this are not measured for it (encoding them costs more)

Report = Callable[[str], None]
Finished = tuple[str | None, list[dict[str, Any]] | None]  # Done.events, Done.inline_events


class Chunks:
    """Buffers events and writes them as numbered chunks: one attempt's own, or a batch's
    shared ones (its episodes' events tagged with episode and attempt)."""

    def __init__(self, store: Store | None, item: Any, report: Report | None = None) -> None:
        self.store = store
        self.item = item  # the WorkItem: an attempt's own chunks, or (item.batch) its batch's
        self.report = report  # tells the agent its store failed
        self.buffer: list[dict[str, Any]] = []
        self.chunk = 0
        self.flushed_at = time.monotonic()
        self.lost = False  # a chunk was refused: some of these events are not in the store
        # a batch's: the attempts (episode, attempt) with events in a refused chunk, for the life
        # of the batch, since a member's result may leave long after its first events were lost
        self.lost_by: set[tuple[str, int]] = set()

    def add(self, events: list[dict[str, Any]], item: Any = None) -> None:
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
        if not write_events(self.store, path, self.buffer, self.report):
            self.lost = True
            if item.batch is not None:
                self.lost_by.update((e["episode"], e["attempt"]) for e in self.buffer)
        self.buffer = []
        self.chunk += 1


class Single:
    """One single episode's sink: its own chunks, or, if it ends before the first is due, the
    worker's file of short episodes."""

    def __init__(self, store: Store | None, item: Any, short: ShortEvents | None, report: Report | None) -> None:
        self.chunks = Chunks(store, item, report)
        self.short = short

    def add(self, events: list[dict[str, Any]]) -> None:
        self.chunks.add(events)

    def finish(self, last: list[dict[str, Any]]) -> Finished:
        """The episode ended, ``last`` its final events: where its events are (``Done.events``,
        ``Done.inline_events``). None written yet and few enough to ride in its record:
        themselves. Else, if it ended before its first chunk was due, the short episodes' file
        it joined (not yet written); None for its own chunks, ``NOT_STORED`` if one was refused."""
        chunks = self.chunks
        events = chunks.buffer + last
        if chunks.chunk == 0 and events and (inline := _inline(events)) is not None:
            chunks.buffer = []
            return None, inline
        chunks.add(last)  # a chunk is written here if it ran past the first one's time
        if chunks.chunk == 0 and chunks.buffer and self.short is not None:
            name = self.short.take(chunks.item, chunks.buffer)
            chunks.buffer = []
            return name, None
        chunks.flush()
        return (NOT_STORED if chunks.lost else None), None


class Tagged:
    """One batched episode's view of its batch's shared chunks."""

    def __init__(self, shared: Chunks, item: Any) -> None:
        self.shared = shared
        self.item = item

    def add(self, events: list[dict[str, Any]]) -> None:
        self.shared.add(events, self.item)

    def finish(self, last: list[dict[str, Any]]) -> Finished:
        self.add(last)
        return None, None  # the batch's chunks: the attempt names its claim; written before results leave


class Sink(Protocol):
    """Where one episode's events go while it runs (``add``), and where they are once it ended
    (``finish``, given its last events)."""

    def add(self, events: list[dict[str, Any]]) -> None: ...

    def finish(self, last: list[dict[str, Any]]) -> Finished: ...


class Summary:
    """An episode whose spec keeps its "reset" and "terminal" events only."""

    def __init__(self, inner: Single | Tagged) -> None:
        self.inner = inner

    def add(self, events: list[dict[str, Any]]) -> None:
        events = kept(events, "summary")
        if events:
            self.inner.add(events)

    def finish(self, last: list[dict[str, Any]]) -> Finished:
        return self.inner.finish(kept(last, "summary"))


class Dropped:
    """An episode whose spec keeps no events: its record says so."""

    def add(self, events: list[dict[str, Any]]) -> None:
        pass

    def finish(self, last: list[dict[str, Any]]) -> Finished:
        return NOT_KEPT, None


DROPPED = Dropped()  # it holds nothing: one for every episode


class ShortEvents:
    """Short single episodes' events, tagged with episode and attempt, written together: one
    file per flush, named after the first episode in it."""

    def __init__(self, store: Store, report: Report | None = None) -> None:
        self.store = store
        self.report = report
        self.buffer: list[dict[str, Any]] = []
        self.name: str | None = None
        self.since = 0.0  # monotonic time its first episode joined

    def take(self, item: Any, events: list[dict[str, Any]]) -> str:
        if self.name is None:
            self.name, self.since = f"{item.episode_id}.{item.attempt}", time.monotonic()
        self.buffer.extend({**e, "episode": item.episode_id, "attempt": item.attempt} for e in events)
        return self.name

    @property
    def pending(self) -> bool:
        return self.name is not None

    @property
    def full(self) -> bool:
        return len(self.buffer) >= SHARED_EVENTS

    def flush(self) -> str | None:
        """Write the file; the name it was written as, None if the store refused it."""
        name = self.name
        if name is None:
            return None
        written = write_events(self.store, shared_events_path(name), self.buffer, self.report)
        self.buffer, self.name = [], None
        return name if written else None


def _inline(events: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """``events`` if they may ride in the record: few, small, and plain JSON data (etcd's
    records are msgpack; an event that is not plain JSON is dropped on the file's path)."""
    if len(events) > INLINE_COUNT or not is_plain_json(events):
        return None
    try:
        return events if len(encode_events(events)) <= INLINE_EVENTS else None
    except TypeError:  # plain, but not JSON's (an integer past 64 bits)
        return None


def _encoded(event: dict[str, Any]) -> bytes | None:
    try:
        return encode_events([event])
    except TypeError:
        return None


def write_events(store: Store, path: str, events: list[dict[str, Any]], report: Report | None) -> bool:
    """Whether the events reached the store. An event that is not plain JSON data is the
    episode's own (dropped alone); a store that refuses the write is the host's (reported)."""
    try:
        data = encode_events(events)
    except TypeError:  # one by one: only those that do not encode are dropped
        lines = [line for line in map(_encoded, events) if line is not None]
        log.warning("dropping %d events that are not plain JSON data", len(events) - len(lines))
        data = b"".join(lines)
    try:
        store.put_bytes(path, data, durable=False)
    except StoreError as exc:
        log.warning("dropping %d events: %s", len(events), exc)
        if report is not None:
            report(f"store refused events: {exc}")
        return False
    return True
