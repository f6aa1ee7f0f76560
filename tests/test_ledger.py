"""The episode state machine as txns, on both registry backends: races, fencing, requeue."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from openrange_mesh.ids import IdAllocator
from openrange_mesh.keys import Keys
from openrange_mesh.ledger.catalog import Catalog, EpisodeFilter
from openrange_mesh.ledger.claims import Settlement
from openrange_mesh.ledger.homes import Versioned
from openrange_mesh.ledger.ledger import Ledger
from openrange_mesh.ledger.records import MAX_FREE_RELEASES, finish_attempt, release, spent_attempts
from openrange_mesh.model import Attempt, EpisodeRecord, EpisodeSpec, State
from openrange_mesh.registry import Put, Registry, open_registry

from .etcdkit import EtcdServer
from .helpers import current_revision, take, wait_until


def records(n: int, *, prefix: str = "e", **spec: object) -> list[EpisodeRecord]:
    s = EpisodeSpec(runtime="sleep", **spec)  # type: ignore[arg-type]
    return [EpisodeRecord(id=f"{prefix}{i:05d}", spec=s, created_at=time.time()) for i in range(n)]


def pending(ledger: Ledger, ids: list[str]) -> list[Versioned]:
    return [ledger.read(ids)[i] for i in ids]


def test_lifecycle_costs_three_writes(registry: Registry, ledger: Ledger) -> None:
    lease = registry.grant(5)
    before = current_revision(registry)
    (record,) = records(1)
    ledger.submit([record])
    claim, (running,) = take(ledger, "h1", lease, [record.id])
    final = finish_attempt(running, State.SUCCEEDED, time.time(), None, {"r": 1})
    assert ledger.commit(claim, [final], last=True)
    assert current_revision(registry) - before == 3
    got = ledger.read([record.id])[record.id].record
    assert got.state is State.SUCCEEDED and got.result == {"r": 1} and got.history[-1].outcome == "succeeded"
    assert registry.range(ledger.keys.claims()).kvs == [] and registry.range(ledger.keys.queue()).kvs == []


def test_idempotency_key_returns_the_existing_episode(ledger: Ledger) -> None:
    first = records(2, idempotency_key="k1")[:1] + records(1, prefix="f")
    taken, _, _ = ledger.submit(first)
    assert taken == {}
    again = records(1, prefix="g", idempotency_key="k1")
    taken, _, _ = ledger.submit(again)
    assert taken == {"k1": "e00000"}
    assert "g00000" not in ledger.read(["g00000"])


def test_what_rides_on_a_full_last_txn_goes_with_its_last_group_or_alone(registry: Registry, ledger: Ledger) -> None:
    """A client's queued marker rides on a submission's last txn (ledger.submit's ``after``).
    A last txn at etcd's limit (64 entries and their 64 records: 128 ops) leaves its last group
    to carry it; a lone group at the limit (a batch of 126 under idempotency keys, one group
    record and one entry) leaves it to a txn of its own."""
    marker = ledger.keys.queued_marker()
    ledger.submit(records(64), after=[Put(marker, b"cl")])
    per_txn = Counter(kv.mod_revision for kv in registry.range(ledger.keys.queue()).kvs)
    (mark,) = registry.range(marker).kvs
    assert sorted(per_txn.values()) == [1, 63] and per_txn[mark.mod_revision] == 1

    _, ids = IdAllocator(registry, ledger.keys, "cl").next_group(126)
    batch = [EpisodeSpec(runtime="sleep", batch=126, idempotency_key=f"k{i}") for i in range(126)]
    before = current_revision(registry)
    ledger.submit(
        [EpisodeRecord(id=i, spec=s, created_at=time.time()) for i, s in zip(ids, batch, strict=True)],
        after=[Put(marker, b"cl")],
    )
    (entry,) = [kv for kv in registry.range(ledger.keys.queue()).kvs if kv.mod_revision > before]
    (mark,) = registry.range(marker).kvs
    assert mark.mod_revision == entry.mod_revision + 1 == current_revision(registry)


def test_what_rides_on_the_last_txn_goes_when_every_record_of_it_was_there(registry: Registry, ledger: Ledger) -> None:
    """A retried submission whose records all exist already (their idempotency keys taken)
    writes no record, and its queued marker still goes: idle hosts steal after it."""
    marker = ledger.keys.queued_marker()
    ledger.submit(records(1, prefix="k", idempotency_key="k"))
    assert registry.range(marker).kvs == []
    before = current_revision(registry)
    taken, first, last = ledger.submit(records(1, prefix="r", idempotency_key="k"), after=[Put(marker, b"cl")])
    assert taken == {"k": "k00000"} and "r00000" not in ledger.read(["r00000"])
    (mark,) = registry.range(marker).kvs
    assert mark.value == b"cl" and mark.mod_revision == current_revision(registry) == before + 1 == first == last


def test_only_one_claim_wins(registry: Registry, ledger: Ledger) -> None:
    ledger.submit(records(1))
    (entry,) = ledger.queue()
    seen = ledger.read(list(entry.ids))
    lease = registry.grant(5)
    assert ledger.claim("h1", lease, entry, seen) is not None
    assert ledger.claim("h2", lease, entry, seen) is None


def test_a_claim_lost_to_its_records_alone_says_its_entry_stands(registry: Registry, ledger: Ledger) -> None:
    """The claim txn's failure branch reads the entry: a claim that lost to a write of its
    records since they were read (as an ack rewrites a group) returns the entry, which no watch
    event brings back to its owner; one whose entry changed or went returns None."""
    ledger.submit(records(2))
    first, second = ledger.queue()
    stale = {e.name: ledger.read(list(e.ids)) for e in (first, second)}
    for entry in (first, second):  # the records written again, their entries left as they were
        kv, _ = registry.get(ledger.keys.episode(entry.ids[0]))
        assert kv is not None
        registry.txn([], [Put(kv.key, kv.value)])
    lease = registry.grant(5)
    assert ledger.claim("h1", lease, first, stale[first.name]) == first
    oks, won = ledger.settle([], [(second, stale[second.name])], host="h1", lease=lease)  # a nested txn alike
    assert (oks, won) == ([], [second]) and ledger.queue() == [first, second]
    assert ledger.claim("h1", lease, first, ledger.read(list(first.ids))) is not None  # read again: won
    assert ledger.claim("h1", lease, first, stale[first.name]) is None  # the entry went


def test_stale_owner_cannot_commit_after_its_lease_is_gone(registry: Registry, ledger: Ledger) -> None:
    ledger.submit(records(1))
    lease = registry.grant(5)
    claim, (running,) = take(ledger, "h1", lease, ["e00000"])
    registry.revoke(lease)  # what expiry does, without waiting for it
    final = finish_attempt(running, State.SUCCEEDED, time.time(), None)
    assert not ledger.commit(claim, [final], last=True)
    assert ledger.read(["e00000"])["e00000"].record.state is State.RUNNING


def test_requeue_after_expiry_then_stale_commit_is_rejected(registry: Registry, ledger: Ledger) -> None:
    ledger.submit(records(2, max_attempts=2, batch=2))
    lease = registry.grant(2)
    claim, running = take(ledger, "h1", lease, ["e00000", "e00001"])
    wait_until(lambda: not registry.range(ledger.keys.claims()).kvs, timeout=4, what="lease expiry")
    requeued = ledger.requeue("h1", claim.claim_id, list(claim.episode_ids), "host h1 lost its lease")
    assert sorted(requeued) == ["e00000", "e00001"]
    assert ledger.requeue("h1", claim.claim_id, list(claim.episode_ids), "again") == []  # idempotent
    back = ledger.read(["e00000"])["e00000"].record
    assert (back.state, back.attempt, back.history[0].outcome) == (State.PENDING, 2, "retried")
    assert [e.ids for e in ledger.queue()] == [("e00000", "e00001")]  # back as one batch entry
    # a new owner takes them; the old one wakes up and tries to commit: rejected
    lease2 = registry.grant(5)
    claim2, running2 = take(ledger, "h2", lease2, ["e00000", "e00001"])
    assert not ledger.commit(claim, [finish_attempt(running[0], State.SUCCEEDED, 0, None)], last=False)
    assert ledger.commit(claim2, [finish_attempt(r, State.SUCCEEDED, 0, None) for r in running2], last=True)
    done = ledger.read(["e00000"])["e00000"].record
    assert done.state is State.SUCCEEDED and [a.host for a in done.history] == ["h1", "h2"]


def test_attempts_spent_means_lost(registry: Registry, ledger: Ledger) -> None:
    ledger.submit(records(1, max_attempts=1))
    lease = registry.grant(5)
    claim, _ = take(ledger, "h1", lease, ["e00000"])
    registry.revoke(lease)
    assert ledger.requeue("h1", claim.claim_id, ["e00000"], "host h1 lost its lease") == ["e00000"]
    lost = ledger.read(["e00000"])["e00000"].record
    assert lost.state is State.LOST and "all 1 attempts spent" in (lost.error or "")
    assert registry.range(ledger.keys.queue()).kvs == []


def test_cancel_pending_and_cancel_marker_survives_owner_death(registry: Registry, ledger: Ledger) -> None:
    ledger.submit(records(2))
    assert ledger.cancel_pending(pending(ledger, ["e00000"])[0])
    assert ledger.read(["e00000"])["e00000"].record.state is State.CANCELLED
    lease = registry.grant(5)
    claim, _ = take(ledger, "h1", lease, ["e00001"])
    ledger.request_cancel("e00001")
    registry.revoke(lease)
    assert ledger.requeue("h1", claim.claim_id, ["e00001"], "host h1 lost its lease") == ["e00001"]
    assert ledger.read(["e00001"])["e00001"].record.state is State.CANCELLED
    assert registry.range(ledger.keys.cancels()).kvs == []


def test_batch_claim_and_partial_commits(registry: Registry, ledger: Ledger) -> None:
    ledger.submit(records(60, batch=60))
    assert [len(e.ids) for e in ledger.queue()] == [60]  # one entry for the whole batch
    ids = [f"e{i:05d}" for i in range(60)]
    lease = registry.grant(5)
    before = current_revision(registry)
    claim, running = take(ledger, "h1", lease, ids)
    assert current_revision(registry) == before + 1
    now = time.time()
    assert ledger.commit(claim, [finish_attempt(r, State.SUCCEEDED, now, None) for r in running[:20]], last=False)
    assert registry.range(ledger.keys.claims()).kvs  # still held for the other 40
    assert ledger.commit(claim, [finish_attempt(r, State.FAILED, now, "x") for r in running[20:]], last=True)
    assert registry.range(ledger.keys.claims()).kvs == []
    states = [v.record.state for v in ledger.read(ids).values()]
    assert states.count(State.SUCCEEDED) == 20 and states.count(State.FAILED) == 40


def test_catalog_pages_at_one_revision_and_skips_corrupt(registry: Registry, keys: Keys, ledger: Ledger) -> None:
    ledger.submit(records(25))
    registry.txn([], [Put(keys.episode("e00003x"), b"\xc1 not msgpack")])
    catalog = Catalog(registry, keys)
    listing = catalog.episodes(page_size=4)
    first = [next(listing)[0].id for _ in range(3)]
    ledger.submit(records(5, prefix="e0000z"))  # lands mid-range, after the listing began: not in this view
    rest = [r.id for r, _ in listing]
    assert first + rest == [f"e{i:05d}" for i in range(25)]
    assert [r.id for r, _ in catalog.episodes(EpisodeFilter(states=frozenset({State.PENDING})))][-1] == "e00024"
    assert len(list(catalog.episodes())) == 30


def test_cancelling_one_episode_of_a_batch_leaves_the_rest_claimable(registry: Registry, ledger: Ledger) -> None:
    ledger.submit(records(3, batch=3))
    (entry,) = ledger.queue()
    stale = ledger.read(list(entry.ids))
    assert ledger.cancel_pending(pending(ledger, ["e00001"])[0])
    (rest,) = ledger.queue()
    assert rest.ids == ("e00000", "e00002") and rest.name == entry.name
    lease = registry.grant(5)
    assert ledger.claim("h1", lease, entry, stale) is None  # what an agent saw before the cancel
    _claim, running = ledger.claim("h1", lease, rest, ledger.read(list(rest.ids)))
    assert [r.id for r in running] == ["e00000", "e00002"] and ledger.queue() == []
    assert ledger.read(["e00001"])["e00001"].record.state is State.CANCELLED


def test_submission_packs_groups_into_few_txns(registry: Registry, ledger: Ledger) -> None:
    before = current_revision(registry)
    ledger.submit(records(500, batch=50))
    entries = ledger.queue()
    assert [len(e.ids) for e in entries] == [50] * 10
    assert current_revision(registry) - before <= 10  # whole groups per txn, within etcd's 128 ops


def test_settle_commits_and_claims_in_one_revision_each_part_on_its_own(registry: Registry, ledger: Ledger) -> None:
    ledger.submit(records(4))
    lease = registry.grant(5)
    claim_a, (run_a,) = take(ledger, "h1", lease, ["e00000"])
    claim_b, (run_b,) = take(ledger, "h1", lease, ["e00001"])
    entry = next(e for e in ledger.queue() if e.ids == ("e00002",))
    before = current_revision(registry)
    done = [
        Settlement(claim_a, [finish_attempt(run_a, State.SUCCEEDED, time.time(), None)], last=True),
        Settlement(claim_b, [finish_attempt(run_b, State.FAILED, time.time(), "x")], last=True),
    ]
    oks, won = ledger.settle(done, [(entry, ledger.read(["e00002"]))], host="h1", lease=lease)
    assert oks == [True, True] and won[0] is not None and current_revision(registry) == before + 1
    assert won[0][0].token == before + 1 and won[0][1][0].state is State.RUNNING
    # one of two fenced off (its lease gone), and an entry a peer took since it was read: the
    # live one still commits, in the same round trip (each part is its own nested txn)
    other = registry.grant(5)
    claim_c, (run_c,) = take(ledger, "h2", other, ["e00003"])
    registry.revoke(other)
    ledger.submit(records(1, prefix="f"))
    (late,) = [e for e in ledger.queue() if e.ids == ("f00000",)]
    seen = ledger.read(["f00000"])
    assert take(ledger, "h3", registry.grant(5), ["f00000"]) is not None
    live = Settlement(won[0][0], [finish_attempt(won[0][1][0], State.SUCCEEDED, time.time(), None)], last=True)
    dead = Settlement(claim_c, [finish_attempt(run_c, State.SUCCEEDED, time.time(), None)], last=True)
    before = current_revision(registry)
    oks, again = ledger.settle([live, dead], [(late, seen)], host="h1", lease=lease)
    assert oks == [True, False] and again == [None] and current_revision(registry) == before + 1
    states = {i: v.record.state for i, v in ledger.read(["e00000", "e00001", "e00002", "e00003"]).items()}
    assert states == {
        "e00000": State.SUCCEEDED,
        "e00001": State.FAILED,
        "e00002": State.SUCCEEDED,
        "e00003": State.RUNNING,
    }


def test_settle_takes_an_entry_with_no_commit_beside_it(registry: Registry, ledger: Ledger) -> None:
    ledger.submit(records(1))
    (entry,) = ledger.queue()
    lease = registry.grant(5)
    oks, won = ledger.settle([], [(entry, ledger.read(list(entry.ids)))], host="h1", lease=lease)
    assert oks == [] and won[0] is not None and won[0][1][0].state is State.RUNNING


def test_settle_splits_parts_that_together_pass_etcds_ops_limit(registry: Registry, ledger: Ledger) -> None:
    """A nested txn may use only what its request's list left of etcd's 128: one batch of 60
    records under keys of their own (61 compares) beside 80 single claims is two requests."""
    ledger.submit(records(60, batch=60) + records(80, prefix="s"))
    entries = ledger.queue()
    assert sorted(len(e.ids) for e in entries)[-1] == 60 and len(entries) == 81
    lease = registry.grant(5)
    before = current_revision(registry)
    _, won = ledger.settle([], [(e, ledger.read(list(e.ids))) for e in entries], host="h1", lease=lease)
    assert all(w is not None for w in won)
    assert current_revision(registry) - before == 2
    states = {v.record.state for v in ledger.read([i for e in entries for i in e.ids]).values()}
    assert states == {State.RUNNING}


def test_settle_keeps_a_stale_claim_apart_from_the_commit_that_rewrites_its_records(
    registry: Registry, ledger: Ledger
) -> None:
    """An agent's queue lags its own claims by a watch delivery: a pass may commit an episode
    and try its entry again, now gone. Both write the record's key; etcd refuses a request
    whose nested txns put one key twice, so the two go apart, and the stale claim just loses."""
    ledger.submit(records(1))
    (entry,) = ledger.queue()
    seen = ledger.read(list(entry.ids))
    lease = registry.grant(5)
    won = ledger.claim("h1", lease, entry, seen)
    assert won is not None
    claim, (running,) = won
    done = Settlement(claim, [finish_attempt(running, State.SUCCEEDED, time.time(), None)], last=True)
    oks, again = ledger.settle([done], [(entry, seen)], host="h1", lease=lease)
    assert oks == [True] and again == [None]
    assert ledger.read([running.id])[running.id].record.state is State.SUCCEEDED


def test_big_records_stay_within_etcds_request_limit(etcd: EtcdServer, keys: Keys) -> None:
    """etcd only: memory:// has no request size limit."""
    registry = open_registry(etcd.url)
    try:
        ledger = Ledger(registry, keys)
        ledger.submit(records(3, params={"blob": "x" * 400_000}))  # 3 x 400 KB: more than a request holds
        entries = ledger.queue()
        assert len(entries) == 3 and not any(e.values for e in entries)  # too big for entries to carry
        lease = registry.grant(5)
        _, won = ledger.settle([], [(e, ledger.read(list(e.ids))) for e in entries], host="h1", lease=lease)
        claims = [w for w in won if w is not None]
        assert len(claims) == 3  # the request was too large: one per claim instead
        now = time.time()
        done = [
            Settlement(c, [finish_attempt(r, State.SUCCEEDED, now, None) for r in rs], last=True) for c, rs in claims
        ]
        assert ledger.settle(done)[0] == [True, True, True]
    finally:
        registry.close()


def test_a_release_spends_no_attempt_a_host_death_does(registry: Registry, ledger: Ledger) -> None:
    """Infrastructure failures (a worker that could not start, a store that failed, a drain)
    release an episode without spending an attempt; a dead host's requeue spends one. Up to
    MAX_FREE_RELEASES releases are free, so a history stays bounded."""
    ledger.submit(records(1, max_attempts=1))
    lease = registry.grant(5)
    for n in range(1, 4):  # three releases of a one-attempt episode: it is still pending
        claim, (running,) = take(ledger, "h1", lease, ["e00000"])
        back = release(running, time.time(), "its worker could not start")
        assert ledger.commit(claim, [back], last=True)
        assert (back.state, back.attempt, spent_attempts(back)) == (State.PENDING, n + 1, 1)
    assert [a.outcome for a in back.history] == ["released"] * 3
    claim, _ = take(ledger, "h1", lease, ["e00000"])
    registry.revoke(lease)  # the host dies: that one counts
    ledger.requeue("h1", claim.claim_id, ["e00000"], "host h1 lost its lease")
    lost = ledger.read(["e00000"])["e00000"].record
    assert lost.state is State.LOST and "all 1 attempts spent" in (lost.error or ""), lost

    released = [Attempt(n, "h1", 0.0, 0.0, "released", "x") for n in range(1, MAX_FREE_RELEASES + 2)]
    (record,) = records(1, prefix="f")
    n = len(released) + 1
    record = record.replace(state=State.RUNNING, attempt=n, history=(*released, Attempt(n, "h1", 0.0)))
    assert spent_attempts(record) == n - MAX_FREE_RELEASES
    counted = release(record, 0.0, "its host's store failed")
    assert counted.history[-1].outcome == "retried" and "now it counts" in (counted.error or ""), counted


def test_a_settle_with_nothing_to_settle_still_writes_its_extra_ops(registry: Registry, ledger: Ledger) -> None:
    """An idle agent's host record rides on its claim request as an extra op; with no entry
    to claim it must still be written (a healed host's weight came back only on its next
    change)."""
    key = ledger.keys.host("h1")
    assert ledger.settle([], [], extra=[Put(key, b"record")]) == ([], [])
    kv, _ = registry.get(key)
    assert kv is not None and kv.value == b"record"


@pytest.mark.parametrize("n", [10, 40], ids=["narrow", "wide"])
def test_a_fenced_settle_still_writes_its_extra_ops(registry: Registry, ledger: Ledger, n: int) -> None:
    """The host record rides on a settle's request, not on a commit's compares: the agent
    handed it over, so a fenced commit must not drop it. 40 retries of records under keys of
    their own (3 ops each) are a commit too wide for one nested txn: its own txns, compared."""
    ledger.submit(records(n, batch=n))
    ids = [f"e{i:05d}" for i in range(n)]
    lease = registry.grant(5)
    claim, running = take(ledger, "h1", lease, ids)
    registry.revoke(lease)  # the claim key goes: the owner is fenced off
    retries = [finish_attempt(r, State.PENDING, time.time(), "flaky") for r in running]
    key = ledger.keys.host("h1")
    oks, _ = ledger.settle([Settlement(claim, retries, last=False)], extra=[Put(key, b"draining")])
    assert oks == [False] and {v.record.state for v in ledger.read(ids).values()} == {State.RUNNING}
    kv, _ = registry.get(key)
    assert kv is not None and kv.value == b"draining"
