"""One host's agent parts in-process, built as ``Agent`` builds them but without its loop,
threads or workers, for tests that feed them registry events by hand (tests/test_agent_*.py).

``Mesh`` holds a ``memory://`` registry and a namespace; ``mesh.host(name)`` builds a ``Host``
of real parts on it. Events are real ones: read back from the registry's own watch (``events``)
after the test wrote what it wanted them to say.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from openrange_mesh.agent.health import Health
from openrange_mesh.agent.lease import LeaseKeeper
from openrange_mesh.agent.metrics import Metrics
from openrange_mesh.agent.parts import assemble
from openrange_mesh.config import Settings
from openrange_mesh.ids import IdAllocator
from openrange_mesh.keys import Keys
from openrange_mesh.ledger.catalog import Catalog
from openrange_mesh.ledger.claims import Claim
from openrange_mesh.ledger.ledger import Ledger
from openrange_mesh.ledger.placement import HostsPlacement
from openrange_mesh.model import EpisodeRecord, EpisodeSpec, HostInfo
from openrange_mesh.registry import Event, Put, Registry, open_registry
from openrange_mesh.worker.pool import WorkerPool

from .helpers import current_revision, take

TTL = 30  # long: no lease of a test expires by itself


class Host:
    """A host's parts, assembled as ``Agent`` assembles them. Its worker pool is never started:
    it has no idle worker and dispatches nothing, so tests drive claims through the ledger and
    tell ``holdings`` what came of them."""

    def __init__(self, registry: Registry, keys: Keys, name: str, capacity: int) -> None:
        self.name = name
        self.registry = registry
        self.keys = keys
        self.draining = False  # what Agent.drain sets
        self.woken = 0  # times a part woke the loop
        self.metrics = Metrics(name)
        self.ledger = Ledger(registry, keys)
        self.catalog = Catalog(registry, keys)
        self.lease = LeaseKeeper(registry, TTL)
        self.pool = WorkerPool(capacity, None)
        settings = Settings(namespace=keys.namespace, host_id=name, capacity=capacity, store="", dashboard=False)
        parts = assemble(
            settings,
            registry,
            lease=self.lease,
            pool=self.pool,
            health=Health(),
            metrics=self.metrics,
            draining=lambda: self.draining,
            wake=self.wake,
            url=lambda: f"http://{name}:8080",
            serving=None,
        )
        self.holdings, self.inbox, self.peers, self.owned = parts.holdings, parts.inbox, parts.peers, parts.owned
        self.host_record, self.leadership, self.watcher = parts.host_record, parts.leadership, parts.watcher
        self.claimer, self.committer, self.orphans = parts.claimer, parts.committer, parts.orphans
        self.placement, self.mover = parts.watcher.placement, parts.mover

    def wake(self) -> None:
        self.woken += 1

    def join(self) -> int:
        """Register and load what the watches would have said (the agent's join); its revision."""
        self.host_record.register()
        return self.watcher.join()

    def see(self, since: int) -> None:
        """Hand the watcher every control and queue event after ``since``, as its threads would."""
        self.watcher.on_control_events(events(self.registry, self.keys.control(), since, prev_kv=True))
        self.watcher.on_queue_events(events(self.registry, self.keys.mailbox(self.name), since, puts_only=True))
        if self.leadership.is_leader:  # and its mover's watch of the whole queue
            self.mover.found(e.kv for e in events(self.registry, self.keys.queue(), since, puts_only=True))

    def relist_if_asked(self) -> None:
        """One poll of the queue watch: it re-lists (``load_queue``) if the watcher asked it to."""
        self.watcher.queue_follower.poll(0)
        self.watcher.queue_follower.close()

    def hold(self, episode_ids: list[str]) -> tuple[Claim, list[EpisodeRecord]]:
        """Claim the entry listing exactly ``episode_ids`` and hold it, as a won claim is held
        (its episodes would go to workers)."""
        claim, running = take(self.ledger, self.name, self.lease.lease, episode_ids)
        self.holdings.hold(claim, running)
        return claim, running

    def count(self, metric: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(metric, labels) or 0.0

    def own(self) -> list[str]:
        return [entry.name for entry in self.owned.head(1_000_000)]

    def close(self) -> None:
        self.watcher.close()
        self.pool.close()
        self.lease.stop(revoke=False)


class Mesh:
    """A namespace on a fresh ``memory://`` registry (or on ``url``'s), and the hosts built on it."""

    def __init__(self, url: str | None = None) -> None:
        self.registry = open_registry(url or f"memory://{uuid.uuid4().hex[:12]}")
        self.keys = Keys(f"t{uuid.uuid4().hex[:10]}")
        # placed as a client places them: by the host records as they are now
        self.ledger = Ledger(self.registry, self.keys, place=HostsPlacement(self.registry, self.keys, max_age=0))
        self.hosts: list[Host] = []

    def host(self, name: str, capacity: int = 4) -> Host:
        host = Host(self.registry, self.keys, name, capacity)
        self.hosts.append(host)
        return host

    def revision(self) -> int:
        return current_revision(self.registry)

    def submit(self, count: int, *, prefix: str = "e", seconds: float = 0.0) -> list[str]:
        """``count`` pending sleep episodes, one queue entry each."""
        spec = EpisodeSpec(runtime="sleep", params={"seconds": seconds})
        records = [EpisodeRecord(id=f"{prefix}{i:05d}", spec=spec, created_at=time.time()) for i in range(count)]
        self.ledger.submit(records)
        return [r.id for r in records]

    def submit_batch(self, count: int) -> list[str]:
        """One batch of ``count`` as a client submits it: one id block, one record key for all,
        one queue entry."""
        spec = EpisodeSpec(runtime="sleep", batch=count)
        _, ids = IdAllocator(self.registry, self.keys, "cl").next_group(count)
        self.ledger.submit([EpisodeRecord(id=i, spec=spec, created_at=time.time(), submitter="cl") for i in ids])
        return ids

    def queue(self) -> list[str]:
        """Every queue entry's name, oldest first."""
        return [entry.name for entry in self.ledger.queue()]

    def mailbox(self, host: str) -> list[str]:
        """The names of the entries in ``host``'s mailbox, oldest first."""
        return [entry.name for entry in self.ledger.queue() if entry.owner == host]

    def record(self, name: str, capacity: int, *, lease: int | None = None) -> int:
        """A peer's host record written as the test says (a made-up peer); returns its lease."""
        lease = lease or self.registry.grant(TTL)
        info = HostInfo(id=name, capacity=capacity)
        self.registry.txn([], [Put(self.keys.host(name), info.to_bytes(), lease)])
        return lease

    def mark(self) -> None:
        """A client's submission marker (what MeshClient.submit writes with its last txn)."""
        self.registry.txn([], [Put(self.keys.queued_marker(), b"client")])

    def close(self) -> None:
        for host in self.hosts:
            host.close()
        self.registry.close()


def events(
    registry: Registry, prefix: bytes, since: int, *, prev_kv: bool = False, puts_only: bool = False
) -> list[Event]:
    """The events under ``prefix`` after revision ``since``, as a watch delivers them."""
    watch = registry.watch(prefix, since + 1, prev_kv=prev_kv, puts_only=puts_only)
    try:
        return watch.next(0).events
    finally:
        watch.cancel()


def counting(registry: Registry, operation: str) -> Callable[[], int]:
    """How many ``operation`` requests the registry made from now on (its observer)."""
    count = 0

    def observe(op: str, seconds: float, kind: str | None) -> None:
        nonlocal count
        count += op == operation

    registry.observer = observe
    return lambda: count
