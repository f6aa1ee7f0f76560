"""Retention: acked finished records older than ``--retention`` are deleted, by the leader a
slice at a time with its sweep (agent/sweeper.py) and by ``openrange-mesh gc`` (client) when
there is none."""

from __future__ import annotations

import time
from collections.abc import Iterable
from functools import partial

from ..keys import Keys
from ..model import EpisodeRecord, acked_by, decode_or_none, decode_records
from ..registry import MAX_TXN_OPS, Compare, Delete, KeyValue, Op, Registry
from .catalog import Catalog


def collect_garbage(registry: Registry, keys: Keys, retention: float, now: float | None = None) -> int:
    """Delete acked finished records older than ``retention`` seconds, with their idempotency
    and cancel keys, streaming the listing (bounded memory), as many per txn as etcd allows. A
    batch's group record goes once all its members may go. Each delete compares its key is
    unchanged. Returns how many records went. Values are judged before they are decoded
    (``acked_by``: a group's header): a mesh keeps a week of records by default, and every
    sweep reads them all."""
    cutoff = (time.time() if now is None else now) - retention
    return collect(registry, keys, (kv for kv, _ in Catalog(registry, keys).scan(keys.episodes(), None)), cutoff)


def collect(registry: Registry, keys: Keys, kvs: Iterable[KeyValue], cutoff: float) -> int:
    """``collect_garbage`` over the values ``kvs`` (records' keys and values, read at any
    revision: each delete compares its key unchanged), those acked at or before ``cutoff``."""
    batch: list[tuple[KeyValue, list[EpisodeRecord]]] = []
    ops = removed = 0
    for kv in kvs:
        if not decode_or_none(partial(acked_by, cutoff=cutoff), kv.value, kv.key):
            continue
        records = decode_or_none(decode_records, kv.value, kv.key)
        if not records or not all(
            r.state.is_terminal and r.acked_at is not None and r.acked_at <= cutoff for r in records
        ):
            continue
        cost = 1 + sum(2 if r.spec.idempotency_key else 1 for r in records)
        if cost > _GC_OPS:  # a wide batch's group record: alone, in as many txns as it takes
            removed += _delete_wide(registry, keys, kv, records)
            continue
        if batch and ops + cost > _GC_OPS:
            removed += _delete(registry, keys, batch)
            batch, ops = [], 0
        batch.append((kv, records))
        ops += cost
    return removed + (_delete(registry, keys, batch) if batch else 0)


_GC_OPS = MAX_TXN_OPS - 8  # deletes per txn


def _delete(registry: Registry, keys: Keys, batch: list[tuple[KeyValue, list[EpisodeRecord]]]) -> int:
    compares = [Compare(kv.key, "mod", "==", kv.mod_revision) for kv, _ in batch]
    ops: list[Op] = [op for kv, records in batch for op in [Delete(kv.key), *_satellites(keys, records)]]
    if registry.txn(compares, ops).succeeded:
        return sum(len(records) for _, records in batch)
    # one of them changed (acked again, say): fall back to one at a time
    return sum(_delete(registry, keys, [item]) for item in batch) if len(batch) > 1 else 0


def _delete_wide(registry: Registry, keys: Keys, kv: KeyValue, records: list[EpisodeRecord]) -> int:
    """One value whose deletes do not fit a txn (a group of over ~120 members, or ~60 with
    idempotency keys): its members' keys in txns that each compare the value unchanged, the
    value with the last. Interrupted, the value stays with some of its keys gone and is
    collected next time; an idempotency key never outlives the record it names."""
    compare = [Compare(kv.key, "mod", "==", kv.mod_revision)]
    satellites = _satellites(keys, records)
    step = _GC_OPS - 1  # room for the value's own delete in the last
    for start in range(0, len(satellites), step):
        last = start + step >= len(satellites)
        ops = satellites[start : start + step] + ([Delete(kv.key)] if last else [])
        if not registry.txn(compare, ops).succeeded:
            return 0  # changed (acked again, say): judged again next time
    return len(records)


def _satellites(keys: Keys, records: list[EpisodeRecord]) -> list[Op]:
    """The keys that go with records: their cancel markers and idempotency keys."""
    ops: list[Op] = []
    for record in records:
        ops.append(Delete(keys.cancel(record.id)))
        if record.spec.idempotency_key:
            ops.append(Delete(keys.idempotency(record.spec.idempotency_key)))
    return ops
