"""What every part of the agent shares: its attributes (set up by ``Agent.__init__``) and the
small records it keeps about claims. The agent is one class assembled from a few mixins, one per
concern (joining, claiming, committing, watching), so each file stays one idea."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from dataclasses import dataclass, field

from ..config import Settings
from ..dashboard.process import DashboardProcess
from ..keys import Keys
from ..ledger.catalog import Catalog
from ..ledger.homes import Versioned
from ..ledger.ledger import Claim, Ledger
from ..ledger.queue import QueueEntry
from ..model import EpisodeRecord
from ..registry import Registry
from ..registry.follow import Follower
from ..worker.pool import WorkerPool
from .health import Health
from .leadership import Leadership
from .lease import LeaseKeeper
from .metrics import Metrics

# A batch's results are committed together when the batch ends, or once the oldest uncommitted
# one has waited this long: one txn per batch instead of one per finished episode.
COMMIT_LINGER = 0.05


@dataclass
class Held:
    """A claim this agent holds."""

    claim: Claim
    records: dict[str, EpisodeRecord]  # running records as claimed, by id
    finals: dict[str, EpisodeRecord] = field(default_factory=dict)  # finished, not yet committed
    first_final_at: float = 0.0  # monotonic time the oldest uncommitted final arrived

    def commit_due(self, now: float) -> bool:
        return bool(self.finals) and (
            len(self.finals) == len(self.records) or now - self.first_final_at >= COMMIT_LINGER
        )


@dataclass(frozen=True)
class DeadHost:
    """A host key deleted, as the watch saw it: its lease is gone, and with it, at the same
    revision, every claim key of that host. Its claims are read at the revision before."""

    host: str
    lease: int
    revision: int  # of the deletion


class AgentState:
    settings: Settings
    host: str
    registry: Registry
    keys: Keys
    ledger: Ledger
    catalog: Catalog
    lease: LeaseKeeper
    pool: WorkerPool
    health: Health
    dashboard: DashboardProcess | None
    dashboard_url: str  # "" without a dashboard
    followers: list[Follower]
    leadership: Leadership
    metrics: Metrics
    _waker: Waker
    _stop: threading.Event
    _draining: bool
    _drain_deadline: float
    _held: dict[str, Held]
    _owner_of: dict[str, str]  # episode id -> claim id
    _dead_hosts: queue.SimpleQueue[DeadHost]
    _cancels: set[str]  # cancel markers the watch saw, not yet forwarded
    _cancel_seen: set[str]  # forwarded to a worker: their commit deletes the marker
    queue_follower: Follower
    _live_leases: dict[str, int]  # host -> lease, from the hosts/ prefix
    _weights: dict[str, float]  # host -> its share of the queue (owners.py), from its record
    _free: dict[str, int]  # host -> workers its last record says were free
    _arrivals: dict[str, int]  # host -> entries of its that arrived since that record
    _queue: dict[str, QueueEntry]  # the entries we own: name -> entry, oldest first, fed by the watch
    _queue_relist: bool  # who owns what changed (a host left, a weight changed): re-list the queue
    _others_at: int  # revision of the latest sign that a peer has a backlog we could steal from
    _looked_at: int  # revision at which a steal read last found nothing to take
    _steal_wanted: bool  # the last pass left workers idle with nothing of ours to claim
    _stolen_at: float  # monotonic time of the last steal read
    _unclaimable: dict[bytes, int]  # queue key -> revision of an entry a claim cannot take (corrupt, records gone)
    _carried: dict[str, tuple[int, dict[str, Versioned] | None]]  # entry name -> (revision, its records)
    _claims_unsure: bool  # a claim txn got no answer: it may hold episodes we do not know
    _started_at: float
    _host_written: tuple[int, float]  # running count in our host record, and when (monotonic)
    _outage: bool
    _events_lock: threading.Lock

    def wake(self) -> None:
        self._waker.set()

    @property
    def _takes_no_work(self) -> bool:
        """Draining (asked to), or sick (agent/health.py): claim nothing, own no queue entry."""
        return self._draining or self.health.is_sick


class Waker:
    """Wakes the agent's loop from watch threads and signal handlers: one end of a pipe, which
    the loop waits on together with its workers' pipes (pool.WorkerPool.wait). Never closed: a
    signal handler may still write after the loop is gone, and a closed descriptor's number
    could by then name another file."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def fileno(self) -> int:
        return self._read

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
            os.write(self._write, b"!")

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 4096):
                pass
