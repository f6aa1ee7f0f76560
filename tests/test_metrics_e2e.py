"""The agent's /metrics end to end: real agents on a real etcd, scraped over HTTP, their counts
checked against what the records say happened."""

from __future__ import annotations

import platform
import threading
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from openrange_mesh import __version__
from openrange_mesh.agent.agent import Agent
from openrange_mesh.agent.metrics import OUTCOMES
from openrange_mesh.cli.local_mesh import free_port
from openrange_mesh.client.client import MeshClient
from openrange_mesh.config import Settings
from openrange_mesh.keys import Keys
from openrange_mesh.model import EpisodeRecord, State
from openrange_mesh.registry import Delete, open_registry

from .etcdkit import EtcdServer
from .helpers import wait_until
from .meshkit import MakeMesh, Mesh

TTL = 2
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Scrape:
    """One scrape of an agent's /metrics: its samples, and every label value in it."""

    def __init__(self, port: int) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            self.text = answer.read().decode()
        self.samples: Samples = {}
        for family in text_string_to_metric_families(self.text):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        assert key in self.samples, f"no sample {name} {labels} in:\n{self.text}"
        return self.samples[key]

    def label_values(self) -> set[str]:
        return {value for _, labels in self.samples for _, value in labels}


@pytest.fixture
def mesh(etcd: EtcdServer, make_mesh: MakeMesh) -> Mesh:
    return make_mesh(etcd.url, TTL)


def test_metrics_count_what_happened(mesh: Mesh) -> None:
    """Two agents run episodes that succeed, one that fails and one that is cancelled; h2 is
    killed with episodes running, and h1 requeues and reruns them. h1's counters must agree with
    the attempts the records say it ran, and no label may name an episode."""
    ports = {host: free_port() for host in ("h1", "h2")}
    agents = [mesh.start_agent(h, wait=False, options=["--metrics-port", str(p)]) for h, p in ports.items()]
    for agent in agents:
        mesh.wait_joined(agent)
    wait_until(lambda: sum(Scrape(p)("openrange_is_leader") for p in ports.values()) == 1, 10, what="one leader")

    long = mesh.submit_sleeps(4, seconds=3.0)
    wait_until(lambda: mesh.running_on("h1") and mesh.running_on("h2"), 15, what="both hosts to run episodes")
    cancelled = mesh.running_on("h1")[0]
    assert mesh.client.cancel([cancelled]) == {cancelled: "requested"}
    before = {host: Scrape(port) for host, port in ports.items()}
    mesh.agents["h2"].kill()
    short = mesh.submit_sleeps(5, seconds=0.1) + mesh.submit_sleeps(1, seconds=0.1, mode="fail")
    records = mesh.wait_finished(long + short, timeout=60)
    wait_until(lambda: Scrape(ports["h1"])("openrange_episodes_running") == 0, 5, what="h1 to hold nothing")
    scrape = Scrape(ports["h1"])

    ran = [a for r in records.values() for a in r.history if a.host == "h1"]
    outcomes = Counter(a.outcome for a in ran)
    assert outcomes["failed"] == 1 and outcomes["cancelled"] == 1 and outcomes["succeeded"] >= 5, outcomes
    for outcome in OUTCOMES:
        assert scrape("openrange_episodes_finished_total", outcome=outcome) == outcomes[outcome], outcome
    assert scrape("openrange_episodes_started_total") == len(ran)
    reported = sum(scrape("openrange_attempts_total", result=r) for r in ("succeeded", "failed", "cancelled"))
    assert reported == len(ran)
    assert scrape("openrange_episode_duration_seconds_count") == len(ran)
    assert scrape("openrange_episode_queue_wait_seconds_count") == len(ran)
    assert scrape("openrange_commits_total") == len(ran)  # single episodes: a commit each
    assert scrape("openrange_claims_total", result="won") + scrape("openrange_claims_total", result="stolen") == len(
        ran
    )
    assert scrape("openrange_stale_commits_total") == 0
    assert scrape("openrange_requeues_total") == len(requeued_from(records, "h2")) >= 1

    assert scrape("openrange_is_leader") == 1  # the only one left
    assert scrape("openrange_leader_changes_total") >= 1
    assert scrape("openrange_host_sick") == 0
    assert scrape("openrange_lease_refresh_duration_seconds_count") > 0
    assert scrape("openrange_etcd_request_duration_seconds_count", operation="txn") > 0
    assert scrape("openrange_etcd_request_duration_seconds_count", operation="range") > 0
    assert scrape("openrange_build_info", version=__version__, python=platform.python_version(), host="h1") == 1

    for one in [scrape, *before.values()]:
        named = [v for v in one.label_values() for i in records if i in v]
        assert not named, f"labels name episodes: {named}"


def requeued_from(records: dict[str, EpisodeRecord], host: str) -> list[str]:
    """Episodes whose attempt on ``host`` a peer put back when ``host`` died."""
    return [
        r.id
        for r in records.values()
        for a in r.history
        if a.host == host and a.outcome == "retried" and f"host {host}" in (a.error or "")
    ]


def test_a_commit_refused_by_its_fencing_compare_is_counted(etcd: EtcdServer, tmp_path: Path) -> None:
    """An agent in this process (its workers real processes) runs an episode; meanwhile its claim
    key goes and a peer puts the episode back, as after a lease expiry the agent did not notice.
    Its commit then reaches etcd, which refuses it by the fencing compare: a stale commit. The
    episode runs again and is committed; the loopback port serves the same counts."""
    settings = Settings(
        registry=etcd.url,
        namespace=f"m{uuid.uuid4().hex[:10]}",
        host_id="h1",
        capacity=1,
        store=str(tmp_path),
        dashboard_host="127.0.0.1",  # its child is handed our metrics port, to proxy /metrics
        dashboard_port=0,
    ).with_timing(TTL)
    agent = Agent(settings)
    thread = threading.Thread(target=agent.run, name="agent", daemon=True)
    thread.start()
    registry = open_registry(etcd.url)
    client = MeshClient(registry, namespace=settings.namespace)
    keys = Keys(settings.namespace)
    try:
        # Elected first: a new leader sweeps at once, and a sweep between the test's delete of the
        # claim key and its requeue would put the episode back itself (it did once in CI).
        wait_until(lambda: registry.get(keys.leader())[0] is not None, 15, what="the agent elected")
        (episode,) = client.submit([{"runtime": "sleep", "params": {"seconds": 3.0}}])  # outlasts a slow poll
        first = wait_until(lambda: (r := client.get(episode)).state is State.RUNNING and r, 15, what="a claim")
        assert first.claim is not None
        registry.txn([], [Delete(keys.claim("h1", first.claim))])  # what its lease's expiry would do
        assert client.ledger.requeue("h1", first.claim, [episode], "taken over by the test") == [episode]

        final = wait_until(lambda: (r := client.get(episode)).state.is_terminal and r, 20, what="the rerun")
        assert final.state is State.SUCCEEDED and final.attempt == 2, final
        assert agent.metrics_port is not None and agent.dashboard is not None
        assert agent.dashboard.config.metrics_port == agent.metrics_port
        scrape = Scrape(agent.metrics_port)
        assert scrape("openrange_stale_commits_total") == 1
        assert scrape("openrange_attempts_total", result="succeeded") == 2  # both attempts ran to the end
        assert scrape("openrange_episodes_finished_total", outcome="succeeded") == 1  # one was committed
        assert scrape("openrange_episodes_finished_total", outcome="retried") == 0  # the test closed that one
        assert scrape("openrange_episodes_started_total") == 2
    finally:
        agent.stop()
        thread.join(15)
        client.close()
        registry.close()
    assert not thread.is_alive()
