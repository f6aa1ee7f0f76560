"""Watching: the two watch threads turn etcd events into work for the loop."""

from __future__ import annotations

from ..registry import Event
from .agent_state import DeadHost
from .committing import Committing
from .follow import Follower
from .queue import QueueEntry, decode_entry


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
                    name = keys.name_of(key, keys.queue())
                    # decoded once here, not on each pass that looks at it (a corrupt one is logged)
                    entry = decode_entry(keys, event.kv) if event.type == "put" else None
                    if entry is not None:
                        self._queue[name] = entry
                        wake = True
                    else:
                        self._queue.pop(name, None)
                elif key.startswith(keys.cancels()) and event.type == "put":
                    self._cancels.add(keys.name_of(key, keys.cancels()))
                    wake = True
                elif key.startswith(keys.hosts()):
                    wake |= self._on_host_event(event)
                elif key == keys.leader():
                    wake |= self.leadership.on_event(event)
        if wake:
            self.wake()

    def _on_host_event(self, event: Event) -> bool:
        host = self.keys.name_of(event.kv.key, self.keys.hosts())
        if event.type == "put":
            self._live_leases[host] = event.kv.lease
            return False
        self._live_leases.pop(host, None)
        if event.prev is not None:
            self._dead_hosts.put(DeadHost(host, event.prev.lease, event.kv.mod_revision))
        return True

    def _on_relist(self, revision: int) -> None:
        """The control watch fell behind compaction: re-read live hosts at the revision it
        resumes from, and sweep for orphans of hosts whose deletion we missed."""
        self._load_hosts(revision)
        self.leadership.sweep_due = True
        self.wake()

    def _load_hosts(self, revision: int | None) -> int:
        hosts = self.registry.range(self.keys.hosts(), revision=revision)
        with self._events_lock:
            self._live_leases = {self.keys.name_of(kv.key, self.keys.hosts()): kv.lease for kv in hosts.kvs}
        return hosts.revision if revision is None else revision

    def _load_queue(self, revision: int) -> None:
        """The queue as of ``revision`` (where its watch resumes)."""
        queue: dict[str, QueueEntry] = {}
        for kv, _ in self.catalog.scan(self.keys.queue(), revision):
            entry = decode_entry(self.keys, kv)
            if entry is not None:
                queue[entry.name] = entry
        with self._events_lock:
            self._queue = queue
        self.wake()
