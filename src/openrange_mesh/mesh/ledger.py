"""The episode state machine as etcd transactions, written once above the registry seam.

Every transition is one txn whose compares make it safe to race:

* submit   (none)    -> pending    compare: idempotency keys absent
* claim    pending   -> running    compare: records unchanged since queued (a claim or a cancel
                                   of a pending episode rewrites it with its queue entry)
* start    (none)    -> running    submit and claim in one txn (single-host service)
* commit   running   -> terminal, or pending (retry)
                                   compare: claim key create_revision == token (fencing), records
                                   unchanged since the claim (not requeued or cancelled)
* requeue  running   -> pending (attempt + 1), lost (attempts spent), cancelled (cancel asked)
                                   compare: claim key absent, records unchanged since read
* cancel   pending   -> cancelled  compare: queue key present, record unchanged

The fencing token of a claim is the create_revision of its claim key
(``claims/<host>/<claim id>``, bound to the owner's lease): the revision of the claim txn. Lease
expiry deletes the key, a new claim creates a key with a new revision, so a stale owner's commit
always fails its compare inside etcd, whatever the owner believes about its lease.

Transitions take many episodes at once (batches) but never more than fit one txn: etcd's default
``--max-txn-ops`` is 128 per branch and its request limit 1.5 MiB.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ..errors import CorruptRecord
from ..keys import Keys
from ..model import Attempt, EpisodeRecord, State, decode_or_none, pack, unpack
from ..registry import Compare, Delete, Get, KeyValue, Op, Put, Registry

MAX_TXN_OPS = 128
MAX_TXN_BYTES = 1024 * 1024  # leave headroom under etcd's 1.5 MiB for base64 and JSON


@dataclass(frozen=True, slots=True)
class Claim:
    """What an owner holds: running records it may commit while its claim key lives."""

    host: str
    claim_id: str
    token: int  # create_revision of the claim key == the claim txn's revision
    lease: int
    episode_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Versioned:
    """A decoded record and the mod_revision it was read at (what a txn compares against)."""

    record: EpisodeRecord
    mod_revision: int


def chunks(
    encoded: Sequence[tuple[EpisodeRecord, bytes]], size: int, *, copies: int = 1
) -> Iterable[Sequence[tuple[EpisodeRecord, bytes]]]:
    """Split (record, its bytes) pairs by count and by size (each record written ``copies``
    times), so no txn exceeds etcd's limits."""
    batch: list[tuple[EpisodeRecord, bytes]] = []
    nbytes = 0
    for item in encoded:
        item_bytes = len(item[1]) * copies
        if batch and (len(batch) >= size or nbytes + item_bytes > MAX_TXN_BYTES):
            yield batch
            batch, nbytes = [], 0
        batch.append(item)
        nbytes += item_bytes
    if batch:
        yield batch


class Ledger:
    def __init__(self, registry: Registry, keys: Keys, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.keys = keys
        self.clock = clock

    # --- submit ---------------------------------------------------------------------------

    def submit(self, records: Sequence[EpisodeRecord]) -> tuple[dict[str, str], int]:
        """Write pending records (one txn per batch). Returns ({idempotency key: existing id}
        for keys that were already taken, so those records were not written; last revision)."""
        existing: dict[str, str] = {}
        revision = 0
        encoded = [(r, r.to_bytes()) for r in records]  # once: sizing and writing both need it
        for batch in chunks(encoded, MAX_TXN_OPS // 3, copies=2):
            taken, revision = self._submit_batch(batch)
            existing.update(taken)
        return existing, revision

    def _submit_batch(self, batch: Sequence[tuple[EpisodeRecord, bytes]]) -> tuple[dict[str, str], int]:
        taken: dict[str, str] = {}
        while True:
            todo = [(r, data) for r, data in batch if r.spec.idempotency_key not in taken]
            if not todo:
                return taken, 0
            idem = [self.keys.idempotency(r.spec.idempotency_key) for r, _ in todo if r.spec.idempotency_key]
            ops: list[Op] = []
            for record, data in todo:
                ops += _enqueue(self.keys, record, data)
                if record.spec.idempotency_key:
                    ops.append(Put(self.keys.idempotency(record.spec.idempotency_key), record.id.encode()))
            result = self.registry.txn(
                [Compare(k, "create", "==", 0) for k in idem], ops, [Get(k) for k in idem]
            )
            if result.succeeded:
                return taken, result.revision
            for kvs in result.responses:
                for kv in kvs:
                    taken[self.keys.name_of(kv.key, self.keys.idempotency(""))] = kv.value.decode()

    # --- claim / start --------------------------------------------------------------------

    def claim(
        self, host: str, lease: int, candidates: Sequence[Versioned], extra: Sequence[Op] = ()
    ) -> tuple[Claim, list[EpisodeRecord]] | None:
        """Take pending episodes as one claim; return it with the running records as written.
        None when another host won any of them: the caller re-reads the queue and tries again."""
        now = self.clock()
        claim_id = f"{candidates[0].record.id}.{candidates[0].record.attempt}"
        compares: list[Compare] = []
        ops: list[Op] = []
        batch = claim_id if len(candidates) > 1 else None
        running = [_running(v.record, host, claim_id, now, batch) for v in candidates]
        for v, record in zip(candidates, running, strict=True):
            # The record's revision is enough: every txn that removes a queue entry (a claim, a
            # pending cancel) rewrites the record in the same txn.
            compares.append(Compare(self.keys.episode(v.record.id), "mod", "==", v.mod_revision))
            ops += [Delete(self.keys.queued(v.record.id)), Put(self.keys.episode(v.record.id), record.to_bytes())]
        ids = tuple(v.record.id for v in candidates)
        ops.append(Put(self.keys.claim(host, claim_id), pack(list(ids)), lease=lease))
        result = self.registry.txn(compares, [*ops, *extra])
        if not result.succeeded:
            return None
        return Claim(host, claim_id, result.revision, lease, ids), running

    def start(self, host: str, lease: int, records: Sequence[EpisodeRecord]) -> tuple[Claim, list[EpisodeRecord]]:
        """Create records already running under a claim of ``host`` (no queue round trip)."""
        now = self.clock()
        claim_id = f"{records[0].id}.{records[0].attempt}"
        batch = claim_id if len(records) > 1 else None
        running = [_running(r, host, claim_id, now, batch) for r in records]
        ops: list[Op] = [Put(self.keys.episode(r.id), r.to_bytes()) for r in running]
        ids = tuple(r.id for r in records)
        ops.append(Put(self.keys.claim(host, claim_id), pack(list(ids)), lease=lease))
        result = self.registry.txn([Compare(self.keys.episode(r.id), "create", "==", 0) for r in records], ops)
        if not result.succeeded:
            raise ValueError(f"episode id collision among {ids[0]}...: ids must be fresh")
        return Claim(host, claim_id, result.revision, lease, ids), running

    # --- commit ---------------------------------------------------------------------------

    def commit(
        self, claim: Claim, finals: Sequence[EpisodeRecord], *, last: bool, extra: Sequence[Op] = (),
        cancelled: Iterable[str] = (),
    ) -> bool:
        """Fenced write of the outcomes of some of ``claim``'s episodes. ``last`` says these are
        the claim's final open episodes, so the claim key goes too. False: fenced off (the claim
        expired, was requeued, or an episode changed under us): nothing was written. ``extra``
        ops ride along (the owner's host record), costing no extra revision. ``cancelled``: ids
        whose cancel marker the owner saw, deleted here (a marker that arrives too late to be
        seen is deleted with its record by retention)."""
        compares = [Compare(self.keys.claim(claim.host, claim.claim_id), "create", "==", claim.token)]
        ops: list[Op] = []
        markers = set(cancelled)
        for record in finals:
            compares.append(Compare(self.keys.episode(record.id), "mod", "==", claim.token))
            if record.id in markers:
                ops.append(Delete(self.keys.cancel(record.id)))
            if record.state is State.PENDING:
                ops += _enqueue(self.keys, record)
            else:
                ops.append(Put(self.keys.episode(record.id), record.to_bytes()))
        if last:
            ops.append(Delete(self.keys.claim(claim.host, claim.claim_id)))
        return self.registry.txn(compares, [*ops, *extra]).succeeded

    # --- requeue / cancel -----------------------------------------------------------------

    def read(self, episode_ids: Sequence[str]) -> dict[str, Versioned]:
        """Read records in one round trip (a read-only txn). Corrupt records are skipped."""
        out: dict[str, Versioned] = {}
        for start in range(0, len(episode_ids), MAX_TXN_OPS):
            gets: list[Op] = [Get(self.keys.episode(i)) for i in episode_ids[start : start + MAX_TXN_OPS]]
            for kvs in self.registry.txn([], gets).responses:
                for kv in kvs:
                    record = decode_or_none(EpisodeRecord.from_bytes, kv.value, kv.key)
                    if record is not None:
                        out[record.id] = Versioned(record, kv.mod_revision)
        return out

    def requeue(self, host: str, claim_id: str, episode_ids: Sequence[str], reason: str) -> list[str]:
        """Put back the episodes of a claim whose key is gone (its owner's lease expired, or the
        owner released it). Idempotent: episodes no longer running under that claim are left
        alone, and a racing peer's requeue makes ours fail its compares. Returns requeued ids."""
        claim_key = self.keys.claim(host, claim_id)
        current = self.read(episode_ids)
        mine = [v for v in current.values()
                if v.record.state is State.RUNNING and v.record.claim == claim_id and v.record.owner == host]
        if not mine:
            return []
        cancelled = self._cancel_requested([v.record.id for v in mine])
        now = self.clock()
        compares = [Compare(claim_key, "create", "==", 0)]
        ops: list[Op] = []
        for v in mine:
            compares.append(Compare(self.keys.episode(v.record.id), "mod", "==", v.mod_revision))
            record = _requeued(v.record, now, reason, cancel=v.record.id in cancelled)
            if record.state is State.PENDING:
                ops += _enqueue(self.keys, record)
            else:
                ops += [Put(self.keys.episode(record.id), record.to_bytes()), Delete(self.keys.cancel(record.id))]
        if not self.registry.txn(compares, ops).succeeded:
            return []  # a peer got there first, or the claim came back: both fine
        return [v.record.id for v in mine]

    def cancel_pending(self, versioned: Versioned) -> bool:
        """Cancel an episode still in the queue. False: it was claimed (or changed) meanwhile."""
        record = versioned.record.replace(state=State.CANCELLED, finished_at=self.clock(), error="cancelled")
        result = self.registry.txn(
            [Compare(self.keys.queued(record.id), "version", ">", 0),
             Compare(self.keys.episode(record.id), "mod", "==", versioned.mod_revision)],
            [Delete(self.keys.queued(record.id)), Put(self.keys.episode(record.id), record.to_bytes())],
        )
        return result.succeeded

    def request_cancel(self, episode_id: str) -> None:
        """Ask the owner of a running episode to stop it; the owner commits ``cancelled``."""
        self.registry.txn([], [Put(self.keys.cancel(episode_id), b"")])

    def _cancel_requested(self, episode_ids: Sequence[str]) -> set[str]:
        result = self.registry.txn([], [Get(self.keys.cancel(i)) for i in episode_ids[:MAX_TXN_OPS]])
        return {self.keys.name_of(kv.key, self.keys.cancels()) for kvs in result.responses for kv in kvs}


def _enqueue(keys: Keys, record: EpisodeRecord, data: bytes | None = None) -> list[Op]:
    """A pending record and its queue entry, written together (so they share a mod_revision).
    The entry is a compact header, enough to choose a group to claim; agents read the records
    of the group they chose. (Carrying whole records in the queue would make etcd send every
    pending record to every agent: fan-out that grows with the mesh.)"""
    data = record.to_bytes() if data is None else data
    header = pack([record.spec.batch, record.submitter or ""])
    return [Put(keys.episode(record.id), data), Put(keys.queued(record.id), header)]


@dataclass(frozen=True, slots=True)
class QueueEntry:
    episode_id: str
    batch: int
    submitter: str
    mod_revision: int  # equals the pending record's mod_revision (written in one txn)


def queue_entry(keys: Keys, kv: KeyValue) -> QueueEntry:
    """Decode a queue entry; an undecodable header reads as an unbatched entry (the claim
    reads the record itself anyway)."""
    episode_id = keys.name_of(kv.key, keys.queue())
    try:
        batch, submitter = unpack(kv.value)
        return QueueEntry(episode_id, int(batch), str(submitter), kv.mod_revision)
    except (CorruptRecord, TypeError, ValueError):
        return QueueEntry(episode_id, 1, "", kv.mod_revision)


def claim_episode_ids(kv: KeyValue) -> list[str]:
    """The episode ids a claim key lists (tolerant: a corrupt claim lists nothing)."""
    try:
        value = unpack(kv.value)
    except Exception:
        return []
    return [str(i) for i in value] if isinstance(value, list) else []


def _running(record: EpisodeRecord, host: str, claim_id: str, now: float, batch: str | None) -> EpisodeRecord:
    return record.replace(
        state=State.RUNNING, owner=host, claim=claim_id, started_at=now, error=None,
        history=(*record.history, Attempt(record.attempt, host, now, batch=batch)),
    )


def finish_attempt(record: EpisodeRecord, state: State, now: float, error: str | None,
                   result: dict[str, object] | None = None) -> EpisodeRecord:
    """Close the current attempt. A ``PENDING`` state means "retry": attempt + 1, back in the queue."""
    last = record.history[-1] if record.history else Attempt(record.attempt, record.owner or "?", now)
    outcome = "retried" if state is State.PENDING else state.value
    closed = Attempt(last.n, last.host, last.started_at, now, outcome, error, last.batch)
    history = (*record.history[:-1], closed)
    if state is State.PENDING:
        return record.replace(state=State.PENDING, attempt=record.attempt + 1, owner=None, claim=None,
                              started_at=None, error=error, history=history)
    return record.replace(state=state, finished_at=now, error=error, result=result, claim=None, history=history)


def _requeued(record: EpisodeRecord, now: float, reason: str, *, cancel: bool) -> EpisodeRecord:
    if cancel:
        return finish_attempt(record, State.CANCELLED, now, f"cancelled ({reason})")
    if record.attempt >= record.spec.max_attempts:
        return finish_attempt(record, State.LOST, now, f"{reason}; all {record.spec.max_attempts} attempts spent")
    return finish_attempt(record, State.PENDING, now, reason)
