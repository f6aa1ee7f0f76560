"""Claims held in-process (agent/holdings.py, committer.py): a claim through its workers'
results, its commits, a fenced commit's resync, a drop and a drain's hand-back, against real
records on ``memory://`` (tests/agentkit.py). Results come in as a worker pool hands them to
the loop (``pool.results``); no worker runs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from openrange_mesh.agent.holdings import COMMIT_LINGER
from openrange_mesh.client.client import MeshClient
from openrange_mesh.ledger.homes import Home
from openrange_mesh.ledger.records import finish_attempt, spent_attempts
from openrange_mesh.model import State
from openrange_mesh.registry import Delete
from openrange_mesh.worker.child import Done

from .agentkit import Host, Mesh
from .helpers import wait_until


@pytest.fixture
def mesh() -> Iterator[Mesh]:
    made = Mesh()
    yield made
    made.close()


@pytest.fixture
def h1(mesh: Mesh) -> Host:
    host = mesh.host("h1")
    host.join()
    return host


def states(mesh: Mesh, ids: list[str]) -> list[State]:
    found = mesh.ledger.read(ids)
    return [found[i].record.state for i in ids]


def test_a_result_is_committed_with_its_claim_and_the_claim_goes(mesh: Mesh, h1: Host) -> None:
    (episode,) = mesh.submit(1)
    claim, _ = h1.hold([episode])
    assert h1.holdings.running == 1 and h1.holdings.owns(episode)
    assert h1.committer.step() is None  # nothing finished yet
    h1.pool.results.put(Done(episode, 1, "succeeded", result={"reward": 1.0}))
    assert h1.committer.step() == "committed 1 episodes"
    assert h1.holdings.running == 0 and not h1.holdings.has_claims
    record = mesh.ledger.read([episode])[episode].record
    assert record.state is State.SUCCEEDED and record.result == {"reward": 1.0}
    assert record.history[-1].token == claim.token  # the claim that ran it, shown on the dashboard
    assert mesh.registry.get(mesh.keys.claim("h1", claim.claim_id))[0] is None
    assert h1.count("openrange_commits_total") == 1
    assert h1.count("openrange_attempts_total", result="succeeded") == 1


def test_a_batch_commits_when_all_are_done_or_its_first_result_has_lingered(mesh: Mesh, h1: Host) -> None:
    ids = mesh.submit_batch(3)
    h1.hold(ids)
    h1.holdings.finished(Done(ids[0], 1, "succeeded"), time.time())
    due_at = h1.holdings.next_commit_at()
    assert due_at is not None
    assert h1.holdings.due(due_at - COMMIT_LINGER / 2, draining=False) == []
    (early,) = h1.holdings.due(due_at + COMMIT_LINGER / 2, draining=False)
    assert [r.id for r in early.finals] == [ids[0]] and not early.last
    assert h1.holdings.due(due_at - COMMIT_LINGER / 2, draining=True)  # a drain commits at once
    for episode in ids[1:]:
        h1.holdings.finished(Done(episode, 1, "failed", error="boom"), time.time())
    (whole,) = h1.holdings.due(due_at - COMMIT_LINGER / 2, draining=False)  # all done: due at once
    assert whole.last and len(whole.finals) == 3
    assert h1.committer.step() == "committed 3 episodes"
    assert states(mesh, ids) == [State.SUCCEEDED, State.FAILED, State.FAILED] and not h1.holdings.has_claims


def test_results_of_what_is_not_held_are_ignored(mesh: Mesh, h1: Host) -> None:
    (episode,) = mesh.submit(1)
    h1.hold([episode])
    h1.holdings.finished(Done("someone-else", 1, "succeeded"), time.time())
    h1.holdings.finished(Done(episode, 0, "succeeded"), time.time())  # an earlier attempt, finishing late
    assert h1.holdings.next_commit_at() is None and h1.committer.step() is None
    assert states(mesh, [episode]) == [State.RUNNING]


def test_a_released_episode_goes_back_unless_its_cancel_was_forwarded(mesh: Mesh, h1: Host) -> None:
    kept, cancelled = mesh.submit(2)
    h1.hold([kept])
    h1.hold([cancelled])
    mesh.ledger.request_cancel(cancelled)
    h1.holdings.cancel_forwarded([cancelled])  # what the cancels step does once a worker has it
    h1.pool.results.put(Done(kept, 1, "released", error="worker died"))
    h1.pool.results.put(Done(cancelled, 1, "released", error="worker died"))
    assert h1.committer.step() == "committed 2 episodes"
    found = mesh.ledger.read([kept, cancelled])
    assert found[kept].record.state is State.PENDING and found[kept].record.history[-1].outcome == "released"
    assert kept in {i for entry in mesh.ledger.queue() for i in entry.ids}  # back in the queue
    assert found[cancelled].record.state is State.CANCELLED
    assert mesh.registry.get(mesh.keys.cancel(cancelled))[0] is None  # its commit took the marker


def test_a_fenced_commit_whose_claim_key_is_gone_drops_the_claim(mesh: Mesh, h1: Host) -> None:
    """As after a lease expiry the agent did not notice: its claim key went and a peer put the
    episode back. The commit is refused by its fencing compare and the claim let go."""
    (episode,) = mesh.submit(1)
    claim, _ = h1.hold([episode])
    mesh.registry.txn([], [Delete(mesh.keys.claim("h1", claim.claim_id))])
    assert mesh.ledger.requeue("h1", claim.claim_id, [episode], "taken over by the test") == [episode]
    h1.pool.results.put(Done(episode, 1, "succeeded"))
    assert h1.committer.step() == "fenced off: 1 results not committed (episodes were taken over)"
    assert not h1.holdings.has_claims and not h1.holdings.owns(episode)
    assert states(mesh, [episode]) == [State.PENDING]
    assert h1.count("openrange_stale_commits_total") == 1 and h1.count("openrange_commits_total") == 0


def test_a_fenced_commit_whose_claim_lives_keeps_what_still_runs(mesh: Mesh, h1: Host) -> None:
    """An earlier commit of ours landed without our hearing back: the same commit again is
    fenced, and the resync forgets what was committed and keeps the rest of the claim."""
    ids = mesh.submit_batch(2)
    claim, running = h1.hold(ids)
    unheard = replace(claim, homes={k: Home(h.key, h.mod_revision, list(h.records)) for k, h in claim.homes.items()})
    first = finish_attempt(running[0], State.SUCCEEDED, time.time(), None, token=claim.token)
    assert mesh.ledger.commit(unheard, [first], last=False)  # landed; our claim never heard
    h1.holdings.finished(Done(ids[0], 1, "succeeded"), time.time())
    wait_until(lambda: h1.holdings.due(time.monotonic(), draining=False), COMMIT_LINGER * 20, COMMIT_LINGER / 5)
    assert h1.committer.step() is None  # fenced, but nothing was taken over
    assert h1.count("openrange_stale_commits_total") == 1
    assert h1.holdings.episodes_of(claim.claim_id) == [ids[1]] and not h1.holdings.owns(ids[0])
    h1.pool.results.put(Done(ids[1], 1, "succeeded"))
    assert h1.committer.step() == "committed 1 episodes"
    assert states(mesh, ids) == [State.SUCCEEDED] * 2 and not h1.holdings.has_claims
    assert mesh.registry.range(mesh.keys.claims()).kvs == []


def test_a_resync_that_finds_everything_committed_deletes_the_claim_key(mesh: Mesh, h1: Host) -> None:
    ids = mesh.submit_batch(2)
    claim, running = h1.hold(ids)
    unheard = replace(claim, homes={k: Home(h.key, h.mod_revision, list(h.records)) for k, h in claim.homes.items()})
    finals = [finish_attempt(r, State.SUCCEEDED, time.time(), None, token=claim.token) for r in running]
    assert mesh.ledger.commit(unheard, finals[:1], last=False)
    assert mesh.ledger.commit(unheard, finals[1:], last=False)  # both landed, unheard; the key lives
    h1.pool.results.put(Done(ids[0], 1, "succeeded"))
    h1.pool.results.put(Done(ids[1], 1, "succeeded"))
    assert h1.committer.step() is None
    assert not h1.holdings.has_claims and mesh.registry.range(mesh.keys.claims()).kvs == []


def test_a_drain_hands_back_what_has_not_finished_in_one_commit_per_claim(mesh: Mesh, h1: Host) -> None:
    ids = mesh.submit_batch(3)
    (single,) = mesh.submit(1, prefix="s")
    h1.hold(ids)
    h1.hold([single])
    h1.holdings.finished(Done(ids[0], 1, "succeeded"), time.time())
    back = h1.holdings.hand_back(time.time(), "released by draining host h1")
    assert [len(item.finals) for item in back] == [3, 1] and all(item.last for item in back)
    for item in back:
        assert mesh.ledger.commit(item.claim, item.finals, last=True, cancelled=item.cancelled)
    h1.holdings.clear()
    assert states(mesh, [*ids, single]) == [State.SUCCEEDED, State.PENDING, State.PENDING, State.PENDING]
    assert sorted(i for entry in mesh.ledger.queue() for i in entry.ids) == sorted([*ids[1:], single])
    assert mesh.registry.range(mesh.keys.claims()).kvs == [] and h1.holdings.running == 0


def test_a_hand_back_refused_after_a_clients_ack_is_made_again_with_the_group_as_it_is(mesh: Mesh) -> None:
    """h1 drains with a batch of three: member 0's result is committed, and the client acks it,
    rewriting the group record. The hand-back compares the group as h1 last wrote it, and etcd
    refuses it: h1 reads the group again and hands back the other two, no attempt spent (they
    were left running, and h1's lease's end had its heir requeue them as lost)."""
    h1 = mesh.host("h1", 1)  # one worker: the hand-back restarts the pool's workers
    h1.join()
    ids = mesh.submit_batch(3)
    _, running = h1.hold(ids)
    h1.pool.results.put(Done(ids[0], 1, "succeeded"))
    h1.draining = True
    assert h1.committer.step() == "committed 1 episodes"
    client = MeshClient(mesh.registry, namespace=mesh.keys.namespace)
    try:
        assert client.ack([ids[0]]) == 1
    finally:
        client.close()
    h1.committer.hand_back()
    found = mesh.ledger.read(ids)
    assert [found[i].record.state for i in ids] == [State.SUCCEEDED, State.PENDING, State.PENDING]
    assert [found[i].record.history[-1].outcome for i in ids[1:]] == ["released"] * 2
    assert all(spent_attempts(found[i].record) == spent_attempts(running[1]) for i in ids[1:])  # none spent
    assert mesh.registry.range(mesh.keys.claims()).kvs == [] and not h1.holdings.has_claims
    assert h1.count("openrange_stale_commits_total") == 1


def test_a_lost_lease_lets_every_claim_go_and_any_doubt_with_it(mesh: Mesh, h1: Host) -> None:
    (episode,) = mesh.submit(1)
    h1.hold([episode])
    h1.holdings.claim_answer_lost()
    assert h1.holdings.claims_unsure
    h1.holdings.clear()
    assert not h1.holdings.claims_unsure and h1.holdings.running == 0 and h1.holdings.record_of(episode) is None


def test_a_cancel_forwarded_under_a_claim_that_went_is_forgotten_with_it(mesh: Mesh, h1: Host) -> None:
    """The lease went with a claim whose cancel had been forwarded; the episode came back (no
    marker left) and is claimed again: its worker dying is a release, not the old cancel."""
    (episode,) = mesh.submit(1)
    claim, _ = h1.hold([episode])
    h1.holdings.cancel_forwarded([episode])
    h1.holdings.clear()  # the lease was lost
    mesh.registry.txn([], [Delete(mesh.keys.claim("h1", claim.claim_id))])  # as its expiry does
    assert mesh.ledger.requeue("h1", claim.claim_id, [episode], "host h1 lost its lease", claim.token)
    h1.hold([episode])
    h1.pool.results.put(Done(episode, 2, "released", error="worker died"))
    assert h1.committer.step() == "committed 1 episodes"
    record = mesh.ledger.read([episode])[episode].record
    assert record.state is State.PENDING and record.history[-1].outcome == "released"
