"""Claiming: ``Claimer`` picks queue entries for idle workers, claims them, steals from busy
peers and adopts claims whose answer was lost.

Candidates come from the entries of our mailbox (agent/owned.py), oldest first: no peer wants
them, so claims do not collide. Workers left idle with none of ours steal: a read of peers'
mailboxes, made when ours runs dry, after a sign that work was queued (agent/peers.py) newer
than the last read that found nothing to take, and again after a read that found something
(until one finds nothing), at most every ``STEAL_INTERVAL``. A claim won is held (agent/holdings.py)
and its episodes go to the workers.

Threads: the loop thread only, so no lock. Owns what only its own reads decide: when it last
stole and at what revision it found nothing, whether our mailbox ran dry since, the records
entries carry (decoded once per version of an entry), the entries a claim could not take
(passed over until they change), the batch entries with one episode pending (a single: not
for a look-ahead slot until they change), and the entries whose claim lost while they stood as
they were (kept, and claimed again with their records read afresh).
"""

from __future__ import annotations

import logging
import random
import time
import zlib
from collections.abc import Callable

from ..errors import RegistryError
from ..keys import Keys
from ..ledger import homes
from ..ledger.claims import Claim, Settlement
from ..ledger.homes import Versioned
from ..ledger.ledger import Claimed, Ledger
from ..ledger.queue import QueueEntry, decode_entry
from ..model import EpisodeRecord, State
from ..registry import Registry
from ..worker.child import WorkItem
from ..worker.pool import Pool
from .holdings import Holdings
from .host_record import HostRecord
from .inbox import Inbox
from .lease import LeaseKeeper
from .metrics import Metrics
from .owned import OwnedQueue
from .peers import Peers

log = logging.getLogger(__name__)

CANDIDATE_WINDOW = 8  # entries per wanted claim a host looks at (see ``candidates``, ``_steal``)
CARRIED_CACHE = 256  # decoded entries kept (see ``_embedded``)
STEAL_INTERVAL = 0.05  # seconds between steal reads of an agent with idle workers
# After a read that found nothing, a mailbox that runs dry again waits this long to read: a
# trickle of single entries to a mesh with workers to spare would otherwise cost a read each.
DRY_PAUSE = 1.0
STEAL_PAGES = 4  # pages a steal read goes through past entries nobody can claim (corrupt, records gone)
# Claims of one version of an entry that may lose in a row while it stands as it was before it
# is passed over for STOOD_PAUSE between tries (see ``_paused``).
STOOD_TRIES = 3
STOOD_PAUSE = 1.0

Candidate = tuple[QueueEntry, dict[str, Versioned]]  # an entry and its records, for a claim txn
Won = Claimed  # a claim's outcome: won; lost while the entry stood as it was; None: lost


class Claimer:
    def __init__(
        self,
        host: str,
        registry: Registry,
        keys: Keys,
        ledger: Ledger,
        lease: LeaseKeeper,
        pool: Pool,
        *,
        owned: OwnedQueue,
        peers: Peers,
        holdings: Holdings,
        host_record: HostRecord,
        metrics: Metrics,
        takes_no_work: Callable[[], bool],
        wake: Callable[[], None],
        inbox: Inbox,
    ) -> None:
        self.host = host
        self.registry = registry
        self.keys = keys
        self.ledger = ledger
        self.lease = lease
        self.pool = pool
        self.owned = owned
        self.peers = peers
        self.holdings = holdings
        self.host_record = host_record
        self.metrics = metrics
        self._takes_no_work = takes_no_work
        self._wake = wake
        self.inbox = inbox  # cancels asked of claims we adopt (``_adopt``)
        self._stolen_at = 0.0  # monotonic time of the last steal read
        self._looked_at = 0  # revision at which a steal read last found nothing to take
        self._dry = False  # our mailbox ran dry since the last steal read, or that read found something
        self._found_nothing_at = -DRY_PAUSE  # monotonic time of the last read that found nothing
        self._carried: dict[str, tuple[int, dict[str, Versioned] | None]] = {}  # name -> (revision, its records)
        self._unclaimable: dict[bytes, int] = {}  # queue key -> revision of an entry a claim cannot take
        self._lone: dict[str, int] = {}  # name -> revision of a batch entry with one episode pending
        # name -> (revision, claims lost in a row while it stood as it was, monotonic time of the last)
        self._stood: dict[str, tuple[int, int, float]] = {}

    def step(self) -> str | None:
        pool = self.pool
        if self._takes_no_work() and self.holdings.claims_unsure and self.lease.is_alive:
            released = self._adopt()  # back to the queue: no worker takes work here now
            return (
                f"released {summary(released)} (their claim's answer was lost; we take no work)" if released else None
            )
        if not (pool.idle() or pool.ahead()) or self._takes_no_work() or not self.lease.is_alive:
            self.peers.want_steal(False)
            return None
        adopted = self._adopt() if self.holdings.claims_unsure else []
        candidates = self.candidates(pool.idle(), pool.ahead())
        _, won = self.settle([], candidates)  # every claim in one round trip, each its own nested txn
        claimed = self.took(candidates, won)
        if candidates and pool.idle():
            self._wake()  # claim again for the workers still idle (a lost race frees one)
        line = f"claimed {summary(claimed)}" if claimed else None
        if adopted:
            line = f"adopted {summary(adopted)} (their claim's answer was lost)" + (f"; {line}" if line else "")
        return line

    def settle(self, commits: list[Settlement], candidates: list[Candidate]) -> tuple[list[bool], list[Won]]:
        """Commits, and claims of ``candidates``, in one round trip (Ledger.settle), with our
        host record if a refresh is due. Returns what each commit and claim came to."""
        try:
            return self.ledger.settle(
                commits, candidates, host=self.host, lease=self.lease.lease, extra=self.host_record.refresh()
            )
        except RegistryError:
            if candidates or not commits:  # the claim step's txn, or claims riding on commits
                self.holdings.claim_answer_lost()  # they may have been applied: look once etcd answers
            raise

    def pairable(self, freed: int) -> list[Candidate]:
        """Entries to claim in the same txns as the commits that free ``freed`` workers: one
        round trip per episode instead of two, in the steady state of a busy mesh. None while
        a claim's answer was lost: etcd may hold claims of ours for these workers, and new
        claims here, pass after pass, would keep every worker busy and those episodes running
        on no worker until the queue drained (the claim step adopts them first)."""
        spare = min(freed, self.pool.idle())
        ahead = min(freed - spare, self.pool.ahead())
        if spare + ahead == 0 or self._takes_no_work() or not self.lease.is_alive or self.holdings.claims_unsure:
            return []
        return self.candidates(spare, ahead)

    def candidates(self, free: int, ahead: int = 0) -> list[Candidate]:
        """Entries to claim: one per idle worker, and a batch for each worker that can queue
        one behind the batch it runs (pool.py), with their records (carried by the entry, or
        read in one round trip) for the claim txns. Our own entries first, oldest first;
        workers left idle steal from busy peers (``_steal``)."""
        if free + ahead == 0:
            return []
        entries = [e for e in self.owned.head(CANDIDATE_WINDOW * (free + ahead)) if not self._paused(e)]
        batches = [e for e in entries[free:] if len(e.ids) > 1 and self._lone.get(e.name) != e.mod_revision]
        chosen = entries[:free] + batches[:ahead]
        behind = {e.name for e in batches[:ahead]}  # for a worker that runs a batch: a batch only
        wanted = len(entries) < free
        # ran dry: ours just ran out (we had some, too few), or we have just come to want more
        self._dry |= self.peers.want_steal(wanted) or (wanted and bool(entries))
        if wanted and self._steal_due():
            chosen += self._steal(free - len(entries), {e.name for e in entries})
        # what an entry carries is not what its last claim lost to: read its records afresh
        carried = {e.name: None if self._lost_as_it_stood(e) else self._embedded(e) for e in chosen}
        records = self.ledger.read([i for e in chosen if carried[e.name] is None for i in e.ids])
        for found in carried.values():
            records.update(found or {})
        out: list[Candidate] = []
        unclaimable: list[QueueEntry] = []
        for entry in chosen:
            listed = {i: records[i] for i in entry.ids if i in records}
            pending = sum(1 for v in listed.values() if v.record.state is State.PENDING)
            if not pending:
                unclaimable.append(entry)
            elif entry.name in behind and pending == 1:
                # its claim would take one episode (Ledger claims only the pending ones), which
                # only an idle worker takes: an idle one claims it, oldest first
                self._note_lone(entry)
            else:
                out.append((entry, listed))
        # Entries whose records are gone or do not decode: forget them (until the watch brings
        # a new version), or being oldest they would be chosen first on every pass and starve
        # the rest; a steal read passes over them too.
        self.owned.done_with(unclaimable)
        for entry in unclaimable:
            self._note_unclaimable(self.keys.queued(entry.path), entry.mod_revision)
        return out

    def took(self, candidates: list[Candidate], won: list[Won]) -> list[str]:
        """Hold the claims won of ``candidates``; returns their episode ids. A candidate is done
        with, whatever the outcome (ours now, or a peer took it, or a cancel changed it: its
        new version comes from the watch), but one whose claim lost while it stood as it was
        (``Ledger.claim``): its records changed since read (a client's ack rewrote a finished
        member of its group), and with the entry unchanged no watch event would bring it back,
        so it stays for the next pass, which reads its records again. (It was dropped as taken,
        and its members stayed pending as long as its owner lived.)"""
        stood = {e.name for (e, _), claim in zip(candidates, won, strict=True) if isinstance(claim, QueueEntry)}
        ours = self.owned.done_with(e for e, _ in candidates if e.name not in stood)  # the rest were stolen
        claimed: list[str] = []
        for (entry, _records), claim in zip(candidates, won, strict=True):
            if entry.name in stood:
                self._note_stood(entry)
            else:
                self._stood.pop(entry.name, None)
            if not isinstance(claim, tuple):
                self.metrics.claims["lost"].inc()
                continue
            self.metrics.claims["won" if entry.name in ours else "stolen"].inc()
            self._hold(*claim)
            claimed += claim[0].episode_ids
        return claimed

    def steal_at(self) -> float | None:
        """When a steal read is due (monotonic), if one may be: our mailbox ran dry, or our last
        read found something (``STEAL_INTERVAL`` after it, not within ``DRY_PAUSE`` of a read
        that found nothing), or a sign that work was queued came after the last read that found
        nothing to take (not sooner than ``STEAL_INTERVAL`` after the sign: owners claim what
        they can first, and the read finds what is left)."""
        due: list[float] = []
        if self._dry:
            due.append(max(self._stolen_at + STEAL_INTERVAL, self._found_nothing_at + DRY_PAUSE))
        if self.peers.backlog_at > self._looked_at:
            due.append(max(self._stolen_at, self.peers.sign_at) + STEAL_INTERVAL)
        return min(due) if due else None

    def _steal_due(self) -> bool:
        due = self.steal_at()
        return due is not None and time.monotonic() >= due

    def _steal(self, count: int, ours: set[str]) -> list[QueueEntry]:
        """Up to ``count`` entries of peers' mailboxes, read from etcd (theirs never reach
        us): the first ``CANDIDATE_WINDOW x count`` from a peer's mailbox on (on into the next
        mailboxes, then around from the first), ranked by a hash of (us, entry) so that peers
        stealing at once want different ones. Entries found unclaimable before (records gone,
        undecodable) are passed over until they change, and read past: up to ``STEAL_PAGES``
        pages while a page holds nothing else."""
        self._stolen_at = time.monotonic()
        found: list[QueueEntry] = []
        limit = CANDIDATE_WINDOW * count
        start: bytes | None = self._steal_start()
        revision, wrapped = 0, start is None
        for _ in range(STEAL_PAGES):  # more pages only past entries nobody can claim
            listing = self.registry.range(self.keys.queue(), start=start, revision=revision or None, limit=limit)
            revision = listing.revision
            for kv in listing.kvs:
                if self._unclaimable.get(kv.key) == kv.mod_revision or kv.key.startswith(self._own):
                    continue
                entry = decode_entry(self.keys, kv)
                if entry is None:
                    self._note_unclaimable(kv.key, kv.mod_revision)
                elif entry.name not in ours and all(e.path != entry.path for e in found):
                    found.append(entry)
            if found or (len(listing.kvs) < limit and wrapped):
                break
            if len(listing.kvs) < limit:  # the last mailboxes held too few: around from the first
                start, wrapped = None, True
            else:
                start = listing.kvs[-1].key + b"\0"
        # A read that found something is followed by another, STEAL_INTERVAL later, whenever
        # workers are idle with nothing of ours, until one finds nothing: what it found may
        # go to another thief first, have no records left, or be one of many (the rest of a
        # dead host's mailbox). No sign need come: a thief had waited for one with a worker
        # idle beside a dead host's full mailbox, or after its first theft, stopped at peers'
        # entries whose records were gone.
        self._dry = bool(found)
        if not found:  # until a sign newer than this listing
            self._looked_at = max(self._looked_at, revision)
            self._found_nothing_at = self._stolen_at
        found.sort(key=lambda e: zlib.crc32(f"{self.host}/{e.name}".encode()))
        return found[:count]

    def _steal_start(self) -> bytes | None:
        """The mailbox a steal read starts at: a peer's (None: from the first), at random, so
        that thieves spread over their victims."""
        peers = self.peers.peers()
        return self.keys.mailbox(random.choice(peers)) if peers else None

    @property
    def _own(self) -> bytes:
        return self.keys.mailbox(self.host)

    def _note_unclaimable(self, key: bytes, revision: int) -> None:
        if len(self._unclaimable) >= CARRIED_CACHE:
            self._unclaimable.clear()  # forgetting only costs a look at them again
        self._unclaimable[key] = revision

    def _note_lone(self, entry: QueueEntry) -> None:
        if len(self._lone) >= CARRIED_CACHE:
            self._lone.clear()  # forgetting only costs a read of it again
        self._lone[entry.name] = entry.mod_revision

    def _note_stood(self, entry: QueueEntry) -> None:
        revision, lost, _ = self._stood.get(entry.name, (0, 0, 0.0))
        lost = lost + 1 if revision == entry.mod_revision else 1
        if lost == STOOD_TRIES:
            log.warning(
                "claims of queue entry %s lost %d times in a row while it stood as it was: trying it every %.0f s",
                entry.name,
                lost,
                STOOD_PAUSE,
            )
        if len(self._stood) >= CARRIED_CACHE:
            self._stood.clear()  # forgetting only costs a try with what it carries
        self._stood[entry.name] = (entry.mod_revision, lost, time.monotonic())

    def _lost_as_it_stood(self, entry: QueueEntry) -> bool:
        return self._stood.get(entry.name, (0, 0, 0.0))[0] == entry.mod_revision

    def _paused(self, entry: QueueEntry) -> bool:
        """Whether an entry whose claims lost ``STOOD_TRIES`` times in a row while it stood as it
        was waits out ``STOOD_PAUSE`` since the last: the loss came again with its records read
        afresh, so something other than an ack's race makes it lose, and claiming it again at
        once on every pass (each wakes the next while a worker is idle) would spin the loop."""
        revision, lost, at = self._stood.get(entry.name, (0, 0, 0.0))
        return revision == entry.mod_revision and lost >= STOOD_TRIES and time.monotonic() < at + STOOD_PAUSE

    def _embedded(self, entry: QueueEntry) -> dict[str, Versioned] | None:
        """The records an entry carries, decoded once per version of the entry: an entry may
        be a candidate in several passes, and decoding a 250-episode group costs ~2 ms."""
        cached = self._carried.get(entry.name)
        if cached is not None and cached[0] == entry.mod_revision:
            return cached[1]
        if len(self._carried) >= CARRIED_CACHE:  # keep the entries still queued, drop the rest
            still = self.owned.queued(self._carried)
            self._carried = {n: c for n, c in self._carried.items() if n in still}
        found = homes.embedded(self.keys, entry)
        self._carried[entry.name] = (entry.mod_revision, found)
        return found

    def _adopt(self) -> list[str]:
        """After a claim txn that got no answer: hold the claims of ours that etcd has and we
        do not know, or their episodes would stay running (on no worker) as long as our lease.
        The pass that lost the answer left a worker idle (or a look-ahead slot free) for it;
        until a claim found has a worker, the question stays open. (It used to be closed
        whatever was found, and a lost look-ahead claim, found while every worker ran a batch,
        stayed running on no worker as long as the agent lived.) While we take no work
        (draining, sick) the claims found are released at once: a drain would otherwise end
        without them, and its lease's end cost each episode an attempt; a sick host kept them
        running on no worker as long as it stayed sick."""
        prefix = self.keys.host_claims(self.host)
        takes_work = not self._takes_no_work()
        adopted: list[str] = []
        waiting = False  # a claim of ours that no worker could take yet
        for kv in self.registry.range(prefix).kvs:
            claim_id = self.keys.name_of(kv.key, prefix)
            if kv.lease != self.lease.lease or self.holdings.holds(claim_id):
                continue
            if takes_work and not (self.pool.idle() or self.pool.ahead()):  # no worker at all: no read either
                waiting = True
                continue
            found = self.ledger.adopt(kv)
            if found is None:
                continue
            if takes_work and not self._worker_for(len(found[1])):  # a lost look-ahead claim, every worker busy
                waiting = True
                continue
            self._hold(*found, takes_work=takes_work)
            adopted += found[0].episode_ids
        if not waiting:  # else look again when a worker frees (pairable claims none meanwhile)
            self.holdings.claims_checked()
        # A cancel asked while we did not know these were ours was dropped (Stopper forwards
        # cancels of episodes we hold only), and its marker brings no second event: read them.
        for episode_id in self.ledger.cancel_requested(adopted) if adopted else ():
            self.inbox.cancel_requested(episode_id)
        return adopted

    def _worker_for(self, episodes: int) -> bool:
        """Whether a worker takes a group of ``episodes`` now (pool.dispatch): an idle one, or
        for a batch one that runs a batch with nothing behind it."""
        return bool(self.pool.idle() or (episodes > 1 and self.pool.ahead()))

    def _hold(self, claim: Claim, running: list[EpisodeRecord], *, takes_work: bool = True) -> None:
        """Hold a claim won or adopted and give it to a worker; ``takes_work`` False (a claim
        adopted while we drain or are sick): release it instead."""
        self.holdings.hold(claim, running)
        for record in running:
            self.metrics.attempt_started(record)
        if not takes_work:
            self._release(claim, f"released by host {self.host}, which takes no work")
            return
        if not self._worker_for(len(running)):
            # Claims follow idle() and ahead(), so no claim should get here; one that does goes
            # back to the queue with its next commit, spending no attempt, rather than end the
            # loop (a single from a look-ahead slot once did, and its lease's end cost it one).
            log.error("no worker can take claim %s (%d episodes): releasing it", claim.claim_id, len(running))
            self._release(claim, f"no worker of host {self.host} was free for it")
            return
        # the token names where its artifacts go: a fenced-off owner's land where nothing reads them
        self.pool.dispatch([WorkItem(r.id, r.attempt, r.spec, r.history[-1].batch, claim.token) for r in running])

    def _release(self, claim: Claim, reason: str) -> None:
        """A claim held that goes back to the queue with its commit (no attempt spent), due at once."""
        self.holdings.unrunnable(claim.claim_id, time.time(), reason)
        self._wake()


def summary(ids: list[str]) -> str:
    return ", ".join(ids) if len(ids) <= 3 else f"{len(ids)} episodes ({ids[0]} ... {ids[-1]})"
