"""Retention of wide batches, on both registry backends: a group record whose deletes do not
fit one txn (etcd's 128 ops) goes in several, its members' keys first."""

from __future__ import annotations

import time

import pytest

from openrange_mesh.client.client import MeshClient
from openrange_mesh.ids import IdAllocator
from openrange_mesh.ledger.ledger import Ledger
from openrange_mesh.ledger.records import finish_attempt
from openrange_mesh.ledger.retention import collect, collect_garbage
from openrange_mesh.model import EpisodeRecord, EpisodeSpec, State
from openrange_mesh.registry import Put, Registry

from .helpers import take


def finished_batch(registry: Registry, ledger: Ledger, n: int, keyed: bool) -> list[str]:
    """A batch of ``n`` submitted, run and committed; returns its ids."""
    _, ids = IdAllocator(registry, ledger.keys, "cl").next_group(n)
    specs = [EpisodeSpec(runtime="sleep", batch=n, idempotency_key=f"k{i}" if keyed else None) for i in range(n)]
    ledger.submit(
        [EpisodeRecord(id=i, spec=s, created_at=time.time(), submitter="cl") for i, s in zip(ids, specs, strict=True)]
    )
    claim, running = take(ledger, "h1", registry.grant(5), ids)
    assert ledger.commit(claim, [finish_attempt(r, State.SUCCEEDED, time.time(), None) for r in running], last=True)
    return ids


@pytest.mark.parametrize(("width", "keyed"), [(250, False), (120, True)], ids=["250", "120-keyed"])
def test_an_acked_wide_group_is_collected_with_every_key_of_its_members(
    registry: Registry, ledger: Ledger, width: int, keyed: bool
) -> None:
    """A group of 250 (251 deletes with its cancel keys), or of 120 under idempotency keys
    (241), was one txn past etcd's limit: refused, and the leader's sweep stuck on it."""
    ids = finished_batch(registry, ledger, width, keyed)
    registry.txn([], [Put(ledger.keys.cancel(ids[7]), b"cl")])  # a cancel that came too late
    with MeshClient(registry, namespace=ledger.keys.namespace) as client:
        client.ack(ids)
        assert collect_garbage(registry, ledger.keys, retention=0) == width
    assert registry.range(ledger.keys.episodes()).kvs == []
    assert registry.range(ledger.keys.cancels()).kvs == []
    assert registry.range(ledger.keys.idempotency("")).kvs == []


def test_a_wide_group_acked_again_while_collected_is_left_for_next_time(registry: Registry, ledger: Ledger) -> None:
    """Each of its txns compares the group unchanged: one rewritten since it was read (acked
    again) is left whole, its records and idempotency keys readable, and judged next time."""
    ids = finished_batch(registry, ledger, 120, keyed=True)
    with MeshClient(registry, namespace=ledger.keys.namespace) as client:
        client.ack(ids)
        (kv,) = registry.range(ledger.keys.episodes()).kvs
        registry.txn([], [Put(kv.key, kv.value)])  # rewritten, as an ack rewrites it
        assert collect(registry, ledger.keys, [kv], cutoff=time.time()) == 0
        assert len(ledger.read(ids)) == 120
        assert collect_garbage(registry, ledger.keys, retention=0) == 120
    assert registry.range(ledger.keys.idempotency("")).kvs == []
