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

from ..keys import Keys
from ..model import EpisodeRecord, State, decode_or_none, decode_records, pack, unpack
from ..registry import Compare, Delete, Event, KeyValue, Op, Put, Registry
from .catalog import Catalog

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
        self._follow(leader_host(event.kv.value), event.kv.create_revision)
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
        seat = {"host": agent.host, **({"url": agent.dashboard_url} if agent.dashboard_url else {})}
        mine = Put(key, pack(seat), agent.lease.lease)
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
                self._follow(leader_host(kv.value) if kv else None, kv.create_revision if kv else 0)
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
    if leader_host(kv.value) is None:
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


def leader_host(value: bytes) -> str | None:
    """The host a leader key's value names; None when it cannot be read (unknown leader)."""
    try:
        data = unpack(value)
    except Exception:
        return None
    host = data.get("host") if isinstance(data, dict) else None
    return str(host) if host else None


def collect_garbage(registry: Registry, keys: Keys, retention: float, now: float | None = None) -> int:
    """Delete acked finished records older than ``retention`` seconds, with their idempotency
    and cancel keys, streaming the listing (bounded memory), as many per txn as etcd allows. A
    batch's group record goes once all its members may go. Each delete compares its key is
    unchanged. Returns how many records went."""
    cutoff = (time.time() if now is None else now) - retention
    batch: list[tuple[KeyValue, list[EpisodeRecord]]] = []
    ops = removed = 0
    for kv, _ in Catalog(registry, keys).scan(keys.episodes(), None):
        records = decode_or_none(decode_records, kv.value, kv.key)
        if not records or not all(
            r.state.is_terminal and r.acked_at is not None and r.acked_at <= cutoff for r in records
        ):
            continue
        cost = 1 + sum(2 if r.spec.idempotency_key else 1 for r in records)
        if batch and ops + cost > _GC_OPS:
            removed += _delete(registry, keys, batch)
            batch, ops = [], 0
        batch.append((kv, records))
        ops += cost
    return removed + (_delete(registry, keys, batch) if batch else 0)


_GC_OPS = 120  # deletes per txn: within etcd's 128 ops per txn


def _delete(registry: Registry, keys: Keys, batch: list[tuple[KeyValue, list[EpisodeRecord]]]) -> int:
    compares = [Compare(kv.key, "mod", "==", kv.mod_revision) for kv, _ in batch]
    ops: list[Op] = []
    for kv, records in batch:
        ops.append(Delete(kv.key))
        for record in records:
            ops.append(Delete(keys.cancel(record.id)))
            if record.spec.idempotency_key:
                ops.append(Delete(keys.idempotency(record.spec.idempotency_key)))
    if registry.txn(compares, ops).succeeded:
        return sum(len(records) for _, records in batch)
    # one of them changed (acked again, say): fall back to one at a time
    return sum(_delete(registry, keys, [item]) for item in batch) if len(batch) > 1 else 0
