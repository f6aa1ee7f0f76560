"""Leader election and the leader's duties.

The leader is the agent whose lease holds the ``leader`` key (created only if absent). It is not
a controller: claims, commits and requeues never wait for it. It runs the reconcile sweep (the
safety net for requeues whose trigger event nobody saw, e.g. when every agent was down when a
lease expired) and collects acked finished records older than ``--retention``, both a slice of
the namespace per pass (sweeper.py), and is where the dashboard's URL is published. An agent
sweeps whole at once when it is elected or its watch missed events (``sweep_due``); one that
joins leaves it to the leader (a fleet's start had every agent read the whole namespace).

Threads: the control-watch thread calls ``on_event``; the loop calls ``step`` and
``sweep_soon`` (and the watch thread ``sweep_soon`` after a re-list). No lock: each field is
one attribute written whole, read by the loop; the race between the two writers is on
``_term`` only (``_follow``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..dashboard.process import Serving
from ..errors import MeshError
from ..keys import Keys
from ..ledger.ledger import Ledger
from ..model.seat import Seat, read_seat
from ..registry import Compare, Event, KeyValue, Put, Registry
from ..store import Store
from .lease import LeaseKeeper
from .metrics import Metrics
from .sweeper import Sweeper, Swept, sweep

log = logging.getLogger(__name__)


class Leadership:
    def __init__(
        self,
        host: str,
        registry: Registry,
        keys: Keys,
        lease: LeaseKeeper,
        ledger: Ledger,
        metrics: Metrics,
        *,
        ttl: int,
        retention: float,
        draining: Callable[[], bool],
        url: Callable[[], str],
        serving: Serving | None = None,
    ) -> None:
        self.host = host
        self.registry = registry
        self.keys = keys
        self.lease = lease
        self.ledger = ledger
        self.sweeper = Sweeper(registry, keys, ledger)  # the periodic cycle, a slice per pass
        self.metrics = metrics
        self.ttl = ttl
        self.retention = retention  # acked records older than this go (0: none)
        self._draining = draining  # a draining host does not campaign
        self._url = url  # our dashboard's, published in the seat ("" without one)
        self._serving = serving  # our dashboard serves while we lead (dashboard/process.py)
        self.is_leader = False
        self.leader: str | None = None  # None: unknown or vacant
        self._term: tuple[str, int] | None = None  # the last leader seen, and its key's create_revision
        self.sweep_due = False  # a joining agent leaves the sweep to the leader (elected: whole)
        self._next_sweep = 0.0
        self._next_collect = 0.0

    @property
    def sweep_interval(self) -> float:
        return max(10.0 * self.ttl, 20.0)

    @property
    def collect_interval(self) -> float:
        """Retention runs with a sweep's cycle, at most every tenth of the retention up to 5
        minutes: it reads every value too, and a record kept a week may go a few minutes late."""
        return max(self.sweep_interval, min(self.retention / 10, 300.0))

    def sweep_soon(self) -> None:
        """Sweep on the next pass, leader or not: claims may have been orphaned unseen (a
        watch re-listed past them, or the revision to read a dead host's claims at is gone)."""
        self.sweep_due = True

    def on_event(self, event: Event) -> bool:
        """Called from the watch thread. True: wake the loop (the seat is vacant)."""
        if event.type == "delete" or _unholdable(event.kv):  # vacant, or a seat nobody will free
            self.leader = None
            self.is_leader = False
            return True
        seat = read_seat(event.kv.value)
        self._follow(seat.host if seat else None, event.kv.create_revision)
        return False

    def _follow(self, leader: str | None, created: int) -> None:
        """Note the leader a key names; a new one (another host, or a new key) is a leader
        change. Both the watch thread and the loop see our own election: counted once, as one
        key. (The two may race on ``_term``: at worst a change counted twice.)"""
        self.leader = leader
        self.is_leader = leader == self.host
        if leader is not None and self._term != (leader, created):
            self._term = (leader, created)
            self.metrics.leader_changes.inc()

    def step(self) -> str | None:
        line = None
        if self.leader is None and self.lease.is_alive and not self._draining():
            line = self._campaign()
        if self._serving is not None:  # and the lease keeper says until when (dashboard/process.py)
            self._serving.lead(self.is_leader)
        swept = Swept()
        if self.sweep_due:  # whole, at once
            swept = Swept(sweep(self.registry, self.keys, self.ledger))
            self.sweep_due = False
            self._next_sweep = time.monotonic() + self.sweep_interval
        if self.is_leader:
            self._start_cycle()
            more = self.sweeper.step()
            swept = Swept(swept.requeued + more.requeued, more.removed)
        else:
            self.sweeper.stop()
        self.metrics.requeues.inc(swept.requeued)
        said = [line] if line else []
        if swept.requeued:
            said.append(f"sweep requeued {swept.requeued} orphaned episodes")
        if swept.removed:
            said.append(f"collected {swept.removed} acked records older than {self.retention:g} s")
        return "; ".join(said) or None

    def next_slice_at(self) -> float | None:
        """When the loop should wake for the sweep's next slice (monotonic), if a cycle runs."""
        return self.sweeper.next_slice_at() if self.is_leader else None

    def _start_cycle(self) -> None:
        """A periodic cycle every ``sweep_interval`` (or as soon as the last one ended, if it
        took longer), collecting too every ``collect_interval`` (a cycle starts for that even
        right after a whole sweep: the one an election makes collects nothing)."""
        now = time.monotonic()
        collect = bool(self.retention) and now >= self._next_collect
        if self.sweeper.running or (now < self._next_sweep and not collect):
            return
        self.sweeper.start(time.time() - self.retention if collect else None)
        self._next_sweep = now + self.sweep_interval
        if collect:
            self._next_collect = now + self.collect_interval

    def last_report(self, store: Store | None, interval: float) -> None:
        """At a drain, a leader leaves the run report in the store (dashboard/report.py), as
        its server does every ``interval`` (0: never) while it leads."""
        if not (self.is_leader and store is not None and interval):
            return
        from ..dashboard.report import write_report  # the report's modules: only now

        try:
            write_report(self.registry, self.keys, store)
        except MeshError as exc:
            log.warning("could not write the run report at the drain: %s", exc)

    def _campaign(self) -> str | None:
        key = self.keys.leader()
        mine = Put(key, Seat(self.host, self._url()).to_bytes(), self.lease.lease)
        result = self.registry.txn([Compare(key, "create", "==", 0)], [mine])
        created = result.revision  # our txn created the key
        cleared = ""
        if not result.succeeded:
            kv, _ = self.registry.get(key)
            if kv is not None and (why := _unholdable(kv)):
                # Nobody will ever free this seat: take it by compare-and-swap on the version we
                # read, so a real leader elected meanwhile is never displaced.
                result = self.registry.txn([Compare(key, "mod", "==", kv.mod_revision)], [mine])
                created = kv.create_revision  # rewritten, not created anew
                cleared = f"replaced a leader key that {why}; " if result.succeeded else ""
            else:
                seat = read_seat(kv.value) if kv else None
                self._follow(seat.host if seat else None, kv.create_revision if kv else 0)
                return f"following leader {self.leader}" if self.leader else None
        if not result.succeeded:
            return None  # someone else took the seat just now: its watch event names them
        self._follow(self.host, created)
        self.sweep_due = True
        if cleared:
            log.warning("%s", cleared.rstrip("; "))
        return f"{cleared}elected leader of namespace {self.keys.namespace}"


def _unholdable(kv: KeyValue) -> str | None:
    """Why a leader key holds the seat for nobody: unreadable, or bound to no lease (a key
    without a lease never expires, so the mesh would stay without a leader for good)."""
    if read_seat(kv.value) is None:
        return "could not be read"
    if kv.lease == 0:
        return "had no lease"
    return None
