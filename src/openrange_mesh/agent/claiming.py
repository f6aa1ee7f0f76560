"""Claiming: pick queue entries for idle workers, claim them, adopt claims whose answer was lost."""

from __future__ import annotations

import logging
import time
import zlib
from itertools import islice

from ..errors import RegistryError
from ..ledger import homes
from ..ledger.homes import Versioned
from ..ledger.ledger import Claim
from ..ledger.queue import QueueEntry, decode_entry
from ..model import EpisodeRecord, State
from ..worker.child import WorkItem
from .joining import Joining
from .state import Held

log = logging.getLogger(__name__)

CANDIDATE_WINDOW = 8  # entries per wanted claim a host looks at (see ``_candidates``, ``_steal``)
CARRIED_CACHE = 256  # decoded entries kept (see ``_embedded``)
STEAL_INTERVAL = 0.05  # seconds between steal reads of an agent with idle workers
STEAL_PAGES = 4  # pages a steal read goes through past entries nobody can claim (corrupt, records gone)


class Claiming(Joining):
    def _step_claim(self) -> str | None:
        if not (self.pool.idle() or self.pool.ahead()) or self._takes_no_work or not self.lease.is_alive:
            self._steal_wanted = False
            return None
        adopted = self._adopt_claims() if self._claims_unsure else []
        candidates = self._candidates(self.pool.idle(), self.pool.ahead())
        try:  # every claim in one round trip, each its own nested txn (Ledger.settle)
            _, won = self.ledger.settle(
                [], candidates, host=self.host, lease=self.lease.lease, extra=self._host_refresh()
            )
        except RegistryError:
            self._claims_unsure = True  # it may have been applied: look once etcd answers
            raise
        claimed = self._took(candidates, won)
        if candidates and self.pool.idle():
            self.wake()  # claim again for the workers still idle (a lost race frees one)
        line = f"claimed {summary(claimed)}" if claimed else None
        if adopted:
            line = f"adopted {summary(adopted)} (their claim's answer was lost)" + (f"; {line}" if line else "")
        return line

    def _adopt_claims(self) -> list[str]:
        """After a claim txn that got no answer: hold the claims of ours that etcd has and we
        do not know, or their episodes would stay running (on no worker) as long as our lease.
        The pass that lost the answer left a worker idle for it."""
        prefix = self.keys.host_claims(self.host)
        adopted: list[str] = []
        for kv in self.registry.range(prefix).kvs:
            claim_id = self.keys.name_of(kv.key, prefix)
            if kv.lease != self.lease.lease or claim_id in self._held or not self.pool.idle():
                continue
            found = self.ledger.adopt(kv)
            if found is not None:
                self._hold(*found)
                adopted += found[0].episode_ids
        self._claims_unsure = False
        return adopted

    def _candidates(self, free: int, ahead: int = 0) -> list[tuple[QueueEntry, dict[str, Versioned]]]:
        """Entries to claim: one per idle worker, and a batch for each worker that can queue
        one behind the batch it runs (pool.py), with their records (carried by the entry, or
        read in one round trip) for the claim txns. Our own entries first (owners.py), oldest
        first: no peer wants them, so claims do not collide. Workers left idle steal from busy
        peers (``_steal``)."""
        if free + ahead == 0:
            return []
        with self._events_lock:
            entries = list(islice(self._queue.values(), CANDIDATE_WINDOW * (free + ahead)))
        chosen = entries[:free] + [e for e in entries[free:] if len(e.ids) > 1][:ahead]
        self._steal_wanted = len(entries) < free
        if self._steal_wanted and self._steal_due():
            chosen += self._steal(free - len(entries), {e.name for e in entries})
        carried = {e.name: self._embedded(e) for e in chosen}
        records = self.ledger.read([i for e in chosen if carried[e.name] is None for i in e.ids])
        for found in carried.values():
            records.update(found or {})
        out: list[tuple[QueueEntry, dict[str, Versioned]]] = []
        unclaimable: list[QueueEntry] = []
        for entry in chosen:
            listed = {i: records[i] for i in entry.ids if i in records}
            if any(v.record.state is State.PENDING for v in listed.values()):
                out.append((entry, listed))
            else:
                unclaimable.append(entry)
        # Entries whose records are gone or do not decode: forget them (until the watch brings
        # a new version), or being oldest they would be chosen first on every pass and starve
        # the rest; a steal read passes over them too.
        self._forget(unclaimable)
        for entry in unclaimable:
            self._note_unclaimable(self.keys.queued(entry.name), entry.mod_revision)
        return out

    def _steal_at(self) -> float | None:
        """When a steal read is due (monotonic), if one may be: a sign that a peer has a
        backlog (more of its entries arrived than its record said it had free workers, or its
        record said it was full) came after the last read that found nothing to take."""
        with self._events_lock:
            if self._others_at <= self._looked_at:
                return None
        return self._stolen_at + STEAL_INTERVAL

    def _steal_due(self) -> bool:
        due = self._steal_at()
        return due is not None and time.monotonic() >= due

    def _steal(self, count: int, ours: set[str]) -> list[QueueEntry]:
        """Up to ``count`` entries of busy peers, read from etcd (we do not keep theirs): the
        oldest ``CANDIDATE_WINDOW x count``, ranked by a hash of (us, entry) so that peers
        stealing at once want different ones. Only after a sign of a backlog (``_steal_at``),
        at most every ``STEAL_INTERVAL``: a mesh with workers to spare makes no reads. Entries
        found unclaimable before (records gone, undecodable) are passed over until they change,
        and read past: up to ``STEAL_PAGES`` pages while a page holds nothing else."""
        self._stolen_at = time.monotonic()
        found: list[QueueEntry] = []
        start, revision, limit = None, 0, CANDIDATE_WINDOW * count
        for _ in range(STEAL_PAGES):  # more pages only past entries nobody can claim
            listing = self.registry.range(self.keys.queue(), start=start, revision=revision or None, limit=limit)
            revision = listing.revision
            for kv in listing.kvs:
                if self._unclaimable.get(kv.key) == kv.mod_revision:
                    continue
                entry = decode_entry(self.keys, kv)
                if entry is None:
                    self._note_unclaimable(kv.key, kv.mod_revision)
                elif entry.name not in ours:
                    found.append(entry)
            if found or len(listing.kvs) < limit:
                break
            start = listing.kvs[-1].key + b"\0"
        if not found:
            with self._events_lock:  # until a sign newer than this listing
                self._looked_at = max(self._looked_at, revision)
        found.sort(key=lambda e: zlib.crc32(f"{self.host}/{e.name}".encode()))
        return found[:count]

    def _note_unclaimable(self, key: bytes, revision: int) -> None:
        if len(self._unclaimable) >= CARRIED_CACHE:
            self._unclaimable.clear()  # forgetting only costs a look at them again
        self._unclaimable[key] = revision

    def _embedded(self, entry: QueueEntry) -> dict[str, Versioned] | None:
        """The records an entry carries, decoded once per version of the entry: an entry may
        be a candidate in several passes, and decoding a 250-episode group costs ~2 ms."""
        cached = self._carried.get(entry.name)
        if cached is not None and cached[0] == entry.mod_revision:
            return cached[1]
        if len(self._carried) >= CARRIED_CACHE:
            with self._events_lock:  # keep the entries still queued, drop the rest
                self._carried = {n: c for n, c in self._carried.items() if n in self._queue}
        found = homes.embedded(self.keys, entry)
        self._carried[entry.name] = (entry.mod_revision, found)
        return found

    def _forget(self, entries: list[QueueEntry]) -> None:
        """Drop entries from the local queue unless the watch brought a newer version since."""
        with self._events_lock:
            for entry in entries:
                queued = self._queue.get(entry.name)
                if queued is not None and queued.mod_revision == entry.mod_revision:
                    del self._queue[entry.name]

    def _took(
        self,
        candidates: list[tuple[QueueEntry, dict[str, Versioned]]],
        won: list[tuple[Claim, list[EpisodeRecord]] | None],
    ) -> list[str]:
        """Hold the claims won of ``candidates``; returns their episode ids. Every candidate is
        done with, whatever the outcome: ours now, or a peer took it, or a cancel changed it (its
        new version comes from the watch)."""
        with self._events_lock:
            ours = {entry.name for entry, _ in candidates if entry.name in self._queue}  # the rest were stolen
        self._forget([entry for entry, _ in candidates])
        claimed: list[str] = []
        for (entry, _records), claim in zip(candidates, won, strict=True):
            if claim is None:
                self.metrics.claims["lost"].inc()
                continue
            self.metrics.claims["won" if entry.name in ours else "stolen"].inc()
            self._hold(*claim)
            claimed += claim[0].episode_ids
        return claimed

    def _hold(self, claim: Claim, running: list[EpisodeRecord]) -> None:
        self._held[claim.claim_id] = Held(claim, {r.id: r for r in running})
        for record in running:
            self._owner_of[record.id] = claim.claim_id
            self.metrics.attempt_started(record)
        self.pool.dispatch([WorkItem(r.id, r.attempt, r.spec, r.history[-1].batch) for r in running])

    def _pairable(self, freed: int) -> list[tuple[QueueEntry, dict[str, Versioned]]]:
        """Entries to claim in the same txns as the commits that free ``freed`` workers: one
        round trip per episode instead of two, in the steady state of a busy mesh."""
        spare = min(freed, self.pool.idle())
        ahead = min(freed - spare, self.pool.ahead())
        if spare + ahead == 0 or self._takes_no_work or not self.lease.is_alive:
            return []
        return self._candidates(spare, ahead)


def summary(ids: list[str]) -> str:
    return ", ".join(ids) if len(ids) <= 3 else f"{len(ids)} episodes ({ids[0]} ... {ids[-1]})"
