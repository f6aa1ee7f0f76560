"""The registry contract (registry/base.py), run against every backend through the ``registry``
fixture: memory and a real etcd. Each test writes under its own ``prefix``."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest

from openrange_mesh.errors import Compacted, LeaseLost, RegistryError, TooLarge
from openrange_mesh.registry import (
    MAX_REQUEST_BYTES,
    Compare,
    Delete,
    Event,
    Get,
    KeyValue,
    Op,
    Put,
    Registry,
    Txn,
    Watch,
    open_registry,
)
from openrange_mesh.registry.memory import MemoryRegistry

from . import helpers
from .helpers import current_revision, wait_until


def put(registry: Registry, key: bytes, value: bytes, lease: int = 0) -> int:
    """Put ``key`` unconditionally; the write's revision."""
    return registry.txn([], [Put(key, value, lease)]).revision


def kv_of(registry: Registry, key: bytes) -> KeyValue:
    kv = registry.get(key)[0]
    assert kv is not None, f"{key!r} is absent"
    return kv


def collect(watch: Watch, count: int, timeout: float = 5.0) -> list[Event]:
    return helpers.collect(watch, count, timeout)


def summary(events: list[Event]) -> list[tuple[str, bytes, bytes, int]]:
    return [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision) for e in events]


# -- keys, revisions, versions


def test_put_sets_create_and_mod_revision_and_version(registry: Registry, prefix: bytes) -> None:
    key = prefix + b"k"
    assert registry.get(key)[0] is None
    before = current_revision(registry)

    first = put(registry, key, b"v1")
    assert first == before + 1
    kv, read_at = registry.get(key)
    assert kv == KeyValue(key, b"v1", create_revision=first, mod_revision=first, version=1, lease=0)
    assert read_at == first

    second = put(registry, key, b"v2")
    assert second == first + 1
    assert registry.get(key)[0] == KeyValue(key, b"v2", first, second, 2, 0)

    registry.txn([], [Delete(key)])
    assert registry.get(key)[0] is None
    third = put(registry, key, b"v3")  # a new incarnation starts over
    assert registry.get(key)[0] == KeyValue(key, b"v3", third, third, 1, 0)


def test_revision_advances_by_one_per_writing_txn_only(registry: Registry, prefix: bytes) -> None:
    a, b, c = prefix + b"a", prefix + b"b", prefix + b"c"
    before = current_revision(registry)

    result = registry.txn([], [Put(a, b"1"), Put(b, b"1"), Put(c, b"1")])
    assert result.succeeded
    assert result.revision == before + 1
    assert {kv_of(registry, k).mod_revision for k in (a, b, c)} == {before + 1}

    failed = registry.txn([Compare(a, "value", "==", b"other")], [Put(a, b"2")])
    assert not failed.succeeded
    assert failed.revision == before + 1
    reads_only = registry.txn([], [Get(a), Get(prefix, prefix=True)])
    assert reads_only.revision == before + 1
    absent_delete = registry.txn([], [Delete(prefix + b"absent"), Delete(prefix + b"zz/", prefix=True)])
    assert absent_delete.revision == before + 1
    assert current_revision(registry) == before + 1

    assert registry.txn([], [Delete(a), Put(b, b"2")]).revision == before + 2


# -- transactions


def test_every_compare_target_and_op(registry: Registry, prefix: bytes) -> None:
    key, absent = prefix + b"k", prefix + b"absent"
    lease = registry.grant(30)
    create = put(registry, key, b"v1")
    mod = put(registry, key, b"v2", lease)
    cases: list[tuple[bytes, str, str, bytes | int, bool]] = [
        (key, "value", "==", b"v2", True),
        (key, "value", "==", b"v1", False),
        (key, "value", "!=", b"v1", True),
        (key, "value", "!=", b"v2", False),
        (key, "value", "<", b"v3", True),
        (key, "value", "<", b"v2", False),
        (key, "value", ">", b"v1", True),
        (key, "value", ">", b"v3", False),
        (key, "version", "==", 2, True),
        (key, "version", "!=", 2, False),
        (key, "version", "<", 3, True),
        (key, "version", ">", 2, False),
        (key, "version", ">", 1, True),
        (key, "create", "==", create, True),
        (key, "create", "!=", create, False),
        (key, "create", "<", mod, True),
        (key, "create", ">", create, False),
        (key, "mod", "==", mod, True),
        (key, "mod", "!=", create, True),
        (key, "mod", ">", create, True),
        (key, "mod", "<", mod, False),
        (key, "lease", "==", lease, True),
        (key, "lease", "==", 0, False),
        (key, "lease", "!=", lease, False),
        (key, "lease", ">", 0, True),
        # An absent key: version, create, mod and lease are 0; every value compare fails.
        (absent, "version", "==", 0, True),
        (absent, "version", ">", 0, False),
        (absent, "create", "==", 0, True),
        (absent, "mod", "==", 0, True),
        (absent, "mod", "<", 1, True),
        (absent, "lease", "==", 0, True),
        (absent, "value", "==", b"", False),
        (absent, "value", "!=", b"x", False),
        (absent, "value", "<", b"zzz", False),
        (absent, "value", ">", b"", False),
    ]
    wrong = []
    for case_key, target, op, operand, expected in cases:
        compare = Compare(case_key, target, op, operand)  # type: ignore[arg-type]
        result = registry.txn([compare], [Get(case_key)], [])
        if result.succeeded is not expected:
            wrong.append((case_key[len(prefix) :], target, op, operand, result.succeeded))
    assert wrong == []

    both = [Compare(key, "version", "==", 2), Compare(absent, "version", "==", 0)]
    assert registry.txn(both, []).succeeded
    one_fails = [Compare(key, "version", "==", 2), Compare(absent, "version", "==", 1)]
    assert not registry.txn(one_fails, []).succeeded


def test_failed_compare_applies_nothing_and_runs_the_failure_branch(registry: Registry, prefix: bytes) -> None:
    a, b, c, lost = prefix + b"a", prefix + b"b", prefix + b"c", prefix + b"lost"
    before = put(registry, a, b"1")

    result = registry.txn(
        [Compare(a, "version", "==", 1), Compare(a, "value", "==", b"not 1")],
        [Put(b, b"success"), Delete(a), Put(lost, b"x")],
        [Put(c, b"failure"), Get(a), Get(prefix, prefix=True)],
    )
    assert not result.succeeded
    assert result.revision == before + 1
    kv_a = registry.get(a)[0]
    assert kv_a is not None and kv_a.value == b"1"
    assert registry.get(b)[0] is None
    assert registry.get(lost)[0] is None
    kv_c = registry.get(c)[0]
    assert kv_c is not None and kv_c.value == b"failure"
    # Reads run in op order and see the branch's own earlier writes.
    assert result.responses == [[], [kv_a], [kv_a, kv_c]]

    result = registry.txn([Compare(a, "version", "==", 1)], [Put(b, b"success"), Get(b)], [Put(c, b"no")])
    assert result.succeeded
    kv_b = registry.get(b)[0]
    assert kv_b is not None and result.responses == [[], [kv_b]]
    assert registry.get(c)[0] == kv_c


def test_get_in_txn_exact_and_prefix(registry: Registry, prefix: bytes) -> None:
    for name in (b"d/1", b"d/2", b"d2", b"e"):
        put(registry, prefix + name, name)
    result = registry.txn([], [Get(prefix + b"d"), Get(prefix + b"d/", prefix=True), Get(prefix + b"none")])
    assert result.succeeded
    assert [[kv.key for kv in response] for response in result.responses] == [
        [],
        [prefix + b"d/1", prefix + b"d/2"],
        [],
    ]
    assert result.responses[1][0] == registry.get(prefix + b"d/1")[0]


def test_txn_may_not_write_one_key_twice(registry: Registry, prefix: bytes) -> None:
    key = prefix + b"k"
    before = current_revision(registry)
    with pytest.raises(RegistryError):
        registry.txn([], [Put(key, b"1"), Put(key, b"2")])
    with pytest.raises(RegistryError):
        registry.txn([], [Delete(prefix, prefix=True), Put(key, b"1")])
    with pytest.raises(RegistryError):  # checked even in the branch that would not run
        registry.txn([], [Put(key, b"1")], [Put(key, b"1"), Delete(key)])
    assert registry.get(key)[0] is None
    assert current_revision(registry) == before

    # One write per key per branch is fine; deletes may overlap each other.
    assert registry.txn([Compare(key, "version", "==", 0)], [Put(key, b"1")], [Put(key, b"2")]).succeeded
    assert registry.txn([], [Delete(key), Delete(prefix, prefix=True)]).revision == before + 2
    assert registry.get(key)[0] is None


def test_nested_txns_are_independent_and_share_one_revision(registry: Registry, prefix: bytes) -> None:
    a, b, c = prefix + b"a", prefix + b"b", prefix + b"c"
    put(registry, a, b"1")
    before = current_revision(registry)
    result = registry.txn(
        [],
        [
            Txn([Compare(a, "value", "==", b"1")], [Put(a, b"2"), Get(a)]),  # holds
            Txn([Compare(b, "create", "!=", 0)], [Put(b, b"x")], [Put(c, b"no b")]),  # fails: failure runs
            Txn([Compare(a, "value", "==", b"2")], [Put(prefix + b"d", b"!")]),  # sees a as before the txn
            Put(prefix + b"e", b"plain"),
        ],
    )
    assert result.succeeded and result.revision == before + 1
    assert [n.succeeded for n in result.nested] == [True, False, False]
    assert [kv.value for kv in result.nested[0].responses[1]] == [b"2"]
    values = {k: (kv.value if (kv := registry.get(prefix + k)[0]) else None) for k in (b"a", b"b", b"c", b"d", b"e")}
    assert values == {b"a": b"2", b"b": None, b"c": b"no b", b"d": None, b"e": b"plain"}
    # nothing to write in the branches that ran: no new revision
    quiet = registry.txn([], [Txn([Compare(b, "create", "!=", 0)], [Put(b, b"x")])])
    assert quiet.revision == before + 1 and not quiet.nested[0].succeeded


def test_ops_limit_counts_what_a_nested_txn_s_parents_left(registry: Registry, prefix: bytes) -> None:
    """etcd's --max-txn-ops (128) bounds each list; a nested txn gets what its parent's widest
    list left: ten nested txns of 118 ops pass, of 119 fail (the memory backend checks alike)."""

    def nested(parts: int, per: int) -> list[Op]:
        return [Txn([], [Put(prefix + b"%d/%d" % (p, i), b"") for i in range(per)]) for p in range(parts)]

    assert registry.txn([], nested(10, 118)).succeeded
    before = current_revision(registry)
    for too_many in ([Put(prefix + b"%d" % i, b"") for i in range(129)], nested(10, 119), nested(100, 29)):
        with pytest.raises(RegistryError, match="too many operations"):
            registry.txn([], too_many)
    assert current_revision(registry) == before


def test_a_request_over_etcd_s_byte_limit_is_too_large(registry: Registry, prefix: bytes) -> None:
    """etcd's --max-request-bytes (1.5 MiB) bounds the request as encoded, not its keys and
    values alone: 100 puts whose keys and values come to just under the limit are over it."""

    def puts(count: int, payload: int, nested: bool = False) -> list[Op]:
        """``count`` puts whose keys and values come to ``payload`` bytes, each in a nested
        txn comparing its key if ``nested``."""
        ops: list[Op] = []
        for i in range(count):
            key = prefix + b"%03d" % i
            op = Put(key, b"x" * (payload // count - len(key)))
            ops.append(Txn([Compare(key, "version", "==", 0)], [op]) if nested else op)
        return ops

    before = current_revision(registry)
    for over in (
        puts(1, MAX_REQUEST_BYTES),
        puts(100, MAX_REQUEST_BYTES - 100),
        puts(100, MAX_REQUEST_BYTES - 2000, nested=True),
    ):
        with pytest.raises(TooLarge) as refused:
            registry.txn([], over)
        assert refused.value.limit == MAX_REQUEST_BYTES
    assert current_revision(registry) == before
    assert registry.txn([], puts(100, MAX_REQUEST_BYTES - 4000)).succeeded  # what encoding adds: under 4 KB


def _overlaps(k: bytes) -> dict[str, tuple[bool, list[Op]]]:
    """Branches whose puts overlap, and whether etcd 3.5.1 accepts them (checkIntervals:
    whatever the compares say, a put may not meet a put or delete of an earlier nested txn,
    or a delete of its own level; a txn's two branches may share keys)."""
    put, delete = Put(k, b"x"), Delete(k)
    return {
        "put put": (False, [Txn([], [put]), Txn([], [put])]),
        "put then delete": (True, [Txn([], [put]), Txn([], [delete])]),
        "delete then put": (False, [Txn([], [delete]), Txn([], [put])]),
        "delete delete": (True, [Txn([], [delete]), Txn([], [delete])]),
        "nested put, own put": (False, [Txn([], [put]), put]),
        "nested put, own delete": (False, [Txn([], [put]), delete]),
        "then put, else put": (False, [Txn([], [put]), Txn([], [], [put])]),
        "else delete, then put": (False, [Txn([], [], [delete]), Txn([], [put])]),
        "one txn's then and else": (True, [Txn([], [put], [put])]),
        "deeper put, put": (False, [Txn([], [Txn([], [put])]), Txn([], [put])]),
        "prefix delete, put": (False, [Txn([], [Delete(k[:-1], prefix=True)]), Txn([], [put])]),
    }


@pytest.mark.parametrize("case", list(_overlaps(b"k")))
def test_overlapping_keys_are_refused_as_etcd_refuses_them(registry: Registry, prefix: bytes, case: str) -> None:
    accepted, ops = _overlaps(prefix + b"k")[case]
    before = current_revision(registry)
    if accepted:
        assert registry.txn([], ops).succeeded
    else:
        with pytest.raises(RegistryError, match="duplicate key"):
            registry.txn([], ops)
        assert current_revision(registry) == before


def test_delete_exact_key_and_prefix(registry: Registry, prefix: bytes) -> None:
    for name in (b"a", b"ab", b"a/1", b"a/2", b"b/1"):
        put(registry, prefix + name, b"x")

    registry.txn([], [Delete(prefix + b"a")])
    assert [kv.key for kv in registry.range(prefix).kvs] == [prefix + n for n in (b"a/1", b"a/2", b"ab", b"b/1")]

    revision = registry.txn([], [Delete(prefix + b"a/", prefix=True)]).revision
    assert revision == current_revision(registry)
    assert [kv.key for kv in registry.range(prefix).kvs] == [prefix + b"ab", prefix + b"b/1"]


# -- range


def test_range_is_byte_ordered_and_pages_with_start_and_limit(registry: Registry, prefix: bytes) -> None:
    names = [b"a", b"b\x00", b"b", b"\xff", b"B", b"a/b"]
    registry.txn([], [Put(prefix + name, name) for name in names])
    registry.txn([], [Put(prefix[:-1] + b"0", b"outside"), Put(prefix[:-1], b"outside")])

    result = registry.range(prefix)
    assert [kv.key for kv in result.kvs] == [prefix + n for n in sorted(names)]
    assert not result.more
    assert result.revision == current_revision(registry)

    assert [kv.key for kv in registry.range(prefix, start=prefix + b"b").kvs] == [
        prefix + n for n in (b"b", b"b\x00", b"\xff")
    ]
    page = registry.range(prefix, limit=2)
    assert [kv.key for kv in page.kvs] == [prefix + b"B", prefix + b"a"]
    assert page.more
    exact = registry.range(prefix, start=prefix + b"b", limit=3)
    assert len(exact.kvs) == 3 and not exact.more


def test_range_from_a_start_before_the_prefix_stays_under_the_prefix(registry: Registry, prefix: bytes) -> None:
    registry.txn([], [Put(prefix + b"a", b"1"), Put(prefix + b"a/1", b"1"), Put(prefix + b"a/2", b"1")])
    result = registry.range(prefix + b"a/", start=prefix)
    assert [kv.key for kv in result.kvs] == [prefix + b"a/1", prefix + b"a/2"]


def test_range_pages_at_a_fixed_revision(registry: Registry, prefix: bytes) -> None:
    keys = [prefix + b"k%02d" % i for i in range(10)]
    registry.txn([], [Put(key, b"old") for key in keys])

    pages = [registry.range(prefix, limit=4)]
    revision = pages[0].revision
    # Writes after page 1: a key between pages, a deleted key, an updated key, a key at the end.
    registry.txn([], [Put(prefix + b"k055", b"new"), Delete(keys[5]), Put(keys[8], b"new"), Put(prefix + b"z", b"new")])
    while pages[-1].more:
        start = pages[-1].kvs[-1].key + b"\0"
        pages.append(registry.range(prefix, start=start, revision=revision, limit=4))

    assert [len(page.kvs) for page in pages] == [4, 4, 2]
    assert [page.revision for page in pages] == [revision] * 3
    seen = [kv for page in pages for kv in page.kvs]
    assert [kv.key for kv in seen] == keys
    assert {kv.value for kv in seen} == {b"old"}
    assert {kv.mod_revision for kv in seen} == {revision}

    now = registry.range(prefix)
    assert [kv.key for kv in now.kvs] == [*keys[:5], prefix + b"k055", *keys[6:], prefix + b"z"]
    assert now.revision == revision + 1


def test_range_at_an_old_revision(registry: Registry, prefix: bytes) -> None:
    a, b, c = prefix + b"a", prefix + b"b", prefix + b"c"
    first = registry.txn([], [Put(a, b"a1"), Put(b, b"b1")]).revision
    put(registry, a, b"a2")
    registry.txn([], [Delete(b), Put(c, b"c1")])
    put(registry, b, b"b2")

    old = registry.range(prefix, revision=first)
    assert old.kvs == [KeyValue(a, b"a1", first, first, 1), KeyValue(b, b"b1", first, first, 1)]
    assert old.revision == first
    middle = registry.range(prefix, revision=first + 2)
    assert [(kv.key, kv.value, kv.version) for kv in middle.kvs] == [(a, b"a2", 2), (c, b"c1", 1)]
    assert registry.range(prefix, revision=first - 1).kvs == []
    assert [kv.value for kv in registry.range(prefix).kvs] == [b"a2", b"b2", b"c1"]


def test_range_at_a_future_revision_is_an_error(registry: Registry, prefix: bytes) -> None:
    with pytest.raises(RegistryError):
        registry.range(prefix, revision=current_revision(registry) + 1000)


# -- leases


def test_lease_grant_refresh_and_revoke(registry: Registry, prefix: bytes) -> None:
    lease = registry.grant(30)
    other = registry.grant(30)
    assert lease != other
    assert registry.refresh(lease) == 30
    a, b, kept = prefix + b"a", prefix + b"b", prefix + b"kept"
    registry.txn([], [Put(a, b"1", lease), Put(b, b"1", lease), Put(kept, b"1", other)])
    assert kv_of(registry, a).lease == lease
    # Rebinding a key moves it off the old lease.
    put(registry, b, b"2")
    assert kv_of(registry, b).lease == 0

    before = current_revision(registry)
    registry.revoke(lease)
    assert registry.get(a)[0] is None
    assert registry.get(b)[0] is not None
    assert registry.get(kept)[0] is not None
    assert current_revision(registry) == before + 1  # one delete, one revision

    with pytest.raises(LeaseLost) as lost:
        registry.refresh(lease)
    assert lost.value.lease == lease
    with pytest.raises(LeaseLost):
        registry.txn([], [Put(prefix + b"late", b"1", lease)])
    assert registry.get(prefix + b"late")[0] is None
    registry.revoke(lease)  # revoking an unknown lease is not an error
    assert current_revision(registry) == before + 1
    registry.revoke(other)


def test_time_to_live_reads_without_refreshing(registry: Registry, prefix: bytes) -> None:
    lease = registry.grant(5)
    left, granted = registry.time_to_live(lease) or (0, 0)
    assert granted == 5 and 3 <= left <= 5
    registry.revoke(lease)
    assert registry.time_to_live(lease) is None
    assert registry.time_to_live(0x7EADBEEF) is None  # never granted
    short = registry.grant(2)
    wait_until(lambda: registry.time_to_live(short) is None, timeout=4, what="expiry despite reads")


def test_lease_expiry_deletes_bound_keys_in_one_revision(registry: Registry, prefix: bytes) -> None:
    ttl = 2
    refreshed = registry.grant(ttl)  # granted first: without a refresh it would expire first
    granted = time.monotonic()
    lease = registry.grant(ttl)
    a, b, other, alive = prefix + b"a", prefix + b"b", prefix + b"other", prefix + b"alive"
    start = registry.txn(
        [], [Put(a, b"1", lease), Put(b, b"1", lease), Put(other, b"1"), Put(alive, b"1", refreshed)]
    ).revision
    watch = registry.watch(prefix, start + 1, prev_kv=True)
    try:
        assert watch.next(1.0).events == []  # nothing expires early
        registry.refresh(refreshed)
        # From here on only the watch waits: expiry must happen without other traffic.
        events = collect(watch, 2, timeout=ttl + 1 - (time.monotonic() - granted))
    finally:
        watch.cancel()

    assert [(e.type, e.kv.key) for e in events] == [("delete", a), ("delete", b)]
    assert events[0].kv.mod_revision == events[1].kv.mod_revision == start + 1
    assert [e.prev.value if e.prev else None for e in events] == [b"1", b"1"]
    assert registry.get(a)[0] is None
    assert kv_of(registry, other).value == b"1"
    assert kv_of(registry, alive).lease == refreshed
    with pytest.raises(LeaseLost) as lost:
        registry.refresh(lease)
    assert lost.value.lease == lease
    registry.revoke(refreshed)
    assert registry.get(alive)[0] is None


# -- watches


def test_watch_delivers_every_event_in_order_from_a_past_revision(registry: Registry, prefix: bytes) -> None:
    w = prefix + b"w/"
    a, b, c = w + b"a", w + b"b", w + b"c"
    first = put(registry, a, b"1")
    put(registry, prefix + b"x", b"outside the watched prefix")
    txn = registry.txn([], [Put(b, b"1"), Put(a, b"2")]).revision
    deleted = registry.txn([], [Delete(a)]).revision

    watch = registry.watch(w, first, prev_kv=True)  # opened after the writes
    try:
        later = put(registry, c, b"1")
        events = collect(watch, 5)
        assert summary(events) == [
            ("put", a, b"1", first),
            ("put", b, b"1", txn),  # one txn's events share a revision, in op order
            ("put", a, b"2", txn),
            ("delete", a, b"", deleted),
            ("put", c, b"1", later),
        ]
        assert [e.prev.value if e.prev else None for e in events] == [None, None, b"1", b"2", None]
        assert events[2].prev == KeyValue(a, b"1", first, first, 1)
        assert events[2].kv == KeyValue(a, b"2", first, txn, 2)
    finally:
        watch.cancel()

    # A batch's revision is where to resume: nothing is repeated or missed.
    resumed = registry.watch(w, later + 1)
    try:
        assert resumed.next(0.2).events == []
        batch_revision = resumed.next(0.1).revision
        assert batch_revision >= later
        final = put(registry, b, b"2")
        events = collect(resumed, 1)
        assert summary(events) == [("put", b, b"2", final)]
        assert events[0].prev is None  # not asked for
    finally:
        resumed.cancel()


def test_watch_of_puts_only_leaves_deletes_out(registry: Registry, prefix: bytes) -> None:
    w = prefix + b"w/"
    a, b = w + b"a", w + b"b"
    first = put(registry, a, b"1")
    registry.txn([], [Delete(a), Put(b, b"1")])  # a txn of both: only its put comes
    registry.txn([], [Delete(b)])  # only a delete: nothing comes
    last = put(registry, a, b"2")

    watch = registry.watch(w, first, puts_only=True)
    try:
        events = collect(watch, 3)
        assert [(e.type, e.kv.key, e.kv.value) for e in events] == [
            ("put", a, b"1"),
            ("put", b, b"1"),
            ("put", a, b"2"),
        ]
        assert events[-1].kv.mod_revision == last
        assert watch.next(0.3).events == []
    finally:
        watch.cancel()


def test_watch_cancel_and_close_end_iteration(registry_url: str, registry: Registry, prefix: bytes) -> None:
    other = open_registry(registry_url, retry_timeout=5.0)
    try:
        _cancel_and_close(registry, other, prefix)
    finally:
        other.close()


def _cancel_and_close(registry: Registry, other: Registry, prefix: bytes) -> None:
    mine = registry.watch(prefix, current_revision(registry) + 1)
    theirs = other.watch(prefix, current_revision(registry) + 1)
    received: dict[str, list[Event]] = {"mine": [], "theirs": []}
    failures: list[BaseException] = []

    def drain(name: str, watch: Watch) -> None:
        try:
            for event in watch:
                received[name].append(event)
        except BaseException as exc:  # surfaced by the assertions below
            failures.append(exc)

    threads = [threading.Thread(target=drain, args=item, daemon=True) for item in [("mine", mine), ("theirs", theirs)]]
    for thread in threads:
        thread.start()
    first = put(registry, prefix + b"1", b"1")
    wait_until(lambda: len(received["mine"]) == 1 and len(received["theirs"]) == 1, timeout=5.0)

    other.close()  # cancels its own watches only
    other.close()
    with pytest.raises(RegistryError):
        other.watch(prefix, first)
    threads[1].join(timeout=3.0)
    assert not threads[1].is_alive()
    second = put(registry, prefix + b"2", b"2")
    wait_until(lambda: len(received["mine"]) == 2, timeout=5.0)

    mine.cancel()
    mine.cancel()
    threads[0].join(timeout=3.0)
    assert not threads[0].is_alive()
    put(registry, prefix + b"3", b"3")
    assert failures == []
    assert [e.kv.mod_revision for e in received["mine"]] == [first, second]
    assert [e.kv.mod_revision for e in received["theirs"]] == [first]


def test_watch_and_range_from_a_compacted_revision_raise_compacted(
    registry: Registry, prefix: bytes, compact: Callable[[int], None]
) -> None:
    key = prefix + b"k"
    first = put(registry, key, b"1")
    put(registry, key, b"2")
    kept = put(registry, key, b"3")
    compact(kept)

    watch = registry.watch(prefix, first)
    try:
        with pytest.raises(Compacted) as gone:
            watch.next(5.0)
        assert gone.value.compact_revision >= kept
    finally:
        watch.cancel()
    with pytest.raises(Compacted) as gone:
        registry.range(prefix, revision=first)
    assert gone.value.revision == first

    # The compaction revision itself is kept: re-list there and watch on.
    assert [kv.value for kv in registry.range(prefix, revision=kept).kvs] == [b"3"]
    watch = registry.watch(prefix, kept)
    try:
        assert summary(collect(watch, 1)) == [("put", key, b"3", kept)]
    finally:
        watch.cancel()


def test_the_observer_is_told_of_each_request(registry: Registry, prefix: bytes) -> None:
    seen: list[tuple[str, float, str | None]] = []
    registry.observer = lambda operation, seconds, kind: seen.append((operation, seconds, kind))
    try:
        lease = registry.grant(5)
        registry.refresh(lease)
        assert registry.time_to_live(lease) is not None
        put(registry, prefix + b"k", b"v", lease)
        registry.get(prefix + b"k")
        registry.range(prefix)
        registry.revoke(lease)
        with pytest.raises(LeaseLost):
            registry.refresh(lease)
    finally:
        registry.observer = None
    registry.get(prefix + b"k")  # nobody is told
    assert [operation for operation, _, _ in seen] == [
        "lease_grant", "lease_refresh", "lease_ttl", "txn", "get", "range", "lease_revoke", "lease_refresh"
    ]  # fmt: skip
    assert all(0 <= seconds < 5 for _, seconds, _ in seen), seen
    assert all(kind is None for _, _, kind in seen), seen  # a lost lease is an answer, not a failure


# -- memory backend specifics: how URLs map to stores, and the bounded history


def test_memory_names_share_a_store_and_bare_urls_do_not() -> None:
    name = f"memory://{uuid.uuid4().hex[:12]}"
    first, second = open_registry(name), open_registry(name)
    revision = put(first, b"/k", b"1")
    assert second.get(b"/k") == (first.get(b"/k")[0], revision)
    assert second.get(b"/k")[0] is not None

    private, other_private = open_registry("memory://"), open_registry("memory://")
    put(private, b"/k", b"1")
    assert other_private.get(b"/k") == (None, 1)


def test_memory_history_limit_compacts_old_revisions() -> None:
    registry = MemoryRegistry("memory://", history_limit=10)
    first = put(registry, b"/k", b"0")
    for i in range(1, 40):
        put(registry, b"/k" if i % 2 else b"/j", b"%d" % i)
    last = current_revision(registry)
    with pytest.raises(Compacted):
        registry.range(b"/", revision=first)
    with pytest.raises(Compacted):
        registry.watch(b"/", last - 10).next(0.1)

    oldest = last - 9
    assert [kv.value for kv in registry.range(b"/", revision=oldest).kvs] == [b"30", b"29"]
    watch = registry.watch(b"/", oldest)
    assert [e.kv.value for e in collect(watch, 10)] == [b"%d" % i for i in range(30, 40)]
    watch.cancel()
