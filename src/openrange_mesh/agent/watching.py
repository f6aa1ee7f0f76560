"""Watching: the two watch threads turn etcd events into work for the loop.

The queue watch brings puts only (no deletes), and the agent keeps the entries it owns
(ledger/owners.py): what its peers claimed never reaches it, and its own entries leave its queue
when it claims them, or when a claim of one fails (a peer stole it, a cancel took it).
"""

from __future__ import annotations

from ..ledger import owners
from ..ledger.queue import QueueEntry, decode_entry
from ..model import HostInfo
from ..registry import Event
from ..registry.follow import Follower
from .committing import Committing
from .joining import _decode_host
from .state import DeadHost


class Watching(Committing):
    def _watch_loop(self, follower: Follower) -> None:
        while not self._stop.is_set():
            events = follower.poll(1.0)
            if events:
                self._on_events(events)

    def _on_events(self, events: list[Event]) -> None:
        keys = self.keys
        wake = False
        with self._events_lock:
            for event in events:
                key = event.kv.key
                if key.startswith(keys.queue()):
                    wake |= self._on_queue_put(keys.name_of(key, keys.queue()), event)
                elif key.startswith(keys.cancels()) and event.type == "put":
                    self._cancels.add(keys.name_of(key, keys.cancels()))
                    wake = True
                elif key.startswith(keys.hosts()):
                    wake |= self._on_host_event(event)
                elif key == keys.leader():
                    wake |= self.leadership.on_event(event)
            relist, self._queue_relist = self._queue_relist, False
        if relist:  # outside the lock: cutting the queue watch short may wait for its reader thread
            self.queue_follower.relist()
        if wake:
            self.wake()

    def _on_queue_put(self, name: str, event: Event) -> bool:
        """Keep an entry we own (decoded once here, not on each pass that looks at it; a corrupt
        one is logged and dropped); note one a busy peer owns, which we may steal when idle."""
        owner = owners.owner(name, self._weights_with_us())
        if owner != self.host:
            self._queue.pop(name, None)
            if owner is None:
                return False
            # More entries for a peer than its record said it had free workers: it has a backlog
            self._arrivals[owner] = arrived = self._arrivals.get(owner, 0) + 1
            if arrived > self._free.get(owner, 0):
                self._others_at = max(self._others_at, event.kv.mod_revision)
                return self._steal_wanted
            return False
        entry = decode_entry(self.keys, event.kv)
        if entry is None:
            self._queue.pop(name, None)
            return False
        self._queue[name] = entry
        return True

    def _weights_with_us(self) -> dict[str, float]:
        """Hosts' weights as their records say; ours until our record is seen."""
        if self.host in self._weights:
            return self._weights
        return {**self._weights, self.host: 0 if self._takes_no_work else self.settings.capacity}

    def _on_host_event(self, event: Event) -> bool:
        host = self.keys.name_of(event.kv.key, self.keys.hosts())
        if event.type == "put":
            self._live_leases[host] = event.kv.lease
            return self._on_host_record(host, _decode_host(event.kv.value), event.kv.mod_revision)
        self._live_leases.pop(host, None)
        self._forget_host(host)
        if event.prev is not None:
            self._dead_hosts.put(DeadHost(host, event.prev.lease, event.kv.mod_revision))
        return True

    def _on_host_record(self, host: str, info: HostInfo | None, revision: int) -> bool:
        """A host's record, new or rewritten. A newcomer only takes entries (owners.py): drop
        those it owns now. A weight that changed (a host draining) can give us entries: look
        at the queue again. Wake the loop if it has idle workers to steal with and the peer is full."""
        known = self._note_host(host, info, revision)
        weight = self._weights[host]
        if known is None:
            if weight and host != self.host:
                weights = self._weights_with_us()
                self._queue = {n: e for n, e in self._queue.items() if owners.owner(n, weights) == self.host}
            return False
        if known != weight:
            self._queue_relist = True
        return self._steal_wanted and host != self.host and self._free[host] <= 0

    def _note_host(self, host: str, info: HostInfo | None, revision: int) -> float | None:
        """Keep a host's weight and free workers (entries of its that arrive from now on are
        counted against them); its weight before (None: new to us)."""
        known = self._weights.get(host)
        self._weights[host] = info.weight if info is not None else 0
        self._free[host] = info.capacity - info.running if info is not None else 0
        self._arrivals[host] = 0
        if info is not None and info.full and host != self.host:
            self._others_at = max(self._others_at, revision)  # it may have a backlog we could take
        return known

    def _forget_host(self, host: str) -> None:
        """A host left: the entries it owned are ours or a peer's now."""
        self._weights.pop(host, None)
        self._free.pop(host, None)
        self._arrivals.pop(host, None)
        self._queue_relist = True

    def _on_relist(self, revision: int) -> None:
        """The control watch fell behind compaction: re-read live hosts at the revision it
        resumes from, and sweep for orphans of hosts whose deletion we missed."""
        self._load_hosts(revision)
        self.queue_follower.relist()
        self.leadership.sweep_due = True
        self.wake()

    def _load_hosts(self, revision: int | None) -> int:
        """Live hosts as of ``revision`` (default: now); a queue listing follows."""
        hosts = self.registry.range(self.keys.hosts(), revision=revision)
        with self._events_lock:
            self._live_leases = {}
            self._weights = {}
            self._free = {}
            self._arrivals = {}
            for kv in hosts.kvs:
                host = self.keys.name_of(kv.key, self.keys.hosts())
                self._live_leases[host] = kv.lease
                self._note_host(host, _decode_host(kv.value), hosts.revision)
        return hosts.revision if revision is None else revision

    def _load_queue(self, revision: int) -> None:
        """The entries we own as of ``revision`` (where the queue watch resumes)."""
        queue: dict[str, QueueEntry] = {}
        others = False
        for kv, _ in self.catalog.scan(self.keys.queue(), revision):
            name = self.keys.name_of(kv.key, self.keys.queue())
            with self._events_lock:
                mine = owners.owner(name, self._weights_with_us()) == self.host
            entry = decode_entry(self.keys, kv) if mine else None
            if entry is not None:
                queue[entry.name] = entry
            others |= not mine
        with self._events_lock:
            self._queue = queue
            if others:
                self._others_at = max(self._others_at, revision)
        self.wake()
