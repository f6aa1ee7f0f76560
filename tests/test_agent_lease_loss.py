"""A whole ``Agent`` in this process (a simulated pool, no dashboard) whose lease etcd takes, on
a real etcd reached through a proxy that can hold or lose a request: what its rejoin does when
the txn of its new host record fails. The agent's registry names the proxy first and etcd itself
second, as a cluster names its members: a request the proxy keeps makes the agent move on to
the next endpoint."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from openrange_mesh.agent.agent import Agent
from openrange_mesh.config import Settings
from openrange_mesh.registry import KeyValue, Registry, open_registry

from .etcdkit import EtcdServer
from .helpers import wait_until
from .meshkit import LossyProxy, txn_puts_under
from .simpool import SimulatedPool

TTL = 4


@pytest.fixture
def proxy(etcd: EtcdServer) -> Iterator[LossyProxy]:
    proxy = LossyProxy(etcd.host, etcd.client_port)
    yield proxy
    proxy.close()  # a request still held is never sent


@pytest.fixture
def direct(etcd: EtcdServer) -> Iterator[Registry]:
    registry = open_registry(etcd.url)
    yield registry
    registry.close()


def start_agent(proxy: LossyProxy, etcd: EtcdServer, store: Path) -> tuple[Agent, threading.Thread]:
    registry = open_registry(f"etcd://{proxy.endpoint},{etcd.endpoint}", retry_timeout=1.0)
    namespace = f"t{uuid.uuid4().hex[:10]}"
    settings = Settings(namespace=namespace, host_id="h1", capacity=1, store=str(store), dashboard=False)
    agent = Agent(settings.with_timing(TTL), registry=registry, make_pool=SimulatedPool.make)
    thread = threading.Thread(target=agent.run, name="agent", daemon=True)
    thread.start()
    return agent, thread


def rejoined(direct: Registry, agent: Agent, before: KeyValue) -> KeyValue | None:
    """The agent's host key, once it is under a lease other than ``before``'s and the one the agent holds."""
    kv, _ = direct.get(agent.keys.host(agent.host))
    return kv if kv is not None and kv.lease not in (0, before.lease) and kv.lease == agent.lease.lease else None


def test_a_rejoin_whose_host_record_did_not_land_writes_it_on_the_next_pass(
    proxy: LossyProxy, etcd: EtcdServer, direct: Registry, tmp_path: Path
) -> None:
    """etcd takes the lease; the agent rejoins: its new lease is granted, the txn of its host
    record is kept in flight and never reaches etcd (the agent moves on to etcd's own endpoint).
    The next pass writes the record under the new lease (the lease was alive, so the step did
    nothing: the agent ran on without a host key, invisible to peers, and its death would have
    told nobody to requeue its claims)."""
    agent, thread = start_agent(proxy, etcd, tmp_path / "store")
    try:
        key = agent.keys.host("h1")
        before = wait_until(lambda: direct.get(key)[0], 20, what="the agent to join")
        proxy.hold_once(txn_puts_under(key))
        direct.revoke(before.lease)
        wait_until(lambda: proxy.held, 10, what="the rejoin's host record to be held")
        kv = wait_until(lambda: rejoined(direct, agent, before), 10, what="the host record under the new lease")
        assert thread.is_alive() and kv.create_revision > before.create_revision
    finally:
        agent.stop()
        thread.join(30)


def test_a_rejoin_whose_host_record_landed_unheard_takes_it_as_its_own(
    proxy: LossyProxy, etcd: EtcdServer, direct: Registry, tmp_path: Path
) -> None:
    """The txn of the rejoin's host record applies and its answer is lost: the retry finds the
    key there under the agent's own lease, which is its record, not a twin's (the agent would
    exit, "host id was taken")."""
    agent, thread = start_agent(proxy, etcd, tmp_path / "store")
    try:
        key = agent.keys.host("h1")
        before = wait_until(lambda: direct.get(key)[0], 20, what="the agent to join")
        proxy.lose_answer_once(txn_puts_under(key))
        direct.revoke(before.lease)
        wait_until(lambda: proxy.lost, 10, what="the rejoin's answer to be lost")
        kv = wait_until(lambda: rejoined(direct, agent, before), 10, what="the host record under the new lease")
        created = kv.create_revision
        wait_until(lambda: agent.parts.host_record.is_registered, 5, what="the retry")
        assert thread.is_alive() and direct.get(key)[0] == kv and kv.create_revision == created
    finally:
        agent.stop()
        thread.join(30)
