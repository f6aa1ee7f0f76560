"""The leader's index of every episode, for paging, filters and the live stream (design §11a).

Built by one paged read at a revision, kept current by a watch of ``episodes/`` from there
(group records expand to their members). Each episode is a small ``Summary`` (~300 bytes), so
100k episodes cost tens of MB, not the records' full size. Episodes are kept in id order (ids
sort by creation), newest first when paged. A page is read at a cursor's revision: episodes
created after it are left out, so pages stay stable while new episodes arrive.

Changes are also appended to a bounded log, ``(revision, summary)``, which the live stream
reads from a client's last revision; a client further behind than the log gets a reset.

Threads: the follow thread writes; request handlers read. ``_lock`` guards every field.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..keys import Keys
from ..mesh.catalog import Catalog
from ..mesh.follow import Follower
from ..model import EpisodeRecord, decode_or_none, decode_records
from ..registry import Event, KeyValue, Registry

log = logging.getLogger(__name__)

CHANGES_KEPT = 20_000  # changes the live stream can resume from


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


Listener = Callable[[EpisodeRecord | None, EpisodeRecord | None], None]


class EpisodeIndex:
    def __init__(self, registry: Registry, keys: Keys, on_change: Listener | None = None) -> None:
        self.registry = registry
        self.keys = keys
        self.on_change = on_change  # (old, new) records, for an aggregate (dashboard/tally.py)
        self.revision = 0
        self.ready = threading.Event()
        self._by_id: dict[str, Summary] = {}
        self._records: dict[str, EpisodeRecord] = {}  # for on_change's "old"; only with a listener
        self._ids: list[str] = []  # sorted
        self._members: dict[bytes, tuple[str, ...]] = {}  # key -> the episodes it holds
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

    def count(self) -> int:
        with self._lock:
            return len(self._ids)

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
                self._apply(events)

    def _load(self, revision: int | None) -> None:
        """Every episode as of ``revision`` (default now), paged at one revision."""
        by_id: dict[str, Summary] = {}
        records: dict[str, EpisodeRecord] = {}
        members: dict[bytes, tuple[str, ...]] = {}
        at = revision or 0
        for kv, read_at in Catalog(self.registry, self.keys).scan(self.keys.episodes(), revision):
            at = read_at
            found = self._decode(kv)
            members[kv.key] = tuple(r.id for r in found)
            for record in found:
                by_id[record.id] = Summary.of(record, kv.create_revision)
                if self.on_change is not None:
                    records[record.id] = record
        if not at:
            at = self.registry.range(self.keys.episodes(), limit=1).revision
        with self._lock:
            old = self._records
            self._by_id, self._records, self._members = by_id, records, members
            self._ids = sorted(by_id)
            self._changes, self._forgotten = [], at  # a listing: what happened before is unknown
            self.revision = at
        if self.on_change is not None:
            self._replayed(old, records)
        self._follower.start(at)
        self.ready.set()

    def _replayed(self, old: dict[str, EpisodeRecord], new: dict[str, EpisodeRecord]) -> None:
        assert self.on_change is not None
        for episode_id in old.keys() - new.keys():
            self.on_change(old[episode_id], None)
        for episode_id, record in new.items():
            self.on_change(old.get(episode_id), record)

    def _apply(self, events: list[Event]) -> None:
        for event in events:
            found = self._decode(event.kv) if event.type == "put" else []
            with self._lock:
                self._apply_one(event, found)
                self.revision = max(self.revision, event.kv.mod_revision)

    def _apply_one(self, event: Event, found: Iterable[EpisodeRecord]) -> None:
        revision = event.kv.mod_revision
        before = self._members.pop(event.kv.key, ())
        now: list[str] = []
        for record in found:
            now.append(record.id)
            summary = Summary.of(record, event.kv.create_revision)
            if record.id not in self._by_id:
                bisect.insort(self._ids, record.id)
            elif self._by_id[record.id] == summary:
                continue
            self._by_id[record.id] = summary
            self._log(revision, summary)
            if self.on_change is not None:
                self.on_change(self._records.get(record.id), record)
                self._records[record.id] = record
        if now:
            self._members[event.kv.key] = tuple(now)
        for gone in set(before) - set(now):
            self._forget(gone, revision)

    def _forget(self, episode_id: str, revision: int) -> None:
        if self._by_id.pop(episode_id, None) is None:
            return
        index = bisect.bisect_left(self._ids, episode_id)
        if index < len(self._ids) and self._ids[index] == episode_id:
            del self._ids[index]
        self._log(revision, episode_id)
        if self.on_change is not None:
            self.on_change(self._records.pop(episode_id, None), None)

    def _log(self, revision: int, change: Summary | str) -> None:
        self._changes.append((revision, change))
        if len(self._changes) >= 2 * CHANGES_KEPT:  # trimmed now and then: amortised O(1)
            cut = len(self._changes) - CHANGES_KEPT
            self._forgotten = self._changes[cut - 1][0]
            del self._changes[:cut]

    @staticmethod
    def _decode(kv: KeyValue) -> list[EpisodeRecord]:
        return decode_or_none(decode_records, kv.value, kv.key) or []
