"""The whole ``Agent`` built in this process on ``memory://`` (its workers are real processes, or
none with a simulated pool): episodes go through its loop to their commits, each exactly once,
and a drain hands back what still runs. No dashboard, no etcd, a store in the test's directory:
a few seconds, most of them starting workers."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

from openrange_mesh.agent.agent import Agent
from openrange_mesh.client.client import MeshClient
from openrange_mesh.config import Settings
from openrange_mesh.keys import Keys
from openrange_mesh.model import State
from openrange_mesh.registry import open_registry

from .helpers import wait_until
from .simpool import SimulatedPool

SHORT = {"runtime": "sleep", "params": {"seconds": 0.01}}


def test_an_agent_in_this_process_commits_every_episode_once_and_hands_back_at_a_drain(tmp_path: Path) -> None:
    url, namespace = f"memory://{uuid.uuid4().hex[:12]}", f"t{uuid.uuid4().hex[:10]}"
    # A store of its own: given none, an agent takes ./openrange-store, the repository when
    # tests run from its root.
    store = str(tmp_path / "store")
    settings = Settings(registry=url, namespace=namespace, host_id="h1", capacity=2, store=store, dashboard=False)
    agent = Agent(settings.with_timing(4))
    thread = threading.Thread(target=agent.run, name="agent", daemon=True)
    thread.start()
    registry = open_registry(url)
    client = MeshClient(registry, namespace=namespace)
    keys = Keys(namespace)
    try:
        ids = client.submit([SHORT] * 10) + client.submit([SHORT] * 6, batch=3)
        records = client.wait(ids, timeout=60)
        assert [r.state for r in records] == [State.SUCCEEDED] * 16
        assert all(len(r.history) == 1 and r.history[0].host == "h1" for r in records), records
        finished = agent.metrics.registry.get_sample_value
        assert finished("openrange_episodes_finished_total", {"outcome": "succeeded"}) == 16
        assert finished("openrange_attempts_total", {"result": "succeeded"}) == 16  # none ran twice
        wait_until(lambda: agent.running == 0, 5, what="the last commit to be forgotten")
        assert registry.range(keys.claims()).kvs == [] and registry.range(keys.queue()).kvs == []

        (long,) = client.submit([{"runtime": "sleep", "params": {"seconds": 60}}])
        wait_until(lambda: client.get(long).state is State.RUNNING, 20, what="the long episode to run")
        agent.drain(0.0)
        thread.join(30)
        assert not thread.is_alive()
        record = client.get(long)
        assert record.state is State.PENDING and record.history[-1].outcome == "released"
        assert record.history[-1].error == "released by draining host h1"
        assert registry.get(keys.host("h1"))[0] is None  # its lease went with it
    finally:
        agent.stop()
        thread.join(30)
        client.close()
        registry.close()
        registry.close()


def children() -> list[str]:
    return [c for task in Path("/proc/self/task").iterdir() for c in (task / "children").read_text().split()]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")
def test_an_agent_with_a_simulated_pool_commits_every_episode_once_and_starts_no_process(tmp_path: Path) -> None:
    """``make_pool``: the agent's loop, claims and commits as ever, its episodes ended by a pool
    in its own process (scripts/scalesim.py runs hundreds of agents so)."""
    url, namespace = f"memory://{uuid.uuid4().hex[:12]}", f"t{uuid.uuid4().hex[:10]}"
    store = str(tmp_path / "store")
    settings = Settings(registry=url, namespace=namespace, host_id="h1", capacity=3, store=store, dashboard=False)
    agent = Agent(settings.with_timing(4), make_pool=SimulatedPool.make)
    before = children()
    thread = threading.Thread(target=agent.run, name="agent", daemon=True)
    thread.start()
    registry = open_registry(url)
    client = MeshClient(registry, namespace=namespace)
    try:
        start = time.monotonic()
        records = client.wait(client.submit([{"runtime": "sleep", "params": {"seconds": 0.2}}] * 6), timeout=30)
        assert time.monotonic() - start >= 0.4  # two rounds of three slots
        assert [r.state for r in records] == [State.SUCCEEDED] * 6
        assert all(len(r.history) == 1 and r.history[0].host == "h1" for r in records), records
        finished = agent.metrics.registry.get_sample_value
        assert finished("openrange_episodes_finished_total", {"outcome": "succeeded"}) == 6
        assert children() == before
    finally:
        agent.stop()
        thread.join(30)
        client.close()
        registry.close()
