"""Leader election and the leader's duties.

The leader is the agent whose lease holds the ``leader`` key (created only if absent). It is not
a controller: claims, commits and requeues never wait for it. It runs the reconcile sweep (the
safety net for requeues whose trigger event nobody saw, e.g. when every agent was down when a
lease expired), collects acked finished records older than ``--retention``, and is where the
dashboard's URL is published.

Threads: the control-watch thread calls ``on_event``; the loop calls ``step`` and
``sweep_soon`` (and the watch thread ``sweep_soon`` after a re-list). No lock: each field is
one attribute written whole, read by the loop; the race between the two writers is on
``_term`` only (``_follow``).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable

from ..dashboard.process import Serving
from ..errors import MeshError
from ..keys import Keys
from ..ledger.catalog import Catalog, EpisodeFilter
from ..ledger.ledger import Ledger
from ..ledger.retention import collect_garbage
from ..model import State
from ..model.seat import Seat, read_seat
from ..registry import Compare, Event, KeyValue, Put, Registry
from ..store import Store
from .lease import LeaseKeeper
from .metrics import Metrics

log = logging.getLogger(__name__)


class Leadership:
    def __init__(
        self,
        host: str,
        registry: Registry,
        keys: Keys,
        lease: LeaseKeeper,
        catalog: Catalog,
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
        self.catalog = catalog
        self.ledger = ledger
        self.metrics = metrics
        self.ttl = ttl
        self.retention = retention  # acked records older than this go (0: none)
        self._draining = draining  # a draining host does not campaign
        self._url = url  # our dashboard's, published in the seat ("" without one)
        self._serving = serving  # our dashboard serves while we lead (dashboard/process.py)
        self.is_leader = False
        self.leader: str | None = None  # None: unknown or vacant
        self._term: tuple[str, int] | None = None  # the last leader seen, and its key's create_revision
        self.sweep_due = True
        self._next_sweep = 0.0
        self._next_collect = 0.0

    @property
    def sweep_interval(self) -> float:
        return max(10.0 * self.ttl, 20.0)

    @property
    def collect_interval(self) -> float:
        """Retention runs with a sweep, at most every tenth of the retention up to 5 minutes:
        it reads every value too, and a record kept a week may go a few minutes late."""
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
        if self.sweep_due or (self.is_leader and time.monotonic() >= self._next_sweep):
            requeued = sweep(self.registry, self.keys, self.catalog, self.ledger)
            self.metrics.requeues.inc(requeued)
            self.sweep_due = False
            self._next_sweep = time.monotonic() + self.sweep_interval
            if requeued:
                line = f"{line + '; ' if line else ''}sweep requeued {requeued} orphaned episodes"
            retention = self.retention
            removed = 0
            if self.is_leader and retention and time.monotonic() >= self._next_collect:
                removed = collect_garbage(self.registry, self.keys, retention)
                self._next_collect = time.monotonic() + self.collect_interval
            if removed:
                line = f"{line + '; ' if line else ''}collected {removed} acked records older than {retention:g} s"
        return line

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


def sweep(registry: Registry, keys: Keys, catalog: Catalog, ledger: Ledger) -> int:
    """Requeue running episodes whose claim key is gone, reading claims and records at one
    revision (a claim txn writes both, so a consistent view never shows a false orphan). The
    reason says what the orphans step would have said when the owner's key is gone too: a new
    leader's first sweep often comes before the dead host's heir gets to it."""
    claims = registry.range(keys.claims())
    present = {keys.name_of(kv.key, keys.claims()) for kv in claims.kvs}
    live = {keys.name_of(kv.key, keys.hosts()) for kv in registry.range(keys.hosts(), revision=claims.revision).kvs}
    orphans: dict[tuple[str, str], list[str]] = defaultdict(list)
    for record, _ in catalog.episodes(EpisodeFilter(states=frozenset({State.RUNNING})), revision=claims.revision):
        if f"{record.owner}/{record.claim}" not in present and record.owner and record.claim:
            orphans[(record.owner, record.claim)].append(record.id)
    requeued = 0
    for (host, claim_id), ids in orphans.items():
        reason = f"claim of host {host} vanished" if host in live else f"host {host} lost its lease"
        requeued += len(ledger.requeue(host, claim_id, ids, reason))
    return requeued
