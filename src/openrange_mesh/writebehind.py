"""Write-behind of EpisodeService's records while nobody else can read its registry.

A ``memory://`` registry the service opened itself (an unnamed store, and no dashboard reading
it from another thread) has one reader: the service. A record nobody reads need not be built,
encoded or written, and doing all three at each transition was most of what the service cost
over a plain dict. So while the registry is private, the service keeps what its episodes'
records are made of (ids and specs, when they started and under which claim id, how each
ended), and the records are built by the ledger's pure transitions (``start_together``,
``finish_attempt``) when first needed: a read through the service, which writes everything
kept first in batched txns, or a report's ``record``. A read sees what writing at each
transition would have shown: an episode started and not stopped reads as running, a stopped
one as its final record. What is kept is smaller than the records it stands for, and the first
read after many unread episodes pays for them all (~20 us each: built, encoded and written).

Kept episodes hold no claim key and no lease (nobody could take one over, so nothing needs
fencing); their attempts record no fencing token. Once the registry is handed out
(``share``), everything kept is written, and the service writes through the ledger again.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from .keys import Keys
from .ledger.records import created, finish_attempt, start_together
from .ledger.txns import put_chunks
from .model import EpisodeRecord, EpisodeSpec, State, pack
from .registry import Put, Registry


class KeptStart:
    """New episodes created and started together, by whom and when; their running records,
    built once when first needed. Any thread may build them: two threads build equal records."""

    __slots__ = ("_host", "_now", "_running", "_specs", "ids")

    def __init__(self, ids: Sequence[str], specs: Sequence[EpisodeSpec], host: str, now: float) -> None:
        self.ids = ids
        self._specs = specs
        self._host = host
        self._now = now
        self._running: list[EpisodeRecord] | None = None

    def running(self) -> list[EpisodeRecord]:
        if self._running is None:
            fresh = created(self.ids, self._specs, self._now, self._host)
            self._running = start_together(fresh, self._host, self._now)[1]
        return self._running


class Kept:
    """How a kept episode ended; its final record, built once when first needed. Has the
    ``id``, ``state`` and ``result`` that record will have."""

    __slots__ = ("_now", "_record", "error", "id", "index", "result", "start", "state")

    def __init__(
        self, start: KeptStart, index: int, state: State, now: float, error: str | None, result: dict[str, Any]
    ) -> None:
        self.start = start
        self.index = index
        self.id = start.ids[index]
        self.state = state
        self.result = result
        self._now = now
        self.error = error
        self._record: EpisodeRecord | None = None

    def record(self) -> EpisodeRecord:
        if self._record is None:
            running = self.start.running()[self.index]
            self._record = finish_attempt(running, self.state, self._now, self.error, self.result)
        return self._record


class WriteBehind:
    """Threads: any thread that calls the service. ``_lock`` guards ``_started``,
    ``_finished`` and ``_private``, and is held while they are written: two writers could
    otherwise put an episode's running record after its final one."""

    def __init__(self, registry: Registry, keys: Keys, *, private: bool) -> None:
        self._registry = registry
        self._keys = keys
        self._lock = threading.Lock()
        self._private = private
        # Not written yet: starts (their episodes' running records, but for those that ended
        # since: both lists are written and emptied together) and ends (final records).
        self._started: list[KeptStart] = []
        self._finished: list[Kept] = []

    def start(self, ids: Sequence[str], specs: Sequence[EpisodeSpec], host: str, now: float) -> KeptStart | None:
        """Keep new episodes started together; None when the registry is not private (the
        caller starts them through the ledger)."""
        if not self._private:  # read unlocked: a shared registry never becomes private again
            return None
        kept = KeptStart(ids, specs, host, now)
        with self._lock:
            if not self._private:
                return None
            self._started.append(kept)
        return kept

    def finish(self, ended: Sequence[Kept]) -> None:
        """How episodes ``start`` kept ended, all or none. What their runtimes gave (result and
        error: the rest of a record is ours, and encodes) is encoded now, at the depth a record
        holds it, as a commit through the ledger would: what msgpack refuses fails the stop
        that made it, never a later read."""
        for kept in ended:
            pack([kept.result, kept.error])
        with self._lock:
            self._finished += ended
            if not self._private:
                self._write_locked()

    def flush(self) -> None:
        """Write everything kept (the service calls this before every read)."""
        if self._started or self._finished:  # read unlocked: a caller's own changes are seen
            with self._lock:
                self._write_locked()

    def share(self) -> None:
        """The registry is being handed out: write everything kept, keep nothing from now on."""
        with self._lock:
            self._write_locked()
            self._private = False

    def _write_locked(self) -> None:
        ended = {kept.id for kept in self._finished}
        values = [(r.id, r.to_bytes()) for start in self._started for r in start.running() if r.id not in ended]
        values += [(k.id, k.record().to_bytes()) for k in self._finished]
        for chunk in put_chunks(Put(self._keys.episode(i), value) for i, value in values):
            self._registry.txn([], chunk)
        self._started = []  # written as running: how they end comes through finish
        self._finished = []
