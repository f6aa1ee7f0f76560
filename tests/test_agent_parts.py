"""The agent's queue decisions in-process (agent/owned.py, peers.py, claimer.py, watcher.py):
which entries a host keeps as hosts join, leave and drain, and when and what it steals. Real
records and host records on ``memory://``, real watch events handed to the watcher by hand; no
loop, no threads, no workers (tests/agentkit.py). The e2e files run the same decisions through
real processes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from openrange_mesh.agent.claimer import CANDIDATE_WINDOW, STEAL_INTERVAL
from openrange_mesh.agent.inbox import DeadHost
from openrange_mesh.model import State, pack
from openrange_mesh.registry import Put

from .agentkit import Host, Mesh, counting
from .helpers import wait_until


@pytest.fixture
def mesh() -> Iterator[Mesh]:
    made = Mesh()
    yield made
    made.close()


# --- ownership --------------------------------------------------------------------------------


def test_each_host_keeps_the_entries_it_owns_oldest_first(mesh: Mesh) -> None:
    h1, h2 = mesh.host("h1", 4), mesh.host("h2", 2)
    h1.join()
    since = mesh.revision()
    h2.join()
    mesh.submit(60)
    h1.see(since)
    h2.see(since)
    weights = {"h1": 4, "h2": 2}
    assert h1.own() == mesh.owned_by("h1", weights) and h2.own() == mesh.owned_by("h2", weights)
    assert len(h1.own()) > len(h2.own()) > 0
    assert sorted(h1.own() + h2.own()) == sorted(mesh.queue())  # every entry has exactly one keeper


def test_a_newcomer_takes_its_share_without_a_relist(mesh: Mesh) -> None:
    h1 = mesh.host("h1")
    h1.join()
    since = mesh.revision()
    mesh.submit(40)
    h1.see(since)
    assert h1.own() == mesh.queue()
    since = mesh.revision()
    mesh.host("h2").join()
    h1.see(since)
    mine = mesh.owned_by("h1", {"h1": 4, "h2": 4})
    assert h1.own() == mine and 0 < len(mine) < 40
    h1.relist_if_asked()
    assert h1.own() == mine  # nothing to re-list: a newcomer only takes entries


def test_a_host_that_leaves_gives_its_entries_back_and_its_claims_to_requeue(mesh: Mesh) -> None:
    h1, h2 = mesh.host("h1"), mesh.host("h2")
    h1.join()
    since = mesh.revision()
    h2.join()
    mesh.submit(40)
    h1.see(since)
    assert h1.own() == mesh.owned_by("h1", {"h1": 4, "h2": 4})
    since = mesh.revision()
    lease = h2.lease.lease
    mesh.registry.revoke(lease)  # what its expiry does: its host key goes
    h1.see(since)
    assert h1.inbox.next_dead_host() == DeadHost("h2", lease, mesh.revision())
    assert h1.inbox.next_dead_host() is None
    h1.relist_if_asked()  # the watcher asked for a re-list: h2's entries are ours now
    assert h1.own() == mesh.queue()


def test_a_draining_host_owns_nothing_and_its_peers_take_its_share(mesh: Mesh) -> None:
    h1, h2 = mesh.host("h1"), mesh.host("h2")
    h1.join()
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
    for host in (h1, h2):
        host.see(since)
        host.relist_if_asked()
    assert h1.own() == mesh.queue() and h2.own() == []


def test_before_its_record_is_seen_a_host_owns_by_its_own_weight(mesh: Mesh) -> None:
    """A host whose own record is gone (its lease lost, not yet registered again) judges entries
    with the weight it would publish: none while it drains."""
    mesh.submit(20)
    h1 = mesh.host("h1")
    h1.watcher.join()  # no record of its own: it owns by capacity
    assert h1.own() == mesh.queue()
    h1.draining = True
    h1.watcher.join()
    assert h1.own() == []


def test_a_corrupt_entry_is_not_kept(mesh: Mesh) -> None:
    h1 = mesh.host("h1")
    h1.join()
    since = mesh.revision()
    mesh.registry.txn([], [Put(mesh.keys.queued("0-junk.1"), b"\xc1 not msgpack")])
    mesh.submit(3)
    h1.see(since)
    assert h1.own() == [name for name in mesh.queue() if "junk" not in name] and len(h1.own()) == 3


# --- stealing ---------------------------------------------------------------------------------


def beside_a_peer(mesh: Mesh, capacity: int = 8) -> tuple[Host, int, int]:
    """h1 (one worker) joined beside a made-up peer h2 whose record says it has ``capacity``
    free workers: h1, h2's lease, and the revision to show h1 events from."""
    h1 = mesh.host("h1", 1)
    lease = mesh.record("h2", capacity)
    h1.join()
    return h1, lease, mesh.revision()


def test_no_steal_read_without_a_sign_of_a_backlog(mesh: Mesh) -> None:
    h1, _, since = beside_a_peer(mesh)
    mesh.submit(6)  # fewer than h2's free workers: its own workers take them
    h1.see(since)
    ranges = counting(mesh.registry, "range")
    mine = h1.own()
    got = h1.claimer.candidates(len(mine) + 2)
    assert [entry.name for entry, _ in got] == mine
    assert h1.peers.steal_wanted and ranges() == 0 and h1.claimer.steal_at() is None


def test_more_arrivals_than_free_workers_is_a_sign_and_the_read_takes_peers_entries(mesh: Mesh) -> None:
    h1, _, since = beside_a_peer(mesh, capacity=2)
    h1.peers.want_steal(True)  # a pass left workers idle
    mesh.submit(30)
    woken = h1.woken
    h1.see(since)
    assert h1.woken > woken  # a sign, and it wants to steal: the loop runs now
    ranges = counting(mesh.registry, "range")
    mine = h1.own()
    read_at = time.monotonic()
    got = [entry.name for entry, _ in h1.claimer.candidates(len(mine) + 3)]
    assert ranges() == 1
    assert got[: len(mine)] == mine and len(got) == len(mine) + 3
    stolen = got[len(mine) :]  # of the oldest 8 per wanted entry, by h1's ranking
    assert not set(stolen) & set(mine) and set(stolen) <= set(mesh.queue()[: CANDIDATE_WINDOW * 3])
    next_read = h1.claimer.steal_at()
    assert next_read is not None and next_read >= read_at + STEAL_INTERVAL  # not again at once


def test_a_full_record_is_a_sign_and_wakes_a_host_that_wants_to_steal(mesh: Mesh) -> None:
    h1, lease, since = beside_a_peer(mesh)
    h1.see(since)
    assert h1.claimer.steal_at() is None
    h1.peers.want_steal(True)
    since = mesh.revision()
    mesh.record("h2", 8, running=8, lease=lease)
    woken = h1.woken
    h1.see(since)
    assert h1.woken == woken + 1 and h1.peers.backlog_at == mesh.revision()
    assert h1.claimer.steal_at() is not None


def test_a_read_that_finds_nothing_waits_for_a_newer_sign(mesh: Mesh) -> None:
    h1, lease, since = beside_a_peer(mesh)
    mesh.record("h2", 8, running=8, lease=lease)
    h1.see(since)
    ranges = counting(mesh.registry, "range")
    assert h1.claimer.candidates(2) == [] and ranges() == 1  # the queue is empty
    assert h1.claimer.steal_at() is None  # no sign since that read
    since = mesh.revision()
    mesh.submit(12)
    h1.see(since)
    assert h1.claimer.steal_at() is not None


def test_a_steal_read_pages_past_entries_nobody_can_claim(mesh: Mesh) -> None:
    """Corrupt entries, and entries whose records are gone, sort first: a thief's read must not
    stop at them, and passes over those it found unclaimable until they change."""
    junk = [Put(mesh.keys.queued(f"0-junk{n:02}.1"), b"\xc1 not msgpack") for n in range(12)]
    gone = [Put(mesh.keys.queued(f"0-gone{n:02}.1"), pack(["0-gone"])) for n in range(12)]
    mesh.registry.txn([], [*junk, *gone])
    h1, _, since = beside_a_peer(mesh, capacity=1)
    mesh.submit(8)
    h1.see(since)  # h2 owns most, with one free worker: a backlog
    real = [name for name in mesh.queue() if name.startswith("e") and name not in h1.own()]

    def steal() -> list[str]:  # one more than h1 has of its own (some of its own are gone too)
        own = h1.own()
        return [entry.name for entry, _ in h1.claimer.candidates(len(own) + 1) if entry.name not in own]

    # 8 a page: an entry whose records are gone is found by a read and dropped by the claim
    # check, once each; undecodable ones are passed within the read
    stolen = wait_until(steal, timeout=30 * STEAL_INTERVAL + 2, interval=STEAL_INTERVAL / 2)
    assert len(stolen) == 1 and stolen[0] in real


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


def test_a_dead_host_whose_revision_is_compacted_is_left_to_the_sweep(mesh: Mesh) -> None:
    h1, episode = dead_peer_with_a_claim(mesh)
    assert not h1.leadership.sweep_due
    mesh.registry.compact(mesh.revision())  # type: ignore[attr-defined]
    assert h1.orphans.step() is None and h1.leadership.sweep_due
    assert h1.leadership.step() == "sweep requeued 1 orphaned episodes"
    assert mesh.ledger.read([episode])[episode].record.state is State.PENDING
