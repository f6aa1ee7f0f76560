"""Leadership in-process (agent/leadership.py): the seat campaigned for, followed, taken over
when nobody can hold it, and lost, on ``memory://`` with real leader-key events
(tests/agentkit.py)."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator

import pytest

from openrange_mesh.agent.leadership import Leadership
from openrange_mesh.agent.sweeper import SLICE_EVERY, Sweeper, Swept
from openrange_mesh.dashboard.process import Serving
from openrange_mesh.model import EpisodeRecord, EpisodeSpec, State, encode_group
from openrange_mesh.model.seat import Seat, read_seat
from openrange_mesh.registry import Delete, Put

from .agentkit import Host, Mesh, events


@pytest.fixture
def mesh() -> Iterator[Mesh]:
    made = Mesh()
    yield made
    made.close()


def seat(mesh: Mesh) -> tuple[Seat | None, int, int]:
    """What the leader key says: its seat, its lease, its create_revision (0s when absent)."""
    kv, _ = mesh.registry.get(mesh.keys.leader())
    return (read_seat(kv.value), kv.lease, kv.create_revision) if kv else (None, 0, 0)


def changes(host: Host) -> float:
    return host.count("openrange_leader_changes_total")


def test_a_vacant_seat_is_campaigned_for_and_the_election_counted_once(mesh: Mesh) -> None:
    h1 = mesh.host("h1")
    h1.join()
    since = mesh.revision()
    assert h1.leadership.step() == f"elected leader of namespace {mesh.keys.namespace}"
    assert h1.leadership.is_leader and h1.leadership.leader == "h1"
    assert seat(mesh)[:2] == (Seat("h1", "http://h1:8080"), h1.lease.lease)  # its dashboard's URL published
    h1.see(since)  # the watch brings our own election too: the same term
    assert h1.leadership.is_leader and changes(h1) == 1
    assert h1.leadership.step() is None  # leading: nothing to campaign for, the sweep was done


def test_a_host_follows_the_leader_it_finds(mesh: Mesh) -> None:
    h1, h2 = mesh.host("h1"), mesh.host("h2")
    h2.join()
    h2.leadership.step()
    h1.join()
    assert h1.leadership.step() == "following leader h2"
    assert not h1.leadership.is_leader and h1.leadership.leader == "h2" and changes(h1) == 1
    assert seat(mesh)[1] == h2.lease.lease  # the seat is left alone


def test_a_draining_host_does_not_campaign(mesh: Mesh) -> None:
    h1 = mesh.host("h1")
    h1.join()
    h1.draining = True
    assert h1.leadership.step() is None
    assert seat(mesh) == (None, 0, 0) and not h1.leadership.is_leader


@pytest.mark.parametrize(
    ("value", "bound", "why"),
    [(Seat("ghost", None).to_bytes(), False, "had no lease"), (b"\xc1 not a seat", True, "could not be read")],
)
def test_a_seat_nobody_can_hold_is_taken_by_compare_and_swap(mesh: Mesh, value: bytes, bound: bool, why: str) -> None:
    h1 = mesh.host("h1")
    since = mesh.revision()
    lease = mesh.registry.grant(30) if bound else 0
    mesh.registry.txn([], [Put(mesh.keys.leader(), value, lease)])
    created = seat(mesh)[2]
    h1.join()
    h1.see(since)  # the watch says the seat is as good as vacant
    assert h1.leadership.leader is None and h1.woken
    line = h1.leadership.step()
    assert line == f"replaced a leader key that {why}; elected leader of namespace {mesh.keys.namespace}"
    assert seat(mesh) == (Seat("h1", "http://h1:8080"), h1.lease.lease, created)  # rewritten, not created anew


def test_a_deleted_seat_deposes_its_leader_and_is_campaigned_for_again(mesh: Mesh) -> None:
    h1, h2 = mesh.host("h1"), mesh.host("h2")
    h1.join()
    h2.join()
    h1.leadership.step()
    h2.leadership.step()
    since = mesh.revision()
    mesh.registry.txn([], [Delete(mesh.keys.leader())])  # as its lease's expiry would
    for host in (h1, h2):
        woken = host.woken
        host.see(since)
        assert host.leadership.leader is None and not host.leadership.is_leader and host.woken == woken + 1
    since = mesh.revision()
    assert h2.leadership.step() == f"elected leader of namespace {mesh.keys.namespace}"
    h1.see(since)
    assert h1.leadership.leader == "h2" and not h1.leadership.is_leader
    assert changes(h1) == 2 and changes(h2) == 2  # h1, then h2: two terms each saw
    assert h1.leadership.step() is None  # a leader is known: no campaign


def test_the_dashboard_serves_while_its_host_leads(mesh: Mesh) -> None:
    """Leadership is handed the dashboard's serving cell, not the dashboard or the agent."""
    h1, h2 = mesh.host("h1"), mesh.host("h2")
    h1.join()
    h2.join()
    serving = Serving(multiprocessing.RawValue("b", 0), multiprocessing.RawValue("d", 0.0))
    serving.lease_lives_until(time.monotonic() + 30)  # the lease keeper's half of the cell
    leadership = Leadership(
        *("h1", mesh.registry, mesh.keys, h1.lease, h1.ledger, h1.metrics),
        ttl=30,
        retention=0,
        draining=lambda: False,
        url=lambda: "",
        serving=serving,
    )
    assert not serving
    leadership.step()
    assert leadership.is_leader and serving
    since = mesh.revision()
    mesh.registry.txn([], [Delete(mesh.keys.leader())])
    h2.leadership.step()  # h2 takes the seat before h1's next pass
    for event in events(mesh.registry, mesh.keys.control(), since):
        if event.kv.key == mesh.keys.leader():
            leadership.on_event(event)
    leadership.step()
    assert leadership.leader == "h2" and not leadership.is_leader and not serving


def test_the_leader_collects_with_a_sweep_at_most_every_tenth_of_the_retention(mesh: Mesh) -> None:
    h1 = mesh.host("h1")
    h1.join()
    leadership = Leadership(
        *("h1", mesh.registry, mesh.keys, h1.lease, h1.ledger, h1.metrics),
        ttl=5,
        retention=3600,
        draining=lambda: False,
        url=lambda: "",
    )
    assert leadership.collect_interval == 300  # a tenth of an hour; a sweep every 50 s

    def acked(episode_id: str) -> None:
        then = time.time() - 7200
        record = EpisodeRecord(episode_id, EpisodeSpec("sleep"), State.SUCCEEDED, created_at=then, acked_at=then)
        mesh.registry.txn([], [Put(mesh.keys.episode(episode_id), record.to_bytes())])

    acked("0000000001-0000-t")
    line = leadership.step()
    assert leadership.is_leader and line is not None and "collected 1 acked records" in line
    acked("0000000001-0001-t")
    leadership.sweep_soon()
    assert leadership.step() is None  # swept, but retention waits for its own interval
    assert mesh.registry.get(mesh.keys.episode("0000000001-0001-t"))[0] is not None


@pytest.mark.parametrize("backend", ["memory", "etcd"])
def test_a_value_retention_cannot_collect_holds_back_neither_the_cycle_nor_the_rest(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """etcd refuses the deletes of an acked group whose members' ids make its keys too many bytes
    for one request (TooLarge; memory:// counts a request's bytes as etcd does). The cycle goes
    on past it: the acked record beside it in its slice goes, the orphan in the next slice is
    requeued, and the group waits for the next cycle. (Its slice raised before it moved on, so
    every later one raised again, and the periodic sweep never requeued anything again.)"""
    mesh = Mesh(None if backend == "memory" else request.getfixturevalue("etcd").url)
    try:
        h2 = mesh.host("h2")
        h2.join()
        then = time.time() - 7200
        huge = [f"0000000000-8{i:03x}-t{'x' * 900_000}" for i in (1, 2)]  # compressed, the group is small
        members = [
            EpisodeRecord(i, EpisodeSpec("sleep"), State.SUCCEEDED, created_at=then, acked_at=then) for i in huge
        ]
        single = EpisodeRecord(
            "0000000001-0000-t", EpisodeSpec("sleep"), State.SUCCEEDED, created_at=then, acked_at=then
        )
        group = mesh.keys.episode("0000000000-8000-t")
        mesh.registry.txn([], [Put(group, encode_group(members)), Put(mesh.keys.episode(single.id), single.to_bytes())])
        (orphan,) = mesh.submit(1)  # sorts after both
        claim, _ = h2.hold([orphan])
        mesh.registry.txn([], [Delete(mesh.keys.claim("h2", claim.claim_id))])
        sweeper = Sweeper(mesh.registry, mesh.keys, mesh.ledger, slice_keys=2)
        sweeper.start(cutoff=time.time())
        assert sweeper.step(now=0.0) == Swept(requeued=0, removed=1)  # the group refused, the single gone
        assert sweeper.step(now=SLICE_EVERY) == Swept(requeued=1, removed=0) and not sweeper.running
        assert mesh.ledger.read([orphan])[orphan].record.state is State.PENDING
        assert mesh.registry.get(group)[0] is not None and mesh.registry.get(mesh.keys.episode(single.id))[0] is None
        sweeper.start(cutoff=time.time())  # the next cycle tries the group again
        assert sweeper.finish() == Swept() and mesh.registry.get(group)[0] is not None
    finally:
        mesh.close()
