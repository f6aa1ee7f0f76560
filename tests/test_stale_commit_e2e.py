"""A stale commit that reaches etcd, end to end: the fencing compare (design/README.md, "Leases,
claims and fencing") judged by etcd itself, not the owner noticing first that its lease is gone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .etcdkit import EtcdServer
from .helpers import wait_until
from .meshkit import LossyProxy, Mesh, commit_outcomes, commit_under, committed_in

TTL = 2
REAPER = 0.5  # etcd looks for expired leases twice a second
SLACK = 1.0  # a watch delivery, a loop pass, a loaded 2-core machine


@pytest.fixture
def proxy(etcd: EtcdServer) -> Iterator[LossyProxy]:
    proxy = LossyProxy(etcd.host, etcd.client_port)
    yield proxy
    proxy.close()


@pytest.fixture
def mesh(proxy: LossyProxy, etcd: EtcdServer, tmp_path: Path) -> Iterator[Mesh]:
    mesh = Mesh(etcd.url, tmp_path / "mesh", ttl=TTL)
    yield mesh
    print(mesh.report())  # pytest shows it when the test failed
    mesh.close()


def test_stale_commit_reaches_etcd_and_its_compare_refuses_it(proxy: LossyProxy, mesh: Mesh) -> None:
    """h2 talks to etcd through a proxy that holds its first commit in flight and from then on
    forwards nothing of h2's (keepalives included), so h2's lease expires while the commit is on
    its way, and h1 requeues the episodes, runs them again and commits them. Only then does the
    held request reach etcd, and etcd must refuse it by the compare (``succeeded`` false, no
    error): the claim key it compares is gone.

    h2 gives up on the request long before: its registry's request timeout is retry_timeout / 2
    (0.44 s at ttl 2), and a write that may have reached etcd is not retried. The proxy sends it
    anyway, on a connection of its own: etcd judges the request, not whether its sender still
    waits, and a network that delays a packet past its sender's patience (a congested queue, a
    proxy or load balancer that retries upstream) delivers exactly that. h2's later attempts at
    the same commit are withheld, never forwarded, so only the held request is stale in etcd."""
    claims, episodes = mesh.keys.host_claims("h2"), mesh.keys.episodes()
    proxy.hold_once(commit_under(claims, episodes))
    agents = [mesh.start_agent("h2", wait=False, registry=proxy.endpoint), mesh.start_agent("h1", wait=False)]
    for agent in agents:
        mesh.wait_joined(agent)
    old = mesh.host_kv("h2")
    assert old is not None
    ids = mesh.submit_commands(12, 0.3)

    held = wait_until(lambda: proxy.held, 20, interval=0.02, what="h2's commit to be held")
    stale = [mesh.keys.name_of(key.encode(), episodes) for key in committed_in(held.body, claims, episodes)]
    assert stale and set(stale) <= set(ids), stale
    wait_until(lambda: mesh.host_kv("h2") is None, TTL + REAPER + SLACK + 3, interval=0.02, what="h2's lease to expire")
    records = mesh.wait_finished(ids)  # h1 has run and committed them again
    assert all(records[i].owner == "h1" for i in stale), {i: records[i] for i in stale}

    proxy.release()
    assert held.status == 200 and "header" in held.answer, f"etcd did not judge the request: {held.answer}"
    outcomes = commit_outcomes(held.body, held.answer, claims, episodes)
    assert outcomes and not any(applied for _, applied in outcomes), f"etcd applied a stale commit: {held.answer}"
    print(f"held {held.path} for {held.released_at - held.held_at:.2f} s; {proxy.withheld} later requests withheld")

    after = mesh.records(ids)
    assert after == records, "the stale commit changed records"
    mesh.check_exactly_once(after)
    runs = mesh.executions()
    for episode_id in stale:  # run twice, committed once: h2's result is the one refused
        record, hosts = after[episode_id], runs[mesh.seeds[episode_id]]
        assert record.attempt == 2 and record.history[0].host == "h2", record
        assert sorted(hosts) == ["h1", "h2"], f"{episode_id} ran on {hosts}"

    # h2, cut off no more, notices its lease is gone and rejoins.
    wait_until(
        lambda: (kv := mesh.host_kv("h2")) is not None and kv.lease != old.lease,
        TTL + 10,
        what="h2 to rejoin under a new lease",
    )
    mesh.check_clean()
