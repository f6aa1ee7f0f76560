"""The leader's index of every episode, for paging, filters and the live stream (design/dashboard.md).

Built by one paged read at a revision, kept current by a watch of ``episodes/`` from there
(group records expand to their members). Each episode is a small ``Summary`` (~300 bytes), so
100k episodes cost tens of MB, not the records' full size. Episodes are kept in id order (ids
sort by creation), newest first when paged. A page is read at a cursor's revision: episodes
created after it are left out, so pages stay stable while new episodes arrive.

Changes are also appended to a bounded log, ``(revision, summary)``, which the live stream
reads from a client's last revision; a client further behind than the log gets a reset. And
they feed a ``Tally`` (``/api/summary``), which takes back what a changed episode was before:
the index keeps each key's last value as etcd sent it (msgpack, a group record compressed:
~30 MB at 100k episodes) and decodes it when the key changes, unless it still holds that value
decoded: ``Recent`` keeps the records of values with a running episode (what a commit rewrites
next), up to ``RECENT_RECORDS``, so a commit decodes its group once, not twice. Pending values
are not kept (a deep queue would push out what is running), nor finished ones (rarely written
again). Asking etcd for previous values
instead (``prev_kv``) doubled what etcd encodes and sends this watcher per write, and etcd's
CPU is what bounds the mesh (performance.md): the no-op mesh ran ~10% slower with it.

Threads: the follow thread writes; request handlers read. ``_lock`` guards every field but
``_values`` and ``_recent``, which only the follow thread touches.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..keys import Keys
from ..ledger.catalog import Catalog
from ..model import EpisodeRecord, State, decode_or_none, decode_records
from ..registry import Event, KeyValue, Registry
from ..registry.follow import Follower
from .tally import Tally

log = logging.getLogger(__name__)

CHANGES_KEPT = 20_000  # changes the live stream can resume from
COALESCE = 0.5  # seconds of watch events applied together, each key's last only (``_coalesced``)
# Records kept decoded for values with a running episode (``Recent``): ~1.5 KB each, so ~15 MB
# at most; enough for every batch in flight on a few dozen hosts, which commits rewrite next.
RECENT_RECORDS = 10_000


@dataclass(frozen=True, slots=True)
class Summary:
    id: str
    state: str
    host: str | None
    runtime: str
    labels: tuple[tuple[str, str], ...]
    submitter: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempt: int
    error: str | None  # its first line, at most 300 characters
    created_revision: int

    @classmethod
    def of(cls, record: EpisodeRecord, created_revision: int) -> Summary:
        host = record.owner or (record.history[-1].host if record.history else None)
        error = record.error.splitlines()[0][:300] if record.error else None
        labels = tuple(sorted(record.spec.labels.items()))
        return cls(
            record.id,
            record.state.value,
            host,
            record.spec.runtime,
            labels,
            record.submitter,
            record.created_at,
            record.started_at,
            record.finished_at,
            record.attempt,
            error,
            created_revision,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "host": self.host,
            "runtime": self.runtime,
            "labels": dict(self.labels),
            "submitter": self.submitter,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "attempt": self.attempt,
            "error": self.error,
        }


class EpisodeIndex:
    def __init__(
        self, registry: Registry, keys: Keys, *, recent_records: int = RECENT_RECORDS, coalesce: float = COALESCE
    ) -> None:
        self.registry = registry
        self.keys = keys
        self.revision = 0
        self.ready = threading.Event()
        self._by_id: dict[str, Summary] = {}
        self._tally = Tally()
        self._ids: list[str] = []  # sorted
        self._members: dict[bytes, tuple[str, ...]] = {}  # key -> the episodes it holds
        self._home: dict[str, bytes] = {}  # episode -> the key that holds it now
        self._values: dict[bytes, bytes] = {}  # key -> its value as last seen (follow thread only)
        self._recent = Recent(recent_records)  # some of those values decoded (follow thread only)
        self._coalesce = coalesce
        self._changes: list[tuple[int, Summary | str]] = []  # in revision order; str: a deleted id
        self._forgotten = 0  # changes up to this revision are no longer kept
        self._lock = threading.Lock()
        self._follower = Follower(registry, keys.episodes(), on_relist=self._load)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="episode-index", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._follower.close()

    # --- reading ---------------------------------------------------------------------------

    def get(self, episode_id: str) -> Summary | None:
        with self._lock:
            return self._by_id.get(episode_id)

    def page(
        self, where: Callable[[Summary], bool], *, revision: int, after: str | None, limit: int
    ) -> tuple[list[Summary], str | None, int]:
        """Up to ``limit`` matching episodes created at or before ``revision``, newest first,
        older than ``after``; the id to continue after (None: no more); how many match in all."""
        with self._lock:
            ids, by_id = self._ids, self._by_id
            matched = [s for i in ids if (s := by_id[i]).created_revision <= revision and where(s)]
        total = len(matched)
        if after is not None:
            matched = matched[: bisect.bisect_left(matched, after, key=lambda s: s.id)]
        page = matched[-limit:][::-1]
        return page, (page[-1].id if len(matched) > limit else None), total

    def changes_since(self, revision: int) -> tuple[list[tuple[int, Summary | str]], bool]:
        """Changes after ``revision`` in order; False when some of them are no longer kept
        (the caller starts over from a fresh listing)."""
        with self._lock:
            if revision < self._forgotten:
                return [], False
            start = bisect.bisect_right(self._changes, revision, key=lambda c: c[0])
            return self._changes[start:], True

    def matching(self, where: Callable[[Summary], bool], states: tuple[str, ...]) -> list[str]:
        """Ids of every episode in one of ``states`` that ``where`` accepts."""
        with self._lock:
            return [s.id for s in self._by_id.values() if s.state in states and where(s)]

    def summary(self, hosts: dict[str, int]) -> dict[str, Any]:
        """The Tally's ``/api/summary`` answer, at the index's revision."""
        with self._lock:
            return self._tally.summary(time.time(), hosts=hosts, revision=self.revision)

    def count(self) -> int:
        with self._lock:
            return len(self._ids)

    def running(self) -> dict[str, int]:
        """Episodes running per host, from their records (host records no longer say: their
        running count is as of their last write, agent/host_record.py)."""
        with self._lock:
            return dict(self._tally.running)

    # --- following -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._load(None)
        except Exception:
            log.exception("could not list the episodes; retrying through the watch")
            self._follower.relist()
        while not self._stop.is_set():
            events = self._follower.poll(1.0)
            if events:
                self._apply(self._coalesced(events))

    def _coalesced(self, events: list[Event]) -> list[Event]:
        """What the watch brings for ``COALESCE`` seconds, each key's last event only, in
        revision order: a short episode is written three times within milliseconds, and the
        page needs where it ended up, not each step (decoding every version cost the mesh's
        2-core machine ~10% of its no-op throughput). Pages and the stream lag by as much."""
        deadline = time.monotonic() + self._coalesce
        while (left := deadline - time.monotonic()) > 0 and not self._stop.is_set():
            events += self._follower.poll(left)
        last = {event.kv.key: event for event in events}
        return sorted(last.values(), key=lambda event: event.kv.mod_revision)

    def _load(self, revision: int | None) -> None:
        """Every episode as of ``revision`` (default now), paged at one revision."""
        by_id: dict[str, Summary] = {}
        members: dict[bytes, tuple[str, ...]] = {}
        home: dict[str, bytes] = {}
        values: dict[bytes, bytes] = {}
        tally, now = Tally(), time.time()
        at = revision or 0
        for kv, read_at in Catalog(self.registry, self.keys).scan(self.keys.episodes(), revision):
            at = read_at
            found = self._decode(kv)
            members[kv.key] = tuple(r.id for r in found)
            values[kv.key] = kv.value
            for record in found:
                by_id[record.id] = Summary.of(record, kv.create_revision)
                home[record.id] = kv.key
                tally.add(record, now)
        if not at:
            at = self.registry.range(self.keys.episodes(), limit=1).revision
        with self._lock:
            self._by_id, self._members, self._home, self._tally = by_id, members, home, tally
            self._values = values
            self._recent = Recent(self._recent.limit)
            self._ids = sorted(by_id)
            self._changes, self._forgotten = [], at  # a listing: what happened before is unknown
            self.revision = at
        self._follower.start(at)
        self.ready.set()

    def _apply(self, events: list[Event]) -> None:
        """Decoded outside the lock, applied under it at once: a reader (the stream) never sees
        part of a revision's changes, so a message up to a revision holds all of them."""
        now = time.time()
        decoded = []
        for event in events:
            key = event.kv.key
            found = self._decode(event.kv) if event.type == "put" else []
            last = self._values.pop(key, None)  # the follow thread's alone: no lock
            last_records = self._recent.pop(key)
            if last_records is None and last is not None:
                last_records = self._decode_value(key, last)
            if event.type == "put":
                self._values[key] = event.kv.value
                if any(r.state is State.RUNNING for r in found):  # what a commit rewrites next
                    self._recent.put(key, found)
            before = {r.id: r for r in last_records} if last_records else {}
            decoded.append((event, found, before))
        with self._lock:
            for event, found, before in decoded:
                self._apply_one(event, found, before, now)
                self.revision = max(self.revision, event.kv.mod_revision)

    def _apply_one(
        self, event: Event, found: Iterable[EpisodeRecord], before: dict[str, EpisodeRecord], now: float
    ) -> None:
        revision = event.kv.mod_revision
        held = self._members.pop(event.kv.key, ())
        kept: list[str] = []
        for record in found:
            kept.append(record.id)
            self._home[record.id] = event.kv.key
            old = before.get(record.id)
            if old is not None and old == record:
                continue  # a group rewritten for its other members
            self._tally.update(old, record, now)
            summary = Summary.of(record, event.kv.create_revision)
            if record.id not in self._by_id:
                bisect.insort(self._ids, record.id)
            self._by_id[record.id] = summary
            self._log(revision, summary)
        if kept:
            self._members[event.kv.key] = tuple(kept)
        for gone in set(held) - set(kept):
            self._tally.update(before.get(gone), None, now)
            if self._home.get(gone) == event.kv.key:  # not moved out to a key of its own (design/batching.md)
                del self._home[gone]
                self._forget(gone, revision)

    def _forget(self, episode_id: str, revision: int) -> None:
        if self._by_id.pop(episode_id, None) is None:
            return
        index = bisect.bisect_left(self._ids, episode_id)
        if index < len(self._ids) and self._ids[index] == episode_id:
            del self._ids[index]
        self._log(revision, episode_id)

    def _log(self, revision: int, change: Summary | str) -> None:
        self._changes.append((revision, change))
        if len(self._changes) >= 2 * CHANGES_KEPT:  # trimmed now and then: amortised O(1)
            cut = len(self._changes) - CHANGES_KEPT
            self._forgotten = self._changes[cut - 1][0]
            del self._changes[:cut]

    @staticmethod
    def _decode(kv: KeyValue) -> list[EpisodeRecord]:  # a corrupt value is logged and counts as none
        return decode_or_none(decode_records, kv.value, kv.key) or []

    @staticmethod
    def _decode_value(key: bytes, value: bytes) -> list[EpisodeRecord]:
        return decode_or_none(decode_records, value, key) or []


class Recent:
    """Decoded values by key (the index puts those with a running episode), at most ``limit``
    records in all, the oldest put dropped first. Records are values (never mutated), so the
    index may share them. One thread: the index's follow thread."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._records: OrderedDict[bytes, list[EpisodeRecord]] = OrderedDict()
        self._count = 0

    def pop(self, key: bytes) -> list[EpisodeRecord] | None:
        records = self._records.pop(key, None)
        if records is not None:
            self._count -= len(records)
        return records

    def put(self, key: bytes, records: list[EpisodeRecord]) -> None:
        self.pop(key)
        if len(records) > self.limit:
            return
        self._records[key] = records
        self._count += len(records)
        while self._count > self.limit:
            _, dropped = self._records.popitem(last=False)
            self._count -= len(dropped)
