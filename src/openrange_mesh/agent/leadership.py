"""Leader election and the leader's duties.

The leader is the agent whose lease holds the ``leader`` key (created only if absent). It is not
a controller: claims, commits and requeues never wait for it. It runs the reconcile sweep (the
safety net for requeues whose trigger event nobody saw, e.g. when every agent was down when a
lease expired), collects acked finished records older than ``--retention``, and is where the
dashboard's URL is published.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING

from ..ledger.retention import collect_garbage
from ..model import State
from ..model.seat import Seat, read_seat
from ..registry import Compare, Event, KeyValue, Put

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger(__name__)


class Leadership:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.is_leader = False
        self.leader: str | None = None  # None: unknown or vacant
        self._term: tuple[str, int] | None = None  # the last leader seen, and its key's create_revision
        self.sweep_due = True
        self._next_sweep = 0.0

    @property
    def sweep_interval(self) -> float:
        return max(10.0 * self.agent.settings.ttl, 20.0)

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
        self.is_leader = leader == self.agent.host
        if leader is not None and self._term != (leader, created):
            self._term = (leader, created)
            self.agent.metrics.leader_changes.inc()

    def step(self) -> str | None:
        agent = self.agent
        line = None
        if self.leader is None and agent.lease.is_alive and not agent._draining:
            line = self._campaign()
        if agent.dashboard is not None:  # and the lease keeper says until when (dashboard/process.py)
            agent.dashboard.serving.lead(self.is_leader)
        if self.sweep_due or (self.is_leader and time.monotonic() >= self._next_sweep):
            requeued = sweep(agent)
            agent.metrics.requeues.inc(requeued)
            self.sweep_due = False
            self._next_sweep = time.monotonic() + self.sweep_interval
            if requeued:
                line = f"{line + '; ' if line else ''}sweep requeued {requeued} orphaned episodes"
            retention = agent.settings.retention
            removed = collect_garbage(agent.registry, agent.keys, retention) if self.is_leader and retention else 0
            if removed:
                line = f"{line + '; ' if line else ''}collected {removed} acked records older than {retention:g} s"
        return line

    def _campaign(self) -> str | None:
        agent = self.agent
        key = agent.keys.leader()
        mine = Put(key, Seat(agent.host, agent.dashboard_url).to_bytes(), agent.lease.lease)
        result = agent.registry.txn([Compare(key, "create", "==", 0)], [mine])
        created = result.revision  # our txn created the key
        cleared = ""
        if not result.succeeded:
            kv, _ = agent.registry.get(key)
            if kv is not None and (why := _unholdable(kv)):
                # Nobody will ever free this seat: take it by compare-and-swap on the version we
                # read, so a real leader elected meanwhile is never displaced.
                result = agent.registry.txn([Compare(key, "mod", "==", kv.mod_revision)], [mine])
                created = kv.create_revision  # rewritten, not created anew
                cleared = f"replaced a leader key that {why}; " if result.succeeded else ""
            else:
                seat = read_seat(kv.value) if kv else None
                self._follow(seat.host if seat else None, kv.create_revision if kv else 0)
                return f"following leader {self.leader}" if self.leader else None
        if not result.succeeded:
            return None  # someone else took the seat just now: its watch event names them
        self._follow(agent.host, created)
        self.sweep_due = True
        if cleared:
            log.warning("%s", cleared.rstrip("; "))
        return f"{cleared}elected leader of namespace {agent.keys.namespace}"


def _unholdable(kv: KeyValue) -> str | None:
    """Why a leader key holds the seat for nobody: unreadable, or bound to no lease (a key
    without a lease never expires, so the mesh would stay without a leader for good)."""
    if read_seat(kv.value) is None:
        return "could not be read"
    if kv.lease == 0:
        return "had no lease"
    return None


def sweep(agent: Agent) -> int:
    """Requeue running episodes whose claim key is gone, reading claims and records at one
    revision (a claim txn writes both, so a consistent view never shows a false orphan)."""
    claims = agent.registry.range(agent.keys.claims())
    present = {agent.keys.name_of(kv.key, agent.keys.claims()) for kv in claims.kvs}
    orphans: dict[tuple[str, str], list[str]] = defaultdict(list)
    for record, _ in agent.catalog.episodes(lambda r: r.state is State.RUNNING, revision=claims.revision):
        if f"{record.owner}/{record.claim}" not in present and record.owner and record.claim:
            orphans[(record.owner, record.claim)].append(record.id)
    requeued = 0
    for (host, claim_id), ids in orphans.items():
        requeued += len(agent.ledger.requeue(host, claim_id, ids, f"claim of host {host} vanished"))
    return requeued
