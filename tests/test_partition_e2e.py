"""A network partition of one agent, made for real: the agent runs inside a Linux network
namespace and reaches etcd over a veth pair whose host end the test takes down (tests/netkit.py),
while two peers reach the same etcd over loopback. Needs root and iproute2: skipped otherwise,
failed instead under ``CI=true``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openrange_mesh.model import State

from .etcdkit import EtcdServer, is_ci, start_etcd
from .helpers import wait_until
from .meshkit import MakeMesh, Mesh, tracebacks
from .netkit import Netns, why_unavailable

TTL = 2
LOOP_WAIT = TTL / 8  # Settings.with_timing
REAPER = 0.5  # etcd looks for expired leases twice a second
SLACK = 1.0  # a watch delivery, a loop pass, a loaded 2-core machine
CUT = 8.0  # seconds: four times the ttl
DURATIONS = [0.2 + 0.1 * (i % 4) for i in range(36)]  # 36 command episodes of 0.2 .. 0.5 s


@pytest.fixture
def netns() -> Iterator[Netns]:
    why = why_unavailable()
    if why is not None:
        message = f"no network namespace: {why}"
        if is_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    ns = Netns().create()
    yield ns
    ns.remove()


@pytest.fixture
def ns_etcd(netns: Netns, tmp_path: Path) -> Iterator[EtcdServer]:
    """A private etcd on loopback and on the host's end of the veth pair."""
    server = start_etcd(tmp_path / "etcd", listen=[netns.host_ip])
    yield server
    server.stop()


@pytest.fixture
def mesh(ns_etcd: EtcdServer, make_mesh: MakeMesh) -> Mesh:
    return make_mesh(ns_etcd.url, TTL)  # closed by make_mesh before ns_etcd stops (set up after it)


def test_partitioned_agent_is_fenced_off_and_rejoins(netns: Netns, ns_etcd: EtcdServer, mesh: Mesh) -> None:
    """h2, inside the namespace, is cut off for 4 x ttl while it runs episodes. Its peers requeue
    them within ttl + ~1 s of the cut; whatever h2 finished meanwhile is never committed (its
    results may have been computed twice, but each episode is committed once); after the heal h2
    rejoins under a new lease, as the same process, and takes part in the next run. It says the
    outage in lines, with no traceback: an unreachable etcd is not a bug."""
    inner = f"etcd://{netns.host_ip}:{ns_etcd.client_port}"
    agents = [
        mesh.start_agent("h1", wait=False),
        mesh.start_agent("h2", wait=False, registry=inner, wrapper=netns.argv_prefix),
        mesh.start_agent("h3", wait=False),
    ]
    for agent in agents:
        mesh.wait_joined(agent)
    victim = mesh.agents["h2"]
    ids = mesh.submit_commands(len(DURATIONS), DURATIONS)
    wait_until(lambda: mesh.running_on("h2"), 20, interval=0.02, what="h2 to run episodes")
    old = mesh.host_kv("h2")
    assert old is not None
    log_at = victim.log_size()

    netns.cut()
    cut_at = time.monotonic()
    # What h2 still runs by its records, read once it can commit no more.
    held = [i for i, r in mesh.records(ids).items() if r.state is State.RUNNING and r.owner == "h2"]
    assert held, "h2 finished everything before the cut"
    host_gone = wait_until(
        lambda: mesh.host_kv("h2") is None and time.monotonic(), TTL + REAPER + SLACK + 3, interval=0.02
    )

    def requeued() -> bool:
        return all(r.owner != "h2" or r.state is not State.RUNNING for r in mesh.records(held).values())

    wait_until(requeued, TTL + LOOP_WAIT + REAPER + SLACK + 3, interval=0.02, what="h2's episodes to be requeued")
    took = time.monotonic() - cut_at
    assert took <= TTL + LOOP_WAIT + REAPER + SLACK, f"requeue took {took:.2f} s after the cut"

    time.sleep(max(0.0, cut_at + CUT - time.monotonic()))
    cut_log = victim.log_since(log_at)
    netns.heal()
    during = tracebacks(cut_log)
    print(f"h2's host key went {host_gone - cut_at:.2f} s after the cut, its episodes requeued after {took:.2f} s")
    printed = sum(len(chain) for _, chain in during)
    print(f"h2 logged {len(during)} records with tracebacks ({printed} tracebacks) in the {CUT:g} s cut:")
    for head, chain in during:
        print(f"  {head}\n      {' <- '.join(reversed(chain))}")
    assert not during, "h2 logged the outage with a traceback"

    # It rejoins under a new lease, as the same process.
    wait_until(
        lambda: (kv := mesh.host_kv("h2")) is not None and kv.lease != old.lease,
        TTL + 10,
        what="h2 to rejoin under a new lease",
    )
    assert victim.is_running(), f"h2 exited:\n{victim.log_tail()}"
    info = mesh.host_info("h2")
    assert info is not None and info.pid == victim.pid

    records = mesh.wait_finished(ids)
    mesh.check_exactly_once(records)
    for episode_id in held:
        first = records[episode_id].history[0]
        assert first.host == "h2" and first.outcome == "retried", records[episode_id]
    runs = mesh.executions()
    twice = {mesh.episode_of(seed) for seed, hosts in runs.items() if len(hosts) > 1}
    assert twice <= set(held), f"episodes h2 did not hold ran twice: {sorted(twice - set(held))}"

    # ... and works again.
    more = mesh.submit_commands(24, 0.3)
    records = mesh.wait_finished(more)
    mesh.check_exactly_once(records)
    assert any(r.owner == "h2" for r in records.values()), "h2 ran nothing after it rejoined"
    mesh.check_clean()
