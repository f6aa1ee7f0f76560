"""Group records: a batch's records under one key, on both registry backends. Every member
keeps its own id, state, attempts and fencing; members going back to pending move out."""

from __future__ import annotations

import time

import pytest

from openrange_mesh.client.client import MeshClient
from openrange_mesh.ids import IdAllocator, home_id
from openrange_mesh.keys import Keys
from openrange_mesh.ledger import homes
from openrange_mesh.ledger.catalog import Catalog, EpisodeFilter
from openrange_mesh.ledger.claims import Claim, Settlement
from openrange_mesh.ledger.homes import MAX_OWN_KEYS
from openrange_mesh.ledger.ledger import Ledger
from openrange_mesh.ledger.records import finish_attempt, give_back
from openrange_mesh.ledger.retention import collect_garbage
from openrange_mesh.model import EpisodeRecord, EpisodeSpec, State, pack, unpack
from openrange_mesh.registry import Put, Registry

from .helpers import current_revision, take, wait_until


def batch(ledger: Ledger, n: int, **spec: object) -> list[str]:
    """Submit one batch of ``n`` as the client does (one id block); return the ids."""
    s = EpisodeSpec(runtime="sleep", batch=n, **spec)  # type: ignore[arg-type]
    _, ids = IdAllocator(ledger.registry, ledger.keys, "cl").next_group(n)
    ledger.submit([EpisodeRecord(id=i, spec=s, created_at=time.time(), submitter="cl") for i in ids])
    return ids


def keys_under(registry: Registry, prefix: bytes) -> list[bytes]:
    return [kv.key for kv in registry.range(prefix).kvs]


def states(ledger: Ledger, ids: list[str]) -> list[State]:
    found = ledger.read(ids)
    return [found[i].record.state for i in ids]


def test_a_batch_lives_in_one_key_and_each_member_is_found_by_its_id(registry: Registry, ledger: Ledger) -> None:
    before = current_revision(registry)
    ids = batch(ledger, 60)
    assert current_revision(registry) - before == 2  # the allocator's incarnation, then one submission txn
    (key,) = keys_under(registry, ledger.keys.episodes())
    assert key == ledger.keys.episode(home_id(ids[0]) or "") and all(home_id(i) == home_id(ids[0]) for i in ids)
    catalog = Catalog(registry, ledger.keys)
    assert catalog.get(ids[17]).id == ids[17] and catalog.get(ids[17]).state is State.PENDING
    assert [r.id for r, _ in catalog.episodes()] == ids
    assert [r.id for r, _ in catalog.episodes(after=ids[40])] == ids[41:]


def test_claim_and_partial_commits_rewrite_the_one_key(registry: Registry, ledger: Ledger) -> None:
    ids = batch(ledger, 50)
    lease = registry.grant(5)
    before = current_revision(registry)
    claim, running = take(ledger, "h1", lease, ids)
    assert current_revision(registry) == before + 1 and states(ledger, ids) == [State.RUNNING] * 50
    now = time.time()
    assert ledger.commit(
        claim, [finish_attempt(r, State.SUCCEEDED, now, None, {"i": 1}) for r in running[:20]], last=False
    )
    assert ledger.commit(claim, [finish_attempt(r, State.FAILED, now, "x") for r in running[20:]], last=True)
    assert current_revision(registry) == before + 3 and len(keys_under(registry, ledger.keys.episodes())) == 1
    assert states(ledger, ids) == [State.SUCCEEDED] * 20 + [State.FAILED] * 30
    assert keys_under(registry, ledger.keys.claims()) == []


def test_stale_owner_is_fenced_and_requeued_members_stay_home(registry: Registry, ledger: Ledger) -> None:
    ids = batch(ledger, 3, max_attempts=2)
    lease = registry.grant(2)
    claim, running = take(ledger, "h1", lease, ids)
    wait_until(lambda: not keys_under(registry, ledger.keys.claims()), timeout=4, what="lease expiry")
    assert sorted(ledger.requeue("h1", claim.claim_id, ids, "host h1 lost its lease")) == sorted(ids)
    assert ledger.requeue("h1", claim.claim_id, ids, "again") == []  # idempotent
    # the claim is over, so its members went back to pending in their group, under one entry
    # that carries the group: the next claim needs no read
    assert keys_under(registry, ledger.keys.episodes()) == [ledger.keys.episode(home_id(ids[0]) or "")]
    (entry,) = ledger.queue()
    assert entry.ids == tuple(ids) and homes.embedded(ledger.keys, entry) == ledger.read(ids)
    back = ledger.read(ids)[ids[0]].record
    assert (back.state, back.attempt, back.history[0].outcome) == (State.PENDING, 2, "retried")
    claim2, running2 = take(ledger, "h2", registry.grant(5), ids)
    assert set(claim2.homes) == {ledger.keys.episode(home_id(ids[0]) or "")}
    assert not ledger.commit(claim, [finish_attempt(running[0], State.SUCCEEDED, 0, None)], last=False)
    assert ledger.commit(claim2, [finish_attempt(r, State.SUCCEEDED, 0, None) for r in running2], last=True)
    done = ledger.read(ids)[ids[0]].record
    assert done.state is State.SUCCEEDED and [a.host for a in done.history] == ["h1", "h2"]


def test_a_retried_member_moves_out_and_the_rest_stay_home(registry: Registry, ledger: Ledger) -> None:
    ids = batch(ledger, 4)
    claim, running = take(ledger, "h1", registry.grant(5), ids)
    retry = finish_attempt(running[1], State.PENDING, time.time(), "flaky")
    finals = [finish_attempt(r, State.SUCCEEDED, time.time(), None) for r in running[2:]]
    assert ledger.commit(claim, [retry, *finals], last=False)
    assert ledger.keys.episode(ids[1]) in keys_under(registry, ledger.keys.episodes())
    assert [e.ids for e in ledger.queue()] == [(ids[1],)]
    assert states(ledger, ids) == [State.RUNNING, State.PENDING, State.SUCCEEDED, State.SUCCEEDED]
    # the owner's view of its group followed its commit: the last member commits on top of it
    assert ledger.commit(claim, [finish_attempt(running[0], State.SUCCEEDED, time.time(), None)], last=True)
    assert states(ledger, ids)[0] is State.SUCCEEDED
    retried, (again,) = take(ledger, "h2", registry.grant(5), [ids[1]])
    assert ledger.commit(retried, [finish_attempt(again, State.SUCCEEDED, time.time(), None)], last=True)
    assert states(ledger, ids) == [State.SUCCEEDED] * 4 and ledger.read(ids)[ids[1]].record.attempt == 2


def test_cancelling_a_pending_member_fences_a_claim_read_before(registry: Registry, ledger: Ledger) -> None:
    ids = batch(ledger, 3)
    (entry,) = ledger.queue()
    stale = ledger.read(list(entry.ids))
    assert ledger.cancel_pending(stale[ids[1]])
    (rest,) = ledger.queue()
    assert rest.ids == (ids[0], ids[2])
    lease = registry.grant(5)
    assert ledger.claim("h1", lease, entry, stale) is None
    assert ledger.claim("h1", lease, rest, ledger.read(list(rest.ids))) is not None
    assert states(ledger, ids) == [State.RUNNING, State.CANCELLED, State.RUNNING]


def test_an_ack_of_a_finished_member_makes_the_owner_resync_not_drop(registry: Registry, ledger: Ledger) -> None:
    ids = batch(ledger, 3)
    claim, running = take(ledger, "h1", registry.grant(5), ids)
    assert ledger.commit(claim, [finish_attempt(running[0], State.SUCCEEDED, time.time(), None)], last=False)
    from openrange_mesh.client.client import MeshClient

    with MeshClient(registry, namespace=ledger.keys.namespace) as client:
        assert client.ack([ids[0]]) == 1
    finals = [finish_attempt(r, State.SUCCEEDED, time.time(), None) for r in running[1:]]
    assert not ledger.commit(claim, finals, last=True)  # the group changed under the owner
    assert ledger.still_held(claim, ids[1:]) == set(ids[1:])  # but its claim lives: still ours
    assert ledger.commit(claim, finals, last=True)
    found = ledger.read(ids)
    assert [v.record.state for v in found.values()] == [State.SUCCEEDED] * 3
    assert found[ids[0]].record.acked_at is not None


def test_settle_commits_one_group_and_claims_another_in_one_txn(registry: Registry, ledger: Ledger) -> None:
    first, second = batch(ledger, 5), batch(ledger, 5)
    lease = registry.grant(5)
    claim, running = take(ledger, "h1", lease, first)
    (entry,) = [e for e in ledger.queue() if e.ids == tuple(second)]
    before = current_revision(registry)
    done = Settlement(claim, [finish_attempt(r, State.SUCCEEDED, time.time(), None) for r in running], last=True)
    oks, won = ledger.settle([done], [(entry, ledger.read(second))], host="h1", lease=lease)
    assert oks == [True] and won[0] is not None and current_revision(registry) == before + 1
    assert states(ledger, first) == [State.SUCCEEDED] * 5 and states(ledger, second) == [State.RUNNING] * 5


def test_a_listing_by_state_finds_the_members_in_it_whatever_the_group_says(registry: Registry, ledger: Ledger) -> None:
    first, second, third = batch(ledger, 4), batch(ledger, 3), batch(ledger, 2)
    lease = registry.grant(5)
    claim, running = take(ledger, "h1", lease, first)
    now = time.time()
    partial = [finish_attempt(r, State.SUCCEEDED, now, None) for r in running[:2]]
    assert ledger.commit(claim, partial, last=False)  # "mixed": two finished, two running
    claim, running = take(ledger, "h1", lease, second)
    assert ledger.commit(claim, [finish_attempt(r, State.FAILED, now, "x") for r in running], last=True)  # "finished"
    catalog = Catalog(registry, ledger.keys)

    def listed(*wanted: State) -> list[str]:
        return [r.id for r, _ in catalog.episodes(EpisodeFilter(states=frozenset(wanted)))]

    assert listed(State.RUNNING) == first[2:]
    assert listed(State.SUCCEEDED) == first[:2]
    assert listed(State.FAILED) == second
    assert listed(State.PENDING) == third
    assert listed(State.RUNNING, State.PENDING) == first[2:] + third
    everything = [r.id for r, _ in catalog.episodes()]
    assert sorted(listed(*State)) == sorted(everything) == sorted(first + second + third)


def test_collect_takes_a_group_once_every_member_may_go(registry: Registry, ledger: Ledger) -> None:
    ids = batch(ledger, 3, idempotency_key=None)
    claim, running = take(ledger, "h1", registry.grant(5), ids)
    assert ledger.commit(claim, [finish_attempt(r, State.SUCCEEDED, time.time(), None) for r in running], last=True)
    from openrange_mesh.client.client import MeshClient

    with MeshClient(registry, namespace=ledger.keys.namespace) as client:
        client.ack(ids[:2])
        assert collect_garbage(registry, ledger.keys, retention=0) == 0  # one member unacked
        client.ack(ids[2:])
        assert collect_garbage(registry, ledger.keys, retention=0) == 3
    assert keys_under(registry, ledger.keys.episodes()) == []


def test_collect_takes_a_group_written_before_headers_said_finished(registry: Registry, ledger: Ledger) -> None:
    ids = batch(ledger, 3, idempotency_key=None)
    claim, running = take(ledger, "h1", registry.grant(5), ids)
    assert ledger.commit(claim, [finish_attempt(r, State.SUCCEEDED, time.time(), None) for r in running], last=True)
    from openrange_mesh.client.client import MeshClient

    with MeshClient(registry, namespace=ledger.keys.namespace) as client:
        client.ack(ids)
    (key,) = keys_under(registry, ledger.keys.episodes())
    kv, _ = registry.get(key)
    assert kv is not None
    header = unpack(kv.value)
    assert header["state"] == "finished" and "acked_at" in header
    # as an older agent wrote it: "mixed", no "acked_at"; the members still say they may go
    registry.txn([], [Put(key, pack({"state": "mixed", "v": header["v"], "group": header["group"]}))])
    assert collect_garbage(registry, ledger.keys, retention=3600) == 0  # acked too recently
    assert collect_garbage(registry, ledger.keys, retention=0) == 3
    assert keys_under(registry, ledger.keys.episodes()) == []


def test_a_lost_claim_answer_is_adopted_with_its_group(registry: Registry, ledger: Ledger) -> None:
    ids = batch(ledger, 3)
    lease = registry.grant(5)
    claim, running = take(ledger, "h1", lease, ids)
    (kv,) = registry.range(ledger.keys.claims()).kvs
    adopted = ledger.adopt(kv)
    assert adopted is not None
    again, records = adopted
    assert (again.token, again.episode_ids) == (claim.token, claim.episode_ids) and records == running
    assert ledger.commit(again, [finish_attempt(r, State.SUCCEEDED, time.time(), None) for r in records], last=True)
    assert states(ledger, ids) == [State.SUCCEEDED] * 3


def test_ids_say_whether_an_episode_is_a_batch_member_and_where_it_lives(registry: Registry, keys: Keys) -> None:
    allocator = IdAllocator(registry, keys, "h")
    singles: list[str] = []
    groups: dict[str, list[str]] = {}
    for n in range(600):  # more blocks of each width than one revision holds: the allocator moves on
        singles += allocator.next_ids(2)
        home, members = allocator.next_group(1 + n % 63)
        groups[home] = members
        home, members = allocator.next_group(64 + n * 7 % 192)  # a wide block: 64-255 members
        groups[home] = members
    members = [m for ms in groups.values() for m in ms]
    assert len(set(singles + members + list(groups))) == len(singles) + len(members) + len(groups)
    assert all(home_id(i) is None for i in singles) and all(home_id(h) is None for h in groups)
    assert all(home_id(m) == home for home, ms in groups.items() for m in ms)
    assert max(len(ms) for ms in groups.values()) == 255
    for size in (0, 256):
        with pytest.raises(ValueError):
            allocator.next_group(size)
    # ids from before wide blocks existed (64-blocks from 0x8000 on) keep their home below 0xc000
    assert home_id("000000002a-8041-h") == "000000002a-8040-h" and home_id("000000002a-bfff-h") == "000000002a-bfc0-h"
    assert home_id("000000002a-c0ff-h") == "000000002a-c000-h" and home_id("000000002a-c100-h") is None


def test_an_entry_carries_the_records_written_with_it_until_rewritten(registry: Registry, ledger: Ledger) -> None:
    ids = batch(ledger, 3)
    (entry,) = ledger.queue()
    carried = homes.embedded(ledger.keys, entry)
    assert carried is not None and carried == ledger.read(ids)  # same records, same revision to compare
    assert ledger.cancel_pending(carried[ids[0]])
    (rewritten,) = ledger.queue()
    assert homes.embedded(ledger.keys, rewritten) is None  # ids only: the claimer reads
    assert ledger.claim("h1", registry.grant(5), entry, carried) is None  # what it carried is stale now


def test_an_entry_whose_carried_values_are_bad_is_still_claimable(registry: Registry, ledger: Ledger) -> None:
    ids = batch(ledger, 3)
    (entry,) = ledger.queue()
    registry.txn([], [Put(ledger.keys.queued(entry.path), pack({"ids": list(entry.ids), "with": "not bytes"}))])
    (damaged,) = ledger.queue()
    assert damaged.ids == entry.ids and damaged.values == () and homes.embedded(ledger.keys, damaged) is None
    assert ledger.claim("h1", registry.grant(5), damaged, ledger.read(ids)) is not None  # read, then claimed


def test_a_batch_of_250_is_claimed_and_committed_in_a_few_ops(registry: Registry, ledger: Ledger) -> None:
    ids = batch(ledger, 250)
    (key,) = keys_under(registry, ledger.keys.episodes())
    assert key == ledger.keys.episode(home_id(ids[0]) or "")
    lease = registry.grant(5)
    before = current_revision(registry)
    claim, running = take(ledger, "h1", lease, ids)
    now = time.time()
    assert ledger.commit(claim, [finish_attempt(r, State.SUCCEEDED, now, None) for r in running[:100]], last=False)
    assert ledger.commit(claim, [finish_attempt(r, State.SUCCEEDED, now, None) for r in running[100:]], last=True)
    assert current_revision(registry) == before + 3  # claim, two partial commits: one txn each
    assert states(ledger, ids) == [State.SUCCEEDED] * 250 and keys_under(registry, ledger.keys.claims()) == []


def test_a_wide_commit_that_cancels_every_member_goes_in_several_txns(registry: Registry, ledger: Ledger) -> None:
    ids = batch(ledger, 250)
    claim, running = take(ledger, "h1", registry.grant(5), ids)
    for episode_id in ids:
        ledger.request_cancel(episode_id)
    before = current_revision(registry)
    finals = [finish_attempt(r, State.CANCELLED, time.time(), "cancelled") for r in running]
    assert ledger.commit(claim, finals, last=True, cancelled=ids)  # 250 marker deletes: over etcd's 128
    assert current_revision(registry) - before == 3  # 100 markers a txn; the claim key goes with the last
    assert states(ledger, ids) == [State.CANCELLED] * 250
    assert keys_under(registry, ledger.keys.cancels()) == [] and keys_under(registry, ledger.keys.claims()) == []


def test_members_given_back_as_their_claim_ends_stay_home_under_one_entry(registry: Registry, ledger: Ledger) -> None:
    ids = batch(ledger, 250)
    lease = registry.grant(5)
    claim, running = take(ledger, "h1", lease, ids)
    now = time.time()
    done = [finish_attempt(r, State.SUCCEEDED, now, None) for r in running[:10]]
    back = [give_back(r, now, "its worker died before it started") for r in running[10:]]
    assert ledger.settle([Settlement(claim, [*done, *back], last=True)])[0] == [True]
    (entry,) = ledger.queue()
    assert entry.ids == tuple(ids[10:]) and len(keys_under(registry, ledger.keys.episodes())) == 1
    again, rerun = take(ledger, "h2", lease, ids[10:])  # one claim of the 240, in their group
    assert ledger.commit(again, [finish_attempt(r, State.SUCCEEDED, now, None) for r in rerun], last=True)
    assert states(ledger, ids) == [State.SUCCEEDED] * 250
    assert [ledger.read(ids)[i].record.attempt for i in (ids[0], ids[10])] == [1, 2]


def claimed_as_an_agent_does(ledger: Ledger, host: str, lease: int) -> tuple[Claim, list[EpisodeRecord]] | None:
    """Claim the one queue entry as agent/claimer.py does: with the records it carries, or
    with records read if it carries none."""
    (entry,) = ledger.queue()
    carried = homes.embedded(ledger.keys, entry)
    return ledger.claim(host, lease, entry, carried if carried is not None else ledger.read(list(entry.ids)))


@pytest.mark.parametrize("ends", ["last commit", "requeue"])
def test_a_member_left_pending_beside_finished_ones_is_claimable_after_they_are_acked(
    registry: Registry, ledger: Ledger, ends: str
) -> None:
    """An ack rewrites the group while the stay-home entry waits, and no new version of the
    entry comes: a claim with values the entry carried would lose on every try."""
    ids = batch(ledger, 3)
    lease = registry.grant(5)
    claim, running = take(ledger, "h1", lease, ids)
    now = time.time()
    done = [finish_attempt(running[0], State.SUCCEEDED, now, None), finish_attempt(running[1], State.FAILED, now, "x")]
    if ends == "last commit":  # a timeout with on_timeout="retry" as the claim ends
        assert ledger.commit(claim, [*done, finish_attempt(running[2], State.PENDING, now, "timed out")], last=True)
    else:  # the owner died after a partial commit: its heir puts the rest back
        assert ledger.commit(claim, done, last=False)
        registry.revoke(lease)
        assert ledger.requeue("h1", claim.claim_id, ids, "host h1 lost its lease") == [ids[2]]
    (entry,) = ledger.queue()
    with MeshClient(registry, namespace=ledger.keys.namespace) as client:
        assert client.ack(ids[:2]) == 2
    assert ledger.queue() == [entry]  # unchanged: its owner's watch brings nothing
    won = claimed_as_an_agent_does(ledger, "h2", registry.grant(5))
    assert won is not None
    again, (rerun,) = won
    assert ledger.commit(again, [finish_attempt(rerun, State.SUCCEEDED, time.time(), None)], last=True)
    found = ledger.read(ids)
    assert [found[i].record.state for i in ids] == [State.SUCCEEDED, State.FAILED, State.SUCCEEDED]
    assert [found[i].record.acked_at is not None for i in ids] == [True, True, False]


def test_an_older_writers_entry_carrying_finished_members_is_claimed_with_the_group_read(
    registry: Registry, ledger: Ledger
) -> None:
    """Entries written before stay-home entries of such groups stopped carrying values."""
    ids = batch(ledger, 3)
    claim, running = take(ledger, "h1", registry.grant(5), ids)
    now = time.time()
    finals = [finish_attempt(running[0], State.SUCCEEDED, now, None), give_back(running[1], now, "drain")]
    assert ledger.commit(claim, [*finals, finish_attempt(running[2], State.FAILED, now, "x")], last=True)
    (entry,) = ledger.queue()
    group = ledger.keys.episode(home_id(ids[0]) or "")
    kv, _ = registry.get(group)
    assert kv is not None
    carrying = pack({"ids": list(entry.ids), "with": [kv.value]})  # group and entry in one txn, as it was
    registry.txn([], [Put(group, kv.value), Put(ledger.keys.queued(entry.path), carrying)])
    with MeshClient(registry, namespace=ledger.keys.namespace) as client:
        assert client.ack([ids[0]]) == 1
    assert claimed_as_an_agent_does(ledger, "h2", registry.grant(5)) is not None
    assert states(ledger, ids) == [State.SUCCEEDED, State.RUNNING, State.FAILED]


def test_many_retries_while_the_claim_goes_on_move_out_in_claimable_entries(registry: Registry, ledger: Ledger) -> None:
    ids = batch(ledger, 250)
    lease = registry.grant(5)
    claim, running = take(ledger, "h1", lease, ids)
    retried = [finish_attempt(r, State.PENDING, time.time(), "timed out") for r in running[:200]]
    assert ledger.settle([Settlement(claim, retried, last=False)])[0] == [True]  # cut to fit etcd's limits
    entries = ledger.queue()
    assert sorted(i for e in entries for i in e.ids) == sorted(ids[:200])
    assert max(len(e.ids) for e in entries) <= MAX_OWN_KEYS
    assert states(ledger, ids) == [State.PENDING] * 200 + [State.RUNNING] * 50
    for entry in entries:  # each moved-out entry is one claim of records under keys of their own
        taken, records = take(ledger, "h2", lease, list(entry.ids))
        assert ledger.commit(taken, [finish_attempt(r, State.SUCCEEDED, time.time(), None) for r in records], last=True)
    rest = [finish_attempt(r, State.SUCCEEDED, time.time(), None) for r in running[200:]]
    assert ledger.commit(claim, rest, last=True)
    assert states(ledger, ids) == [State.SUCCEEDED] * 250


def test_a_dead_owners_wide_claim_is_requeued_in_one_txn(registry: Registry, ledger: Ledger) -> None:
    ids = batch(ledger, 250)
    claim, _ = take(ledger, "h1", registry.grant(2), ids)
    for episode_id in ids[:150]:
        ledger.request_cancel(episode_id)
    wait_until(lambda: not keys_under(registry, ledger.keys.claims()), timeout=4, what="lease expiry")
    before = current_revision(registry)
    assert len(ledger.requeue("h1", claim.claim_id, ids, "host h1 lost its lease")) == 250
    assert current_revision(registry) == before + 1
    assert states(ledger, ids) == [State.CANCELLED] * 150 + [State.PENDING] * 100
    (entry,) = ledger.queue()
    assert entry.ids == tuple(ids[150:])
    assert len(keys_under(registry, ledger.keys.cancels())) == 50  # past what one txn holds: left to retention


def test_a_big_submission_starts_with_a_small_txn_and_doubles(registry: Registry, ledger: Ledger) -> None:
    """Agents can start on the first batch while the rest is still encoded and sent."""
    allocator = IdAllocator(registry, ledger.keys, "cl")
    spec = EpisodeSpec(runtime="sleep", batch=250)
    ids = [i for _ in range(8) for i in allocator.next_group(250)[1]]
    ledger.submit([EpisodeRecord(id=i, spec=spec, created_at=time.time(), submitter="cl") for i in ids])
    revisions = [kv.mod_revision for kv in registry.range(ledger.keys.episodes()).kvs]
    per_txn = [revisions.count(r) for r in sorted(set(revisions))]
    assert per_txn == [1, 1, 1, 2, 3]  # groups per txn: up to 64, 128, 256, 512, 1024 records
    assert states(ledger, ids) == [State.PENDING] * 2000


def test_read_finished_builds_only_finished_records_and_finds_moved_members(registry: Registry, ledger: Ledger) -> None:
    ids = batch(ledger, 4)
    claim, running = take(ledger, "h1", registry.grant(5), ids)
    now = time.time()
    retry = finish_attempt(running[1], State.PENDING, now, "flaky")  # moves out to its own key
    assert ledger.commit(claim, [retry, finish_attempt(running[2], State.SUCCEEDED, now, None)], last=False)
    present, done = homes.read_finished(registry, ledger.keys, [*ids, "000000002a-c001-nobody"])
    assert present == set(ids) and list(done) == [ids[2]] and done[ids[2]].state is State.SUCCEEDED
    again, (rerun,) = take(ledger, "h2", registry.grant(5), [ids[1]])
    assert ledger.commit(again, [finish_attempt(rerun, State.FAILED, now, "x")], last=True)
    present, done = homes.read_finished(registry, ledger.keys, ids)
    assert present == set(ids) and sorted(done) == sorted([ids[1], ids[2]]) and done[ids[1]].attempt == 2
