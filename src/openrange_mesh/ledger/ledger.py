"""The episode state machine as etcd transactions, written once above the registry seam.

Every transition is one txn whose compares make it safe to race:

* submit   (none)    -> pending    compare: idempotency keys absent
* claim    pending   -> running    compare: records unchanged since queued (a claim or a cancel
                                   of a pending episode rewrites it with its queue entry)
                                   (records unchanged: the mod_revision of the key each was read
                                   from: its own, or its batch's group record, homes.py)
* start    (none)    -> running    submit and claim in one txn (single-host service)
* commit   running   -> terminal, or pending (retry)
                                   compare: claim key create_revision == token (fencing), records
                                   unchanged since the claim (not requeued or cancelled)
* requeue  running   -> pending (attempt + 1), lost (attempts spent), cancelled (cancel asked)
                                   compare: claim key absent, records unchanged since read
* cancel   pending   -> cancelled  compare: queue key present, record unchanged
* move     pending   -> pending    compare: queue key and records unchanged (the leader moves an
                                   entry out of a mailbox nobody empties, agent/mover.py)

The fencing token of a claim is the create_revision of its claim key
(``claims/<host>/<claim id>``, bound to the owner's lease): the revision of the claim txn. Lease
expiry deletes the key, a new claim creates a key with a new revision, so a stale owner's commit
always fails its compare inside etcd, whatever the owner believes about its lease.

Transitions take many episodes at once (batches) but never more than fit one txn: etcd's default
``--max-txn-ops`` is 128 per branch and its request limit 1.5 MiB.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from ..errors import TooLarge
from ..keys import Keys
from ..model import EpisodeRecord, State, pack
from ..registry import Compare, Delete, Get, KeyValue, Op, Put, Registry, Txn, TxnResult
from . import homes
from .claims import Claim, Settlement
from .homes import Home, Versioned, rewrite
from .placement import Place, unowned
from .queue import (
    QueueEntry,
    decode_entry,
    entry_ops,
    entry_put,
    rewrite_ops,
)
from .records import claim_episode_ids, held_by, requeued, start_attempt, start_together
from .txns import PART_OPS, Enqueued, closing, requests, txn_chunks

log = logging.getLogger(__name__)

# A claim's outcome: won, the entry as it stood when the claim lost to its records, or None (``claim``)
Claimed = tuple[Claim, list[EpisodeRecord]] | QueueEntry | None


class Ledger:
    def __init__(
        self, registry: Registry, keys: Keys, clock: Callable[[], float] = time.time, place: Place = unowned
    ) -> None:
        self.registry = registry
        self.keys = keys
        self.clock = clock
        self.place = place  # the mailbox each queue entry we write goes to (ledger/placement.py)

    # --- submit ---------------------------------------------------------------------------

    def submit(self, records: Sequence[EpisodeRecord], after: Sequence[Op] = ()) -> tuple[dict[str, str], int, int]:
        """Write pending records with their queue entries, in txns within etcd's limits.
        Returns ({idempotency key: existing id} for keys already taken, whose records were not
        written; the first and the last txn's revision, 0 if none wrote). Txns start small and
        double, each encoded while the one before is sent: agents start on the first while the
        rest is encoded and sent. ``after`` ops ride on the last txn (a client's queued marker:
        idle hosts steal once every host's share is in, not from the hosts the first txn
        reached while their own shares are on the way)."""
        existing: dict[str, str] = {}
        first = last = 0
        chunks = txn_chunks(self.keys, homes.claimable(self.keys, records), self.place)
        # only what rides on the last txn needs to know it: a look ahead delays the first
        for chunk, final in closing(chunks, len(after)) if after else ((c, False) for c in chunks):
            taken, written = self._submit_chunk(chunk, after if final else ())
            existing.update(taken)
            first, last = first or written, written or last
        return existing, first, last

    def _submit_chunk(self, chunk: Sequence[Enqueued], extra: Sequence[Op]) -> tuple[dict[str, str], int]:
        taken: dict[str, str] = {}
        todo = list(chunk)
        while todo:
            idem = [
                self.keys.idempotency(r.spec.idempotency_key) for g in todo for r in g.records if r.spec.idempotency_key
            ]
            ops: list[Op] = list(extra)
            for group in todo:
                if group.home is not None:  # one key for the batch's records
                    ops += [Put(group.home, group.values[0]), entry_put(self.keys, group.records, group.values)]
                else:
                    ops += entry_ops(self.keys, group.records, group.values)
                ops += [
                    Put(self.keys.idempotency(r.spec.idempotency_key), r.id.encode())
                    for r in group.records
                    if r.spec.idempotency_key
                ]
            result = self.registry.txn([Compare(k, "create", "==", 0) for k in idem], ops, [Get(k) for k in idem])
            if result.succeeded:
                return taken, result.revision
            for kvs in result.responses:
                for kv in kvs:
                    taken[self.keys.name_of(kv.key, self.keys.idempotency(""))] = kv.value.decode()
            # the groups without the records whose keys were taken, named and encoded afresh
            kept = ([r for r in g.records if r.spec.idempotency_key not in taken] for g in todo)
            todo = [Enqueued.of(self.keys, g, self.place) for g in kept if g]
        # nothing of the chunk to write (the last txn had no room for ``extra``, or every record's
        # idempotency key was taken, as when a client retries a submission that died before its
        # last txn): what rides on it still goes
        return taken, self.registry.txn([], list(extra)).revision if extra else 0

    def queue(self, limit: int = 0) -> list[QueueEntry]:
        """The queue's entries (the first ``limit`` in key order: by mailbox), oldest first
        (agents keep theirs from a watch instead)."""
        kvs = self.registry.range(self.keys.queue(), limit=limit).kvs
        return sorted((e for e in (decode_entry(self.keys, kv) for kv in kvs) if e is not None), key=lambda e: e.name)

    # --- claim / start --------------------------------------------------------------------

    def claim(
        self, host: str, lease: int, entry: QueueEntry, records: Mapping[str, Versioned], extra: Sequence[Op] = ()
    ) -> Claimed:
        """Take a queue entry's pending episodes as one claim; return it with the running
        records as written. ``records`` are the entry's records as just read. None when the
        entry changed (another host claimed it, or a cancel took an episode out of it); the
        entry itself when it lost while the entry stood as it was (the failure branch reads
        it): its records changed since read (an ack rewrote a finished member of their group),
        which brings the entry's owner no watch event; a claim with them read again may win."""
        parts = self._claim_parts(host, lease, entry, records)
        if parts is None:
            return None
        txn, made = parts
        return made(self.registry.txn(txn.compares, [*txn.success, *extra], txn.failure))

    def _claim_parts(
        self, host: str, lease: int, entry: QueueEntry, records: Mapping[str, Versioned]
    ) -> tuple[Txn, Callable[[TxnResult], Claimed]] | None:
        current = [records[i] for i in entry.ids if i in records and records[i].record.state is State.PENDING]
        if len(current) < len(entry.ids):
            log.warning("queue entry %s lists episodes that are not pending; claiming the rest", entry.name)
        if not current:
            return None
        now = self.clock()
        claim_id = entry.name
        batch = claim_id if len(current) > 1 else None
        running = [start_attempt(v.record, host, claim_id, now, batch) for v in current]
        change = rewrite(self.keys, [(r, v.home) for r, v in zip(running, current, strict=True)])
        queued = self.keys.queued(entry.path)
        compares = [Compare(queued, "mod", "==", entry.mod_revision), *homes.compares(self.keys, current)]
        ops: list[Op] = [Delete(queued), *change.ops]
        ids = tuple(r.id for r in running)
        ops.append(Put(self.keys.claim(host, claim_id), pack(list(ids)), lease=lease))
        groups_read = {v.home.key: v.home for v in current if v.home is not None}

        def made(result: TxnResult) -> Claimed:
            if not result.succeeded:  # lost: to a change of the entry, or of its records only
                stood = any(kv.mod_revision == entry.mod_revision for kvs in result.responses for kv in kvs)
                return entry if stood else None
            claimed = {key: Home(key, result.revision, change.homes[key]) for key in groups_read}
            return Claim(host, claim_id, result.revision, lease, ids, claimed), running

        return Txn(compares, ops, [Get(queued)]), made

    def start(self, host: str, lease: int, records: Sequence[EpisodeRecord]) -> tuple[Claim, list[EpisodeRecord]]:
        """Create records already running under a claim of ``host`` (no queue round trip)."""
        claim_id, running = start_together(records, host, self.clock())
        ops: list[Op] = [Put(self.keys.episode(r.id), r.to_bytes()) for r in running]
        ids = tuple(r.id for r in records)
        ops.append(Put(self.keys.claim(host, claim_id), pack(list(ids)), lease=lease))
        result = self.registry.txn([Compare(self.keys.episode(r.id), "create", "==", 0) for r in records], ops)
        if not result.succeeded:
            raise ValueError(f"episode id collision among {ids[0]}...: ids must be fresh")
        return Claim(host, claim_id, result.revision, lease, ids), running

    # --- commit ---------------------------------------------------------------------------

    def commit(
        self,
        claim: Claim,
        finals: Sequence[EpisodeRecord],
        *,
        last: bool,
        cancelled: Iterable[str] = (),
    ) -> bool:
        """Fenced write of the outcomes of some of ``claim``'s episodes. ``last`` says these are
        the claim's final open episodes, so the claim key goes too. False: fenced off (the claim
        expired, was requeued, or an episode changed under us): nothing was written.
        ``cancelled``: ids whose cancel marker the owner saw, deleted here (a marker that
        arrives too late to be seen is deleted with its record by retention)."""
        markers = set(cancelled)
        for chunk, ends in self._chunks(claim, finals, last, markers):
            compares, ops, landed = self._commit_parts(claim, chunk, ends, markers)
            result = self.registry.txn(compares, ops)
            if not result.succeeded:
                return False  # earlier chunks may have landed: the owner's resync finds out which
            landed(result.revision)
        return True

    def _chunks(
        self, claim: Claim, finals: Sequence[EpisodeRecord], last: bool, markers: set[str]
    ) -> list[tuple[list[EpisodeRecord], bool]]:
        """A commit cut into txns of at most ``PART_OPS`` ops, in order, only the final one
        ending the claim. A member's result costs nothing but its share of its group's value;
        what costs an op each: a record under its own key (its compare and put), a cancel marker
        deleted, a pending record's own put and its share of a queue entry. Pending members
        that stay home (the claim ends) go in the final txn, where they cost nothing."""
        in_group = {r.id for h in claim.homes.values() for r in h.records}
        staying = [r for r in finals if last and r.state is State.PENDING and r.id in in_group]
        chunks: list[list[EpisodeRecord]] = [[]]
        used = 0
        for record in finals:
            if staying and record.state is State.PENDING and record.id in in_group:
                continue
            cost = (record.id not in in_group) + (record.id in markers) + 2 * (record.state is State.PENDING)
            if chunks[-1] and used + cost > PART_OPS:
                chunks.append([])
                used = 0
            chunks[-1].append(record)
            used += cost
        chunks[-1] += staying
        return [(chunk, last and i == len(chunks) - 1) for i, chunk in enumerate(chunks)]

    def settle(
        self,
        commits: Sequence[Settlement],
        claims: Sequence[tuple[QueueEntry, Mapping[str, Versioned]]] = (),
        *,
        host: str = "",
        lease: int = 0,
        extra: Sequence[Op] = (),
    ) -> tuple[list[bool], list[Claimed]]:
        """Commit several claims' results and take queue entries for the workers they free, in
        one round trip: each commit and each claim is a txn nested in one txn, with its own
        compares, so fencing is unchanged and one fenced claim or one lost claim race holds
        nothing else back. Returns (committed per settlement, per entry what ``claim`` returns).
        Parts that together exceed etcd's ops limit go in as many requests as it takes
        (``_requests``); a request etcd finds too large goes again one part per request.
        ``extra`` ops (the owner's host record) go in the first request, outside every part's
        compares, or alone: written whatever the compares say (the caller hands them over once)."""
        parts: list[Txn] = []
        landings: list[Callable[[int], None] | bool] = []  # per commit: what to do once it lands, or its outcome
        for item in commits:
            if len(self._chunks(item.claim, item.finals, item.last, set(item.cancelled))) > 1:
                # too wide for one nested txn (a rare commit: many cancels or retries at once)
                landings.append(self.commit(item.claim, item.finals, last=item.last, cancelled=item.cancelled))
                continue
            compares, ops, landed = self._commit_parts(item.claim, item.finals, item.last, item.cancelled)
            parts.append(Txn(compares, ops))
            landings.append(landed)
        makers: list[Callable[[TxnResult], Claimed] | None] = []
        for entry, records in claims:
            claim_parts = self._claim_parts(host, lease, entry, records)
            makers.append(claim_parts[1] if claim_parts else None)
            if claim_parts:
                parts.append(claim_parts[0])
        outcomes: list[TxnResult] = []  # per part
        # with no part, ``extra`` still goes (a host record the caller will not write again)
        for index, request in enumerate(requests(parts, len(extra)) or ([[]] if extra else [])):
            outcomes += self._send(request, extra if index == 0 else ())
        landed_at = iter(outcomes)
        oks: list[bool] = []
        for landing in landings:
            if isinstance(landing, bool):
                oks.append(landing)
                continue
            outcome = next(landed_at)
            oks.append(outcome.succeeded)
            if outcome.succeeded:
                landing(outcome.revision)
        return oks, [maker(next(landed_at)) if maker is not None else None for maker in makers]

    def _send(self, parts: Sequence[Txn], extra: Sequence[Op]) -> list[TxnResult]:
        try:
            result = self.registry.txn([], [*parts, *extra])
        except TooLarge:  # big specs: etcd's request limit, not the ops limit, binds first
            if len(parts) == 1:
                raise
            return [outcome for i, part in enumerate(parts) for outcome in self._send([part], extra if i == 0 else ())]
        return result.nested[: len(parts)]  # each at the request's revision

    def _commit_parts(
        self, claim: Claim, finals: Sequence[EpisodeRecord], last: bool, cancelled: Iterable[str]
    ) -> tuple[list[Compare], list[Op], Callable[[int], None]]:
        """The commit's compares and ops, and what to do once they land (our groups' new state)."""
        compares = [Compare(self.keys.claim(claim.host, claim.claim_id), "create", "==", claim.token)]
        ops: list[Op] = []
        markers = set(cancelled)
        changes: list[tuple[EpisodeRecord, Home | None]] = []
        touched: dict[bytes, Home] = {}
        home_of = {r.id: h for h in claim.homes.values() for r in h.records}  # one pass, not one per final
        for record in finals:
            home = home_of.get(record.id)
            if home is None:
                compares.append(Compare(self.keys.episode(record.id), "mod", "==", claim.token))
            else:
                touched[home.key] = home
            changes.append((record, home))
            if record.id in markers:
                ops.append(Delete(self.keys.cancel(record.id)))
        compares += [Compare(h.key, "mod", "==", h.mod_revision) for h in touched.values()]
        change = rewrite(self.keys, changes, claim_ends=last, place=self.place)
        ops += change.ops
        if last:
            ops.append(Delete(self.keys.claim(claim.host, claim.claim_id)))
        return compares, ops, lambda revision: change.landed(touched.values(), revision)

    # --- requeue / cancel -----------------------------------------------------------------

    def read(self, episode_ids: Sequence[str]) -> dict[str, Versioned]:
        """Read records where they live, in one round trip (a read-only txn) per 128 keys.
        Corrupt records are skipped."""
        return homes.read(self.registry, self.keys, episode_ids)

    def adopt(self, kv: KeyValue) -> tuple[Claim, list[EpisodeRecord]] | None:
        """A claim key of ours that we do not hold (its claim txn's answer was lost): the claim
        and its running records, if every episode it lists is still running under it."""
        host, _, claim_id = self.keys.name_of(kv.key, self.keys.claims()).partition("/")
        ids = claim_episode_ids(kv)
        current = self.read(ids)
        running = [current[i] for i in ids if i in current and held_by(current[i].record, host, claim_id)]
        if not ids or len(running) < len(ids):
            return None
        held = {v.home.key: v.home for v in running if v.home is not None}
        return Claim(host, claim_id, kv.create_revision, kv.lease, tuple(ids), held), [v.record for v in running]

    def still_held(self, claim: Claim, episode_ids: Sequence[str]) -> set[str]:
        """Which of a live claim's episodes are still running under it: a commit of ours that
        was answered with failure, or not at all, may have landed, or its groups may have been
        rewritten by someone else (an ack of a finished member). Refreshes the claim's groups."""
        current = self.read(episode_ids)
        for versioned in current.values():
            if versioned.home is not None and versioned.home.key in claim.homes:
                claim.homes[versioned.home.key] = versioned.home
        return {i for i, v in current.items() if held_by(v.record, claim.host, claim.claim_id)}

    def requeue(
        self, host: str, claim_id: str, episode_ids: Sequence[str], reason: str, token: int | None = None
    ) -> list[str]:
        """Put back the episodes of a claim whose key is gone (its owner's lease expired, or the
        owner released it). Idempotent: episodes no longer running under that claim are left
        alone, and a racing peer's requeue makes ours fail its compares. Returns requeued ids.
        ``token``: the claim's fencing token, recorded in the attempts it closes, if known."""
        claim_key = self.keys.claim(host, claim_id)
        current = self.read(episode_ids)
        mine = [
            v
            for v in current.values()
            if v.record.state is State.RUNNING and v.record.claim == claim_id and v.record.owner == host
        ]
        if not mine:
            return []
        cancelled = self.cancel_requested([v.record.id for v in mine])
        now = self.clock()
        compares = [Compare(claim_key, "create", "==", 0), *homes.compares(self.keys, mine)]
        # The claim is over: pending members stay in their group, one op for all of them.
        # Markers past what fits are left to retention, which deletes them with their records.
        room = PART_OPS - sum(1 for v in mine if v.home is None)
        ops: list[Op] = [Delete(self.keys.cancel(i)) for i in sorted(cancelled)[: max(room, 0)]]
        changes = [
            (requeued(v.record, now, reason, cancel=v.record.id in cancelled, token=token), v.home) for v in mine
        ]
        ops += rewrite(self.keys, changes, claim_ends=True, place=self.place).ops
        if not self.registry.txn(compares, ops).succeeded:
            return []  # a peer got there first, or the claim came back: both fine
        return [v.record.id for v in mine]

    def cancel_pending(self, versioned: Versioned) -> bool:
        """Cancel an episode still in the queue: out of its entry, record cancelled, in one txn.
        False: it was claimed (or its entry changed) meanwhile; read again and retry."""
        record = versioned.record
        entry_kv = self.registry.get(self.keys.queued(record.queue))[0] if record.queue else None
        entry = decode_entry(self.keys, entry_kv) if entry_kv is not None else None
        if entry is None or record.id not in entry.ids:
            return False
        cancelled = record.replace(state=State.CANCELLED, finished_at=self.clock(), error="cancelled", queue=None)
        result = self.registry.txn(
            [
                Compare(self.keys.queued(entry.path), "mod", "==", entry.mod_revision),
                *homes.compares(self.keys, [versioned]),
            ],
            [
                *rewrite_ops(self.keys, entry, entry.without(record.id)),
                *rewrite(self.keys, [(cancelled, versioned.home)]).ops,
            ],
        )
        return result.succeeded

    def move(self, entry: QueueEntry) -> bool:
        """Move an entry to the mailbox ``place`` picks now, its pending records naming the new
        path (so a cancel finds it), all in one txn. False: it changed meanwhile (claimed,
        stolen, cancelled from, moved): whoever changed it has it; or ``place`` picks the
        mailbox it is in."""
        target = self.place(entry.name)
        if target == entry.owner:
            return False
        current = self.read(entry.ids)
        pending = [current[i] for i in entry.ids if i in current and current[i].record.state is State.PENDING]
        compares = [Compare(self.keys.queued(entry.path), "mod", "==", entry.mod_revision)]
        ops: list[Op] = [Delete(self.keys.queued(entry.path))]
        if pending:  # else the entry only goes: nothing of it is claimable
            compares += homes.compares(self.keys, pending)
            changes = [(v.record, v.home) for v in pending]
            ops += rewrite(self.keys, changes, claim_ends=True, place=lambda _: target).ops
        return self.registry.txn(compares, ops).succeeded

    def request_cancel(self, episode_id: str) -> None:
        """Ask the owner of a running episode to stop it; the owner commits ``cancelled``."""
        self.registry.txn([], [Put(self.keys.cancel(episode_id), b"")])

    def cancel_requested(self, episode_ids: Sequence[str]) -> set[str]:
        """Those of ``episode_ids`` whose cancel markers are there."""
        kvs = homes.get_many(self.registry, [self.keys.cancel(i) for i in episode_ids])
        return {self.keys.name_of(kv.key, self.keys.cancels()) for kv in kvs}
