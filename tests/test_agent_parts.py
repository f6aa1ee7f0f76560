"""The agent's queue decisions in-process (agent/owned.py, peers.py, claimer.py, watcher.py):
which entries a host keeps as hosts join, leave and drain, and when and what it steals. Real
records and host records on ``memory://``, real watch events handed to the watcher by hand; no
loop, no threads, no workers (tests/agentkit.py). The e2e files run the same decisions through
real processes."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator

import pytest

from openrange_mesh.agent.claimer import (
    CANDIDATE_WINDOW,
    DRY_PAUSE,
    STEAL_INTERVAL,
    STOOD_PAUSE,
    STOOD_TRIES,
    Candidate,
)
from openrange_mesh.agent.inbox import DeadHost
from openrange_mesh.agent.stopper import Stopper
from openrange_mesh.agent.sweeper import SLICE_EVERY, Sweeper
from openrange_mesh.client.client import MeshClient
from openrange_mesh.errors import RegistryError
from openrange_mesh.ledger import owners
from openrange_mesh.ledger.ledger import Ledger
from openrange_mesh.ledger.placement import UNOWNED
from openrange_mesh.ledger.queue import QueueEntry
from openrange_mesh.ledger.records import finish_attempt
from openrange_mesh.model import EpisodeRecord, EpisodeSpec, HostInfo, State, pack
from openrange_mesh.registry import Delete, Put

from .agentkit import TTL, Host, Mesh, counting, events
from .etcdkit import EtcdServer
from .helpers import take, wait_until
from .meshkit import LossyProxy, txn_puts_under


@pytest.fixture
def mesh() -> Iterator[Mesh]:
    made = Mesh()
    yield made
    made.close()


# --- mailboxes --------------------------------------------------------------------------------


def test_each_host_keeps_the_entries_of_its_own_mailbox_oldest_first(mesh: Mesh) -> None:
    h1, h2 = mesh.host("h1", 4), mesh.host("h2", 2)
    h1.join()
    since = mesh.revision()
    h2.join()
    mesh.submit(60)  # dealt as a client deals them, by the host records' weights (4 and 2)
    h1.see(since)
    h2.see(since)
    assert h1.own() == mesh.mailbox("h1") and len(h1.own()) == 40
    assert h2.own() == mesh.mailbox("h2") and len(h2.own()) == 20
    assert sorted(h1.own() + h2.own()) == sorted(mesh.queue())  # every entry has exactly one keeper


def test_a_newcomer_gets_a_share_of_new_entries_and_takes_none_of_the_old(mesh: Mesh) -> None:
    h1 = mesh.host("h1")
    h1.join()
    since = mesh.revision()
    old = mesh.submit(40, prefix="a")
    h1.see(since)
    assert h1.own() == mesh.queue()
    since = mesh.revision()
    h2 = mesh.host("h2")
    h2.join()
    new = mesh.submit(40, prefix="b")
    h1.see(since)
    h2.see(since)
    assert set(h1.own()) >= {f"{i}.1" for i in old}  # nothing moved: thieves take a backlog
    assert h2.own() == mesh.mailbox("h2")  # half of the new ones, none of the old
    assert len(h2.own()) == len(new) // 2 and all(name.startswith("b") for name in h2.own())


def test_the_leader_moves_a_departed_hosts_mailbox_and_requeues_its_claims(mesh: Mesh) -> None:
    h1, h2 = mesh.host("h1"), mesh.host("h2")
    h1.join()
    assert (h1.leadership.step() or "").startswith("elected leader")
    since = mesh.revision()
    h2.join()
    mesh.submit(40)
    h1.see(since)
    theirs = mesh.mailbox("h2")
    assert theirs and h1.own() == mesh.mailbox("h1")
    since = mesh.revision()
    lease = h2.lease.lease
    mesh.registry.revoke(lease)  # what its expiry does: its host key goes
    h1.see(since)
    assert h1.inbox.next_dead_host() == DeadHost("h2", lease, mesh.revision(), "h1")
    assert h1.inbox.next_dead_host() is None
    since = mesh.revision()
    assert h1.mover.step() == f"moved {len(theirs)} queue entries out of mailboxes nobody empties"
    h1.see(since)
    assert sorted(h1.own()) == mesh.queue() == mesh.mailbox("h1")
    assert h1.count("openrange_queue_moves_total") == len(theirs)
    records = mesh.ledger.read([i for e in mesh.ledger.queue() for i in e.ids])
    assert {v.record.queue for v in records.values()} == {f"h1/{e}" for e in mesh.queue()}  # a cancel finds them


def test_a_draining_hosts_mailbox_is_moved_and_new_entries_pass_it_by(mesh: Mesh) -> None:
    h1, h2 = mesh.host("h1"), mesh.host("h2")
    h1.join()
    h1.leadership.step()
    h2.join()
    since = mesh.revision()
    mesh.submit(40)
    for host in (h1, h2):
        host.see(since)
    assert h2.own()
    since = mesh.revision()
    h2.draining = True  # as Agent.drain: say so in the record on the next pass
    h2.host_record.changed()
    h2.host_record.step()
    h1.see(since)
    h1.mover.step()
    mesh.submit(10, prefix="f")
    assert mesh.mailbox("h2") == [] and mesh.mailbox("h1") == mesh.queue() and len(mesh.queue()) == 50


def test_entries_a_stale_writer_puts_in_a_departed_mailbox_are_moved(mesh: Mesh) -> None:
    """A writer that has not yet seen a host leave places entries in its mailbox after the
    leader moved it: the leader's watch of every queue put finds them."""
    h1, h2 = mesh.host("h1"), mesh.host("h2")
    h1.join()
    h1.leadership.step()
    h2.join()
    since = mesh.revision()
    mesh.registry.revoke(h2.lease.lease)
    h1.see(since)
    assert h1.mover.step() is None  # its mailbox was empty
    stale = Ledger(mesh.registry, mesh.keys, place=lambda name: "h2")
    since = mesh.revision()
    stale.submit([EpisodeRecord(id=f"s{i}", spec=EpisodeSpec(runtime="sleep"), created_at=0) for i in range(3)])
    h1.see(since)
    assert h1.mover.step() == "moved 3 queue entries out of mailboxes nobody empties"
    assert mesh.mailbox("h1") == mesh.queue() == ["s0.1", "s1.1", "s2.1"]


def test_a_new_leader_moves_entries_written_while_no_host_took_work_and_flat_ones(mesh: Mesh) -> None:
    mesh.submit(5)  # no host yet: the unowned mailbox
    record = EpisodeRecord(id="old0", spec=EpisodeSpec(runtime="sleep"), created_at=0, queue="old0.1")
    flat = [Put(mesh.keys.episode("old0"), record.to_bytes()), Put(mesh.keys.queued("old0.1"), pack(["old0"]))]
    mesh.registry.txn([], flat)  # as an agent before mailboxes wrote it
    assert {e.owner for e in mesh.ledger.queue()} == {UNOWNED, ""}
    h1 = mesh.host("h1")
    h1.join()
    assert h1.mover.step() is None  # not the leader
    h1.leadership.step()
    h1.mover.list_all(mesh.revision())  # what its watch thread does on taking office
    assert h1.mover.step() == "moved 6 queue entries out of mailboxes nobody empties"
    assert mesh.mailbox("h1") == mesh.queue() and len(mesh.queue()) == 6


def test_before_its_record_is_seen_a_host_places_by_its_own_weight(mesh: Mesh) -> None:
    """A host whose own record is gone (its lease lost, not yet registered again) places entries
    with the weight it would publish: none while it drains."""
    h1 = mesh.host("h1")
    h1.watcher.join()  # no record of its own: it places by capacity
    assert h1.placement("e1.1") == "h1" and h1.placement.takes_work("h1")
    h1.draining = True
    assert h1.placement("e1.1") == UNOWNED and not h1.placement.takes_work("h1")


def test_a_corrupt_entry_is_not_kept(mesh: Mesh) -> None:
    h1 = mesh.host("h1")
    h1.join()
    since = mesh.revision()
    mesh.registry.txn([], [Put(mesh.keys.queued("h1/0-junk.1"), b"\xc1 not msgpack")])
    mesh.submit(3)
    h1.see(since)
    assert h1.own() == [name for name in mesh.queue() if "junk" not in name] and len(h1.own()) == 3


# --- look-ahead: a batch queued behind the one a worker runs ------------------------------------


def entry_of(mesh: Mesh, prefix: str, count: int, *, seconds: float = 0.0, big: bool = False) -> list[str]:
    """One queue entry of ``count`` episodes, each record under its own key (ids of no block);
    ``big``: records too big for the entry to carry (the claimer reads them)."""
    params: dict[str, object] = {"seconds": seconds, **({"pad": "x" * 40_000} if big else {})}
    spec = EpisodeSpec(runtime="sleep", batch=count, params=params)
    records = [EpisodeRecord(id=f"{prefix}{i:05d}", spec=spec, created_at=time.time()) for i in range(count)]
    mesh.ledger.submit(records)
    return [r.id for r in records]


def test_a_look_ahead_slot_passes_over_a_batch_entry_with_one_episode_pending(mesh: Mesh) -> None:
    """The claim of a batch entry with one record pending (here: one record malformed) takes
    a single episode, which only an idle worker can take: a worker running a batch queues
    the next batch behind it, and the single waits for an idle worker (it used to be claimed,
    and its dispatch ended the agent's loop)."""
    h1 = mesh.host("h1", 1)
    since = mesh.revision()
    h1.join()
    h1.pool.start()
    running = entry_of(mesh, "a", 2, seconds=60)
    h1.see(since)
    assert h1.claimer.step() == f"claimed {', '.join(running)}"
    assert (h1.pool.idle(), h1.pool.ahead()) == (0, 1)
    since = mesh.revision()
    lone = entry_of(mesh, "b", 2, big=True)
    mesh.registry.txn([], [Put(mesh.keys.episode(lone[1]), b"\xc1 not msgpack")])
    behind = entry_of(mesh, "c", 2)
    h1.see(since)
    assert h1.claimer.step() is None and h1.own() == ["b00000.1", "c00000.1"]
    assert h1.claimer.step() == f"claimed {', '.join(behind)}"  # the next batch, without a read of b's
    assert h1.own() == ["b00000.1"] and mesh.ledger.read(lone)[lone[0]].record.state is State.PENDING
    assert h1.holdings.running == 4 and (h1.pool.idle(), h1.pool.ahead()) == (0, 0)


def test_entries_paired_with_commits_go_to_idle_workers_first(mesh: Mesh) -> None:
    """Two claims end in one commit step, one worker idle and one running a batch with
    nothing behind it: the single claimed for the idle worker goes there, the batch queues
    behind the other's (the batch used to be dispatched first, to the idle worker, and the
    single's dispatch then ended the agent's loop)."""
    h1 = mesh.host("h1", 2)
    since = mesh.revision()
    h1.join()
    h1.pool.start()
    first = entry_of(mesh, "a", 1) + entry_of(mesh, "b", 2)
    behind = entry_of(mesh, "c", 2, seconds=60)
    h1.see(since)
    assert h1.claimer.step() == f"claimed {', '.join(first)}"
    assert h1.claimer.step() == f"claimed {', '.join(behind)}"  # behind b's batch
    wait_until(lambda: [h1.pool.wait(0.05), h1.pool.results.qsize() == 3][-1], what="a and b done")
    assert (h1.pool.idle(), h1.pool.ahead()) == (1, 1)
    since = mesh.revision()
    single, batch = entry_of(mesh, "s", 1), entry_of(mesh, "t", 2)
    h1.see(since)
    line = h1.committer.step()
    assert line == f"committed 3 episodes; claimed {', '.join(single + batch)}"
    assert (h1.pool.idle(), h1.pool.ahead(), h1.holdings.running) == (0, 0, 5)


def test_a_claim_no_worker_can_take_is_released_not_dispatched(mesh: Mesh) -> None:
    """A backstop: a claim won with no worker free for it (claims follow the pool's idle()
    and ahead(), so none should be) goes back with its commit, spending no attempt; the loop
    goes on (a dispatch raised, and ended it)."""
    h1 = mesh.host("h1", 1)  # its pool is not started: no worker at all
    since = mesh.revision()
    h1.join()
    (episode,) = mesh.submit(1)
    h1.see(since)
    (entry,) = mesh.ledger.queue()
    records = mesh.ledger.read(list(entry.ids))
    won = h1.ledger.claim("h1", h1.lease.lease, entry, records)
    assert h1.claimer.took([(entry, records)], [won]) == [episode] and h1.woken
    assert h1.committer.step() == "committed 1 episodes"
    record = mesh.ledger.read([episode])[episode].record
    assert record.state is State.PENDING and record.history[-1].outcome == "released"
    assert not h1.holdings.has_claims and not mesh.registry.range(mesh.keys.claims()).kvs


@contextlib.contextmanager
def claim_answer_lost(etcd: EtcdServer, seconds: float = 0.0) -> Iterator[tuple[Mesh, Host, str, int]]:
    """A mesh on a real etcd behind a proxy, and h1 (one started worker) whose claim txn of its
    one episode (``seconds`` long) landed with its answer lost: (mesh, h1, the episode, the
    revision before its claim)."""
    proxy = LossyProxy(etcd.host, etcd.client_port)
    mesh = Mesh(f"etcd://{proxy.endpoint}")
    try:
        h1 = mesh.host("h1", 1)
        h1.join()
        h1.pool.start()
        (episode,) = mesh.submit(1, seconds=seconds)
        since = mesh.revision()
        h1.watcher.load_queue(since)  # what its queue watch brings
        proxy.lose_answer_once(txn_puts_under(mesh.keys.host_claims("h1")))
        with pytest.raises(RegistryError):
            h1.claimer.step()
        assert proxy.lost and h1.holdings.claims_unsure and not h1.holdings.has_claims
        yield mesh, h1, episode, since
    finally:
        mesh.close()
        proxy.close()


def test_a_claim_whose_answer_was_lost_is_released_at_once_by_a_draining_host(etcd: EtcdServer) -> None:
    """h1's claim txn lands and its answer is lost (a real etcd behind a proxy); then h1 drains.
    Its claim step finds the claim under its lease and releases it, no attempt spent (it used to
    return at once while draining: the drain ended with the claim unknown, and its lease's end
    had the heir requeue an episode that never ran as lost)."""
    with claim_answer_lost(etcd) as (mesh, h1, episode, _):
        h1.draining = True
        assert h1.claimer.step() == f"released {episode} (their claim's answer was lost; we take no work)"
        assert not h1.holdings.claims_unsure and h1.pool.idle() == 1 and h1.woken
        assert h1.committer.step() == "committed 1 episodes"
        record = mesh.ledger.read([episode])[episode].record
        assert record.state is State.PENDING and record.history[-1].outcome == "released"
        assert not h1.holdings.has_claims and not mesh.registry.range(mesh.keys.claims()).kvs


def test_a_cancel_asked_before_a_claim_with_a_lost_answer_is_adopted_stops_its_episode(etcd: EtcdServer) -> None:
    """h1's claim txn lands and its answer is lost; a client asks to cancel the episode, now
    running under h1's claim, and h1's loop drops the marker's event (it does not know the claim
    is its own). Adopting the claim reads its episodes' markers: the cancel reaches the worker
    (the episode had run to its end, the cancel lost)."""
    with claim_answer_lost(etcd, seconds=60) as (mesh, h1, episode, since):
        mesh.ledger.request_cancel(episode)
        h1.see(since)
        stopper = Stopper(h1.pool, h1.holdings, h1.inbox)
        assert stopper.step_cancels() is None  # not ours as far as h1 knows: dropped
        assert h1.claimer.step() == f"adopted {episode} (their claim's answer was lost)"
        assert stopper.step_cancels() == "cancelling 1 episodes"
        wait_until(lambda: [h1.pool.wait(0.05), h1.pool.results.qsize() == 1][-1], 20, what="the episode stopped")
        assert h1.pool.results.get().kind == "cancelled"


def left_pending_beside_finished(mesh: Mesh, width: int) -> list[str]:
    """A batch of ``width`` whose claim (by a host now gone) ended with a commit that finished
    all members but the last, which went back to pending (a timeout with on_timeout="retry"):
    it stays in the group, listed by one new entry that carries no value (an ack may rewrite
    the finished members at any time)."""
    ids = mesh.submit_batch(width)
    claim, running = take(mesh.ledger, "h0", mesh.registry.grant(TTL), ids)
    now = time.time()
    finals = [finish_attempt(r, State.SUCCEEDED, now, None) for r in running[:-1]]
    assert mesh.ledger.commit(claim, [*finals, finish_attempt(running[-1], State.PENDING, now, "timed out")], last=True)
    return ids


def claim_racing_an_ack(h1: Host, mesh: Mesh, acked: str) -> list[Candidate]:
    """h1's claim step, with a client's ack of the finished member ``acked`` landing between its
    read of the group (``candidates``) and its claim txn."""
    candidates = h1.claimer.candidates(1)
    with MeshClient(mesh.registry, namespace=mesh.keys.namespace) as client:
        assert client.ack([acked]) == 1
    _, won = h1.claimer.settle([], candidates)  # every claim in one round trip, as the claim step makes them
    assert h1.claimer.took(candidates, won) == []
    return candidates


def test_an_entry_whose_claim_lost_only_to_a_clients_ack_is_kept_and_claimed_next(registry_url: str) -> None:
    """The ack rewrote the group, so the claim's group compare failed, though the entry did not
    change: no watch event brings it back. h1 keeps it and claims it on its next step (it was
    dropped as taken, and on a one-host mesh the member stayed pending as long as h1 lived)."""
    mesh = Mesh(registry_url)
    try:
        h1 = mesh.host("h1", 1)
        h1.join()
        h1.pool.start()
        ids = left_pending_beside_finished(mesh, 3)
        h1.watcher.load_queue(mesh.revision())  # what its queue watch brings
        (entry,) = mesh.ledger.queue()
        assert h1.own() == [entry.name] and not entry.values  # h1 reads the group
        (lost,) = claim_racing_an_ack(h1, mesh, ids[0])
        assert lost[0] == entry and h1.own() == [entry.name]
        assert h1.count("openrange_claims_total", result="lost") == 1
        assert h1.claimer.step() == f"claimed {ids[2]}"
        assert h1.own() == [] and h1.holdings.running == 1 and h1.count("openrange_claims_total", result="won") == 1
        found = mesh.ledger.read(ids)
        assert [found[i].record.state for i in ids] == [State.SUCCEEDED, State.SUCCEEDED, State.RUNNING]
        assert found[ids[0]].record.acked_at is not None
    finally:
        mesh.close()


def test_an_entry_that_keeps_losing_as_it_stood_is_tried_again_after_a_pause(mesh: Mesh) -> None:
    """Each claim of the entry loses with its records read afresh: past STOOD_TRIES in a row it
    waits out STOOD_PAUSE between tries instead of waking the loop into another at once."""
    h1 = mesh.host("h1", 1)
    h1.join()
    h1.pool.start()
    ids = left_pending_beside_finished(mesh, STOOD_TRIES + 1)
    h1.watcher.load_queue(mesh.revision())
    (entry,) = mesh.ledger.queue()
    for acked in ids[:STOOD_TRIES]:
        claim_racing_an_ack(h1, mesh, acked)
    woken = h1.woken
    assert h1.claimer.step() is None and h1.own() == [entry.name] and h1.woken == woken  # passed over
    wait_until(lambda: h1.claimer.candidates(1), timeout=STOOD_PAUSE + 5, what="its pause over")
    assert h1.claimer.step() == f"claimed {ids[-1]}"


# --- stealing ---------------------------------------------------------------------------------


def beside_a_peer(mesh: Mesh, capacity: int = 8) -> tuple[Host, int, int]:
    """h1 (one worker) joined beside a made-up peer h2 whose record says it has ``capacity``
    free workers: h1, h2's lease, and the revision to show h1 events from."""
    h1 = mesh.host("h1", 1)
    lease = mesh.record("h2", capacity)
    h1.join()
    return h1, lease, mesh.revision()


def test_a_dry_mailbox_reads_once_then_waits_for_a_sign(mesh: Mesh) -> None:
    h1, _, since = beside_a_peer(mesh)
    h1.see(since)
    ranges = counting(mesh.registry, "range")
    assert h1.claimer.candidates(2) == [] and ranges() == 2  # ran dry: one look at peers' mailboxes, around
    assert h1.claimer.steal_at() is None  # it found nothing, and no sign since
    assert h1.claimer.candidates(2) == [] and ranges() == 2  # idle: no more reads


def test_a_trickle_of_single_entries_costs_at_most_a_fruitless_read_a_second(mesh: Mesh) -> None:
    """A mesh with workers to spare, fed one entry at a time: each entry leaves its owner with
    too few of its own, but a read that found nothing keeps the next ones quiet for a while."""
    h1 = mesh.host("h1")
    h1.join()
    h1.claimer.candidates(2)  # the first look, at joining: nothing
    ranges = counting(mesh.registry, "range")

    def trickle(prefix: str) -> list[str]:
        since = mesh.revision()
        mesh.submit(1, prefix=prefix)
        h1.see(since)
        got = [entry for entry, _ in h1.claimer.candidates(2)]
        h1.owned.done_with(got)  # as a claim answered does
        return [entry.name for entry in got]

    # each submission reads the host records once (placement); the rest would be steal reads
    assert trickle("a") == ["a00000.1"] and trickle("b") == ["b00000.1"] and ranges() == 2
    time.sleep(DRY_PAUSE)
    assert trickle("c") == ["c00000.1"] and ranges() == 4  # a second later: one look again


def test_a_thief_whose_own_entries_run_out_takes_a_peers_oldest(mesh: Mesh) -> None:
    h1, _, since = beside_a_peer(mesh, capacity=2)
    h1.claimer.candidates(1)  # it had wanted work before: no transition left to make
    mesh.submit(30)
    mesh.mark()  # as the client does with its submission
    h1.see(since)
    ranges = counting(mesh.registry, "range")
    mine = h1.own()
    assert 0 < len(mine) < 30
    read_at = time.monotonic()
    time.sleep(STEAL_INTERVAL)
    got = [entry.name for entry, _ in h1.claimer.candidates(len(mine) + 3)]
    assert ranges() == 1
    assert got[: len(mine)] == mine and len(got) == len(mine) + 3
    stolen = got[len(mine) :]  # of the oldest 8 per wanted entry of h2's mailbox, by h1's ranking
    assert not set(stolen) & set(mine) and set(stolen) <= set(mesh.mailbox("h2")[: CANDIDATE_WINDOW * 3])
    next_read = h1.claimer.steal_at()
    assert next_read is None or next_read >= read_at + STEAL_INTERVAL  # not again at once


def test_a_thief_that_lost_the_race_for_what_it_stole_looks_again(mesh: Mesh) -> None:
    """A steal read found an entry, but another thief's claim took it first: the thief reads
    again after STEAL_INTERVAL, not at the next sign that work was queued (it had waited for
    one with a worker idle while a dead host's mailbox still held a round of entries)."""
    mesh.record("h2", 8)
    mesh.submit(30)  # all h2's: nobody else was there
    h1 = mesh.host("h1", 1)
    h1.join()
    candidates = h1.claimer.candidates(1)  # ran dry (it never had any): a steal read at once
    (stolen,) = [entry for entry, _ in candidates]
    rival = mesh.host("h3", 1)
    rival.join()
    rival.hold(list(stolen.ids))  # its claim lands first
    _, won = h1.claimer.settle([], candidates)
    h1.claimer.took(candidates, won)
    assert won == [None]
    due = h1.claimer.steal_at()
    assert due is not None and due <= time.monotonic() + STEAL_INTERVAL
    time.sleep(STEAL_INTERVAL)
    again = [entry.name for entry, _ in h1.claimer.candidates(1)]
    assert len(again) == 1 and again[0] in mesh.mailbox("h2") and again[0] != stolen.name


def test_a_thief_whose_read_found_what_nobody_can_claim_reads_on_past_it(mesh: Mesh) -> None:
    """A steal read found only a peer's entry whose records are gone: with no sign coming (a
    client writes none when every host got a share), the thief reads again STEAL_INTERVAL
    later, past it, and finds what came since; a read that finds nothing ends it."""
    mesh.record("h2", 8)
    mesh.registry.txn([], [Put(mesh.keys.queued("h2/0-gone.1"), pack(["0-gone"]))])
    h1 = mesh.host("h1", 1)
    h1.join()
    assert h1.claimer.candidates(1) == []  # ran dry: its read found one, not claimable

    def read() -> list[QueueEntry]:
        due = h1.claimer.steal_at()
        assert due is not None and due <= time.monotonic() + STEAL_INTERVAL
        wait_until(lambda: time.monotonic() >= due, timeout=2, what="the next steal read")
        return [entry for entry, _ in h1.claimer.candidates(1)]

    Ledger(mesh.registry, mesh.keys, place=lambda _: "h2").submit(
        [EpisodeRecord(id="e00000", spec=EpisodeSpec(runtime="sleep"), created_at=time.time())]
    )
    (found,) = read()
    assert found.ids == ("e00000",)
    mesh.registry.txn([], [Delete(mesh.keys.queued(found.path))])  # another thief took it
    assert read() == [] and h1.claimer.steal_at() is None


def test_a_submission_marker_is_a_sign_and_wakes_a_host_that_wants_to_steal(mesh: Mesh) -> None:
    """A submission that gave a host no share of it: the client's marker tells it to look."""
    h1, _, since = beside_a_peer(mesh)
    h1.see(since)
    h1.claimer.candidates(1)  # ran dry: its one read found nothing
    assert h1.claimer.steal_at() is None
    since = mesh.revision()
    mesh.mark()
    woken = h1.woken
    h1.see(since)
    assert h1.woken == woken + 1 and h1.peers.backlog_at == mesh.revision()
    due = h1.claimer.steal_at()  # owners claim first: the read looks at what they left
    assert due is not None and due >= h1.peers.sign_at + STEAL_INTERVAL


def test_a_steal_read_starts_at_a_peers_mailbox_and_wraps_around(mesh: Mesh) -> None:
    h1 = mesh.host("h1", 1)
    mesh.record("a", 8)
    h1.join()
    since = mesh.revision()
    mesh.submit(40)  # a's and h1's
    mesh.record("z", 8)  # its mailbox (the last) is empty
    h1.see(since)

    def stolen() -> list[str]:
        own = h1.own()
        return [entry.name for entry, _ in h1.claimer.candidates(len(own) + 2) if entry.name not in own]

    got = wait_until(stolen, timeout=2, interval=STEAL_INTERVAL / 2)
    assert len(got) == 2 and set(got) <= set(mesh.mailbox("a"))  # from a's, or from z's on around to a's


def test_a_steal_read_pages_past_entries_nobody_can_claim(mesh: Mesh) -> None:
    """Corrupt entries, and entries whose records are gone, sort first in a peer's mailbox: a
    thief's read must not stop at them, and passes over those it found unclaimable until they
    change."""
    junk = [Put(mesh.keys.queued(f"h2/0-junk{n:02}.1"), b"\xc1 not msgpack") for n in range(12)]
    gone = [Put(mesh.keys.queued(f"h2/0-gone{n:02}.1"), pack(["0-gone"])) for n in range(12)]
    mesh.registry.txn([], [*junk, *gone])
    h1, _, since = beside_a_peer(mesh, capacity=1)
    mesh.submit(8)
    h1.see(since)
    real = [name for name in mesh.mailbox("h2") if name.startswith("e")]

    def steal() -> list[str]:  # one more than h1 has of its own
        own = h1.own()
        return [entry.name for entry, _ in h1.claimer.candidates(len(own) + 1) if entry.name not in own]

    # 8 a page: an entry whose records are gone is found by a read and dropped by the claim
    # check, once each; undecodable ones are passed within the read. A submission marker is the
    # sign that brings each next read after the first.
    def stolen() -> list[str]:
        got = steal()
        if not got:
            mesh.mark()  # a newer sign
            h1.see(mesh.revision() - 1)
        return got

    found = wait_until(stolen, timeout=30 * STEAL_INTERVAL + 2, interval=STEAL_INTERVAL / 2)
    assert len(found) == 1 and found[0] in real


def test_a_host_record_is_written_when_peers_must_see_a_change_not_as_episodes_run(mesh: Mesh) -> None:
    """Every peer's control watch receives each write of a host record: a running count that
    changed with every episode would grow their events with the fleet."""
    h1 = mesh.host("h1")
    h1.join()
    (episode,) = mesh.submit(1)
    h1.hold([episode])
    assert h1.host_record.refresh() == []  # running one more is no reason to write
    h1.draining = True
    h1.host_record.changed()
    (op,) = h1.host_record.refresh()
    info = HostInfo.from_bytes(op.value)
    assert info.draining and info.running == 1 and h1.host_record.refresh() == []


# --- what the watch hands the loop ------------------------------------------------------------


def test_cancel_markers_reach_the_inbox_and_wake_the_loop(mesh: Mesh) -> None:
    h1 = mesh.host("h1")
    h1.join()
    since = mesh.revision()
    (episode,) = mesh.submit(1)
    mesh.ledger.request_cancel(episode)
    woken = h1.woken
    h1.see(since)
    assert h1.inbox.take_cancels() == {episode} and h1.inbox.take_cancels() == set()
    assert h1.woken > woken


def dead_peer_with_a_claim(mesh: Mesh) -> tuple[Host, str]:
    """h1 (elected, its first sweep done), having seen h2 hold a claim of one episode and then
    lose its lease; the episode."""
    h1, h2 = mesh.host("h1"), mesh.host("h2")
    h1.join()
    assert (h1.leadership.step() or "").startswith("elected leader")
    since = mesh.revision()
    h2.join()
    (episode,) = mesh.submit(1)
    h2.hold([episode])
    mesh.registry.revoke(h2.lease.lease)
    h1.see(since)
    return h1, episode


def test_the_claims_of_a_dead_host_are_requeued_from_the_revision_before(mesh: Mesh) -> None:
    h1, episode = dead_peer_with_a_claim(mesh)
    assert h1.orphans.step() == "requeued 1 episodes of dead hosts"
    record = mesh.ledger.read([episode])[episode].record
    assert record.state is State.PENDING and record.history[-1].outcome == "retried"
    assert record.history[-1].error == "host h2 lost its lease"
    assert h1.orphans.step() is None and h1.count("openrange_requeues_total") == 1


def dead_among_four(mesh: Mesh) -> tuple[list[Host], str, list[str]]:
    """h1 (the leader), h2, h3 and h4 live, having seen a fifth host hold two claims and lose its
    lease; the fifth is named so that its heir is not the leader. Returns the live hosts, the
    heir and the two episodes."""
    live = ["h1", "h2", "h3", "h4"]
    dead_name = next(n for n in (f"d{i}" for i in range(100)) if owners.heir(n, live) != "h1")
    hosts = [mesh.host(name) for name in live]
    since = mesh.revision()
    for host in hosts:
        host.join()
    assert (hosts[0].leadership.step() or "").startswith("elected leader")
    dead = mesh.host(dead_name)
    dead.join()
    episodes = mesh.submit(2)
    for episode in episodes:
        dead.hold([episode])
    mesh.registry.revoke(dead.lease.lease)
    for host in hosts:
        host.see(since)
    return hosts, str(owners.heir(dead_name, live)), episodes


def test_a_dead_hosts_claims_are_put_back_by_its_heir_and_the_leader_alone(mesh: Mesh) -> None:
    """Issue 15: a departure costs O(its share), done once. Every agent names the same heir;
    the others read nothing; the heir puts the claims back and leaves a marker for thieves (the
    episodes may have gone to a host that died with it); the leader's compares then fail."""
    hosts, heir, episodes = dead_among_four(mesh)
    dead = [host.inbox.next_dead_host() for host in hosts]
    assert {d.heir for d in dead if d is not None} == {heir} and None not in dead
    for host, found in zip(hosts, dead, strict=True):
        host.inbox.host_died(found)  # put back for the step
    requests = counting(mesh.registry, "range")
    others = [h for h in hosts if h.name not in (heir, "h1")]
    assert [h.orphans.step() for h in others] == [None, None] and requests() == 0
    since = mesh.revision()
    assert next(h for h in hosts if h.name == heir).orphans.step() == "requeued 2 episodes of dead hosts"
    marker = events(mesh.registry, mesh.keys.queued_marker(), since)
    assert [e.kv.value for e in marker] == [heir.encode()]
    assert hosts[0].orphans.step() is None and requests() == 2  # the heir's read, the leader's
    outcomes = [(v.record.state, v.record.history[-1].outcome) for v in mesh.ledger.read(episodes).values()]
    assert outcomes == [(State.PENDING, "retried")] * 2


def test_an_heirs_marker_goes_when_a_requeue_of_its_step_lost_its_answer(etcd: EtcdServer) -> None:
    """The second of a dead host's two requeues lands, and its answer is lost (a real etcd
    behind a proxy): the step raises, and its retry finds both done. The marker that the first
    one owed still goes, on the retry (it used to go only with requeues of the same step)."""
    proxy = LossyProxy(etcd.host, etcd.client_port)
    mesh = Mesh(f"etcd://{proxy.endpoint}")
    try:
        h1 = mesh.host("h1")
        h1.join()
        dead = mesh.host("d1")
        dead.join()
        episodes = mesh.submit(2)
        for episode in episodes:
            dead.hold([episode])
        mesh.registry.revoke(dead.lease.lease)
        h1.inbox.host_died(DeadHost("d1", dead.lease.lease, mesh.revision(), "h1"))  # as the watch says it
        marked = mesh.revision()
        seen = itertools.count(1)
        proxy.lose_answer_once(lambda path, body: txn_puts_under(mesh.keys.queue())(path, body) and next(seen) == 2)
        with pytest.raises(RegistryError):
            h1.orphans.step()
        assert proxy.lost and h1.orphans.step() == "queued marker for episodes requeued before"
        mark, _ = mesh.registry.get(mesh.keys.queued_marker())
        assert mark is not None and mark.value == b"h1" and mark.mod_revision > marked
        assert all(v.record.state is State.PENDING for v in mesh.ledger.read(episodes).values())
        assert h1.orphans.step() is None and h1.count("openrange_requeues_total") == 1  # the answer heard
    finally:
        mesh.close()
        proxy.close()


def test_the_leader_puts_back_what_a_dead_heir_did_not(mesh: Mesh) -> None:
    hosts, heir, episodes = dead_among_four(mesh)
    assert hosts[0].orphans.step() == "requeued 2 episodes of dead hosts"
    assert next(h for h in hosts if h.name == heir).orphans.step() is None  # its compares fail
    assert all(v.record.state is State.PENDING for v in mesh.ledger.read(episodes).values())


def test_a_dead_host_whose_revision_is_compacted_is_left_to_the_sweep(mesh: Mesh) -> None:
    h1, episode = dead_peer_with_a_claim(mesh)
    assert not h1.leadership.sweep_due
    mesh.registry.compact(mesh.revision())  # type: ignore[attr-defined]
    assert h1.orphans.step() is None and h1.leadership.sweep_due
    assert h1.leadership.step() == "sweep requeued 1 orphaned episodes"
    record = mesh.ledger.read([episode])[episode].record
    assert record.state is State.PENDING
    assert record.history[-1].error == "host h2 lost its lease"  # as the orphans step says it: its key is gone


def test_a_periodic_sweep_reads_a_slice_of_the_namespace_per_pass(mesh: Mesh) -> None:
    """The leader's cycle reads ``slice_keys`` values a pass, at most every SLICE_EVERY, at
    the revision it started at (a new one past a compaction): a batch's members go back with
    their group, a live claim's episode stays, and an orphan made after the cycle started
    waits for the next cycle."""
    h2 = mesh.host("h2")
    h2.join()
    batch = mesh.submit_batch(5)  # its group's key sorts first
    singles = mesh.submit(25)
    live = mesh.submit(1, prefix="f")
    claims = [h2.hold(batch)[0], *(h2.hold([e])[0] for e in singles)]
    h2.hold(live)
    mesh.registry.txn([], [Delete(mesh.keys.claim("h2", c.claim_id)) for c in claims])
    sweeper = Sweeper(mesh.registry, mesh.keys, mesh.ledger, slice_keys=10)
    sweeper.start()
    (late,) = mesh.submit(1, prefix="z")
    late_claim, _ = h2.hold([late])
    mesh.registry.txn([], [Delete(mesh.keys.claim("h2", late_claim.claim_id))])
    first = sweeper.step(now=0.0).requeued
    assert sweeper.step(now=SLICE_EVERY / 2).requeued == 0  # not due yet
    rest = [sweeper.step(now=SLICE_EVERY * n).requeued for n in (1, 2, 3)]
    assert (first, rest, sweeper.running) == (14, [10, 6, 0], False)  # 5 + 9 singles, 10, the last 6
    states = {i: v.record.state for i, v in mesh.ledger.read([*batch, *singles, *live, late]).items()}
    assert {states[i] for i in [*batch, *singles]} == {State.PENDING}
    assert states[live[0]] is State.RUNNING and states[late] is State.RUNNING
    sweeper.start()
    mesh.submit(1, prefix="y")  # a revision past the cycle's, compacted away
    mesh.registry.compact(mesh.revision())  # type: ignore[attr-defined]
    assert sweeper.finish().requeued == 1  # read past the compaction, at a new revision
    assert mesh.ledger.read([late])[late].record.state is State.PENDING


def test_the_sweep_says_a_claim_vanished_when_its_host_lives(mesh: Mesh) -> None:
    h1, h2 = mesh.host("h1"), mesh.host("h2")
    h1.join()
    assert (h1.leadership.step() or "").startswith("elected leader")
    h2.join()
    (episode,) = mesh.submit(1)
    claim, _ = h2.hold([episode])
    mesh.registry.txn([], [Delete(mesh.keys.claim("h2", claim.claim_id))])  # gone, its host still here
    h1.leadership.sweep_soon()
    assert h1.leadership.step() == "sweep requeued 1 orphaned episodes"
    assert mesh.ledger.read([episode])[episode].record.history[-1].error == "claim of host h2 vanished"
