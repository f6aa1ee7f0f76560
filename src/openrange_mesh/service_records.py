"""Where EpisodeService's records go: through the ledger, or kept behind.

Through the ledger (a registry others may read: ``etcd://``, a registry handed in, a named
``memory://``, or one a dashboard reads), episodes started together are written as running
under one claim of ours, bound to our lease, and their outcomes are commits fenced by it, one
txn per claim: every record is visible to other readers at once. While the registry is private
they are kept behind (writebehind.py). Either way a record is made by the ledger's pure
transitions (ledger/records.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .agent.lease import LeaseKeeper
from .ids import IdAllocator
from .keys import Keys
from .ledger.claims import Claim
from .ledger.ledger import Ledger
from .ledger.records import created, finish_attempt
from .model import EpisodeRecord, EpisodeSpec, State
from .registry import Registry
from .writebehind import Kept, KeptStart, WriteBehind

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class Claimed:
    """Episodes started together under one claim of ours: their running records, and those
    not committed yet (the last commit releases the claim)."""

    claim: Claim
    records: list[EpisodeRecord]
    open: set[str]


Batch = Claimed | KeptStart  # what episodes started together run under


class ServiceRecords:
    """Threads: any thread that calls the service. ``_lock`` guards each ``Claimed.open``; the
    ledger's txns run outside it (they go to etcd)."""

    def __init__(self, registry: Registry, keys: Keys, host: str, ttl: int, *, private: bool) -> None:
        self.host = host
        self.ledger = Ledger(registry, keys)
        self.ids = IdAllocator(registry, keys, host)
        self._behind = WriteBehind(registry, keys, private=private)
        self._lease = LeaseKeeper(registry, ttl)
        self._lock = threading.Lock()

    def start(self, specs: Sequence[EpisodeSpec], now: float) -> tuple[list[str], Batch]:
        """New episodes' ids, started together: kept behind while the registry is private,
        else written through the ledger as running under a claim of ours."""
        ids = self.ids.next_ids(len(specs))
        kept = self._behind.start(ids, specs, self.host, now)
        if kept is not None:
            return ids, kept
        fresh = created(ids, specs, now, self.host)
        claim, running = self.ledger.start(self.host, self._lease.ensure(), fresh)
        return ids, Claimed(claim, running, set(claim.episode_ids))

    def end(
        self, batch: Batch, index: int, state: State, now: float, error: str | None, result: dict[str, Any]
    ) -> EpisodeRecord | Kept:
        """The final record of the ``index``-th episode of ``batch`` (kept: built when first read)."""
        if isinstance(batch, KeptStart):
            return Kept(batch, index, state, now, error, result)
        return finish_attempt(batch.records[index], state, now, error, result, token=batch.claim.token)

    def commit(self, ended: Sequence[tuple[Batch, EpisodeRecord | Kept]]) -> set[int]:
        """Commit final records, one txn per claim they share; the claims (``id()`` of their
        batch) whose commit was fenced off: a peer took those episodes over."""
        kept: list[Kept] = []  # nobody could have taken these over
        by_claim: dict[int, tuple[Claimed, list[EpisodeRecord]]] = {}
        for batch, final in ended:
            if isinstance(final, Kept):
                kept.append(final)
            elif isinstance(batch, Claimed):
                by_claim.setdefault(id(batch), (batch, []))[1].append(final)
        if kept:
            self._behind.finish(kept)
        fenced: set[int] = set()
        for key, (claimed, finals) in by_claim.items():
            ids = {r.id for r in finals}
            with self._lock:
                last = claimed.open <= ids
                claimed.open -= ids
            if not self.ledger.commit(claimed.claim, finals, last=last):
                log.warning("%d episodes were taken over before they finished here; not committed", len(ids))
                fenced.add(key)
        return fenced

    def flush(self) -> None:
        """Before a read through the service: write what is kept behind."""
        self._behind.flush()

    def share(self) -> None:
        """The registry is being handed out: write what is kept, and write through from now on."""
        self._behind.share()

    def close(self) -> None:
        self._lease.stop()
