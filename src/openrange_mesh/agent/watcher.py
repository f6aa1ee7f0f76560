"""``Watcher``: the two watch threads, which turn etcd events into what the parts know and wake
the loop.

* The queue watch (``queue/``, puts only: etcd does not even send deletes) offers each entry to
  the owned queue (agent/owned.py), which keeps ours; peers' entries count as arrivals toward
  their backlog (agent/peers.py). What peers claimed never reaches us; our own entries leave our
  queue when we claim them, or when a claim of one fails (a peer stole it, a cancel took it).
* The control watch (``ctl/``, with each deletion's previous value) follows host records (their
  weights decide ownership; their free workers, stealing), cancel markers and dead hosts (for
  the loop: agent/inbox.py), and the leader key (agent/leadership.py).

A host leaving or changing its weight can give us entries: the queue is re-listed at the current
revision and watched on from there (``Follower.relist``). A watch that fell behind compaction
re-lists what it derived: hosts (and then the queue), or the queue.

Threads: its own two, plus the loop at join (``join``, before they start). No state of its own
beyond its followers and threads: what the events say lives in the parts it feeds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..keys import Keys
from ..ledger.catalog import Catalog
from ..ledger.queue import QueueEntry, decode_entry
from ..registry import Event, Registry
from ..registry.follow import Follower
from .host_record import decode_host
from .inbox import DeadHost, Inbox
from .leadership import Leadership
from .owned import OwnedQueue
from .peers import Peers

JOIN_TIMEOUT = 5.0  # seconds to wait for each watch thread at shutdown


class Watcher:
    def __init__(
        self,
        registry: Registry,
        keys: Keys,
        catalog: Catalog,
        *,
        owned: OwnedQueue,
        peers: Peers,
        inbox: Inbox,
        leadership: Leadership,
        wake: Callable[[], None],
    ) -> None:
        self.registry = registry
        self.keys = keys
        self.catalog = catalog
        self.owned = owned
        self.peers = peers
        self.inbox = inbox
        self.leadership = leadership
        self._wake = wake
        self.queue_follower = Follower(registry, keys.queue(), puts_only=True, on_relist=self.load_queue)
        self.control_follower = Follower(registry, keys.control(), prev_kv=True, on_relist=self._control_relisted)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._follow, args=(f, on), name=f"watch-{i}", daemon=True)
            for i, (f, on) in enumerate(
                [(self.queue_follower, self.on_queue_events), (self.control_follower, self.on_control_events)]
            )
        ]

    def join(self) -> int:
        """What the watches would have said so far: live hosts, then the queue entries we own,
        read at one revision the watches resume after. Returns that revision."""
        revision = self.load_hosts(None)
        self.load_queue(revision)
        for follower in (self.queue_follower, self.control_follower):
            follower.start(revision)
        return revision

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        """Stop the threads before the registry closes under them, then the watches."""
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(JOIN_TIMEOUT)
        for follower in (self.queue_follower, self.control_follower):
            follower.close()

    def load_hosts(self, revision: int | None) -> int:
        """Live hosts as of ``revision`` (default: now); a queue listing follows."""
        hosts = self.registry.range(self.keys.hosts(), revision=revision)
        records = [(self.keys.name_of(kv.key, self.keys.hosts()), decode_host(kv.value)) for kv in hosts.kvs]
        self.owned.load_weights({host: info.weight if info else 0 for host, info in records})
        self.peers.load(records, hosts.revision)
        return hosts.revision if revision is None else revision

    def load_queue(self, revision: int) -> None:
        """The entries we own as of ``revision`` (where the queue watch resumes). Peers' entries
        in the listing may be a backlog to steal from."""
        queue: dict[str, QueueEntry] = {}
        others = False
        for kv, _ in self.catalog.scan(self.keys.queue(), revision):
            mine = self.owned.owns(self.keys.name_of(kv.key, self.keys.queue()))
            entry = decode_entry(self.keys, kv) if mine else None
            if entry is not None:
                queue[entry.name] = entry
            others |= not mine
        self.owned.replace(queue)
        if others:
            self.peers.backlog_seen(revision)
        self._wake()

    def _follow(self, follower: Follower, on_events: Callable[[list[Event]], None]) -> None:
        while not self._stop.is_set():
            events = follower.poll(1.0)
            if events:
                on_events(events)

    def on_queue_events(self, events: list[Event]) -> None:
        prefix = self.keys.queue()
        kept, theirs = self.owned.offer((self.keys.name_of(e.kv.key, prefix), e.kv) for e in events)
        if self.peers.arrived(theirs) or kept:
            self._wake()

    def on_control_events(self, events: list[Event]) -> None:
        keys = self.keys
        wake = relist = False
        for event in events:
            key = event.kv.key
            if key.startswith(keys.cancels()) and event.type == "put":
                self.inbox.cancel_requested(keys.name_of(key, keys.cancels()))
                wake = True
            elif key.startswith(keys.hosts()):
                woke, moved = self._on_host(keys.name_of(key, keys.hosts()), event)
                wake, relist = wake or woke, relist or moved
            elif key == keys.leader():
                wake |= self.leadership.on_event(event)
        if relist:  # cutting the queue watch short may wait for its reader thread
            self.queue_follower.relist()
        if wake:
            self._wake()

    def _on_host(self, host: str, event: Event) -> tuple[bool, bool]:
        """A host record written or deleted: (wake the loop, re-list the queue)."""
        if event.type == "put":
            info = decode_host(event.kv.value)
            relist = self.owned.weigh(host, info.weight if info is not None else 0)
            return self.peers.on_record(host, info, event.kv.mod_revision), relist
        self.owned.unweigh(host)  # the entries it owned are ours or a peer's now
        self.peers.forget(host)
        if event.prev is not None:
            self.inbox.host_died(DeadHost(host, event.prev.lease, event.kv.mod_revision))
        return True, True

    def _control_relisted(self, revision: int) -> None:
        """The control watch fell behind compaction: re-read live hosts at the revision it
        resumes from, and sweep for orphans of hosts whose deletion we missed."""
        self.load_hosts(revision)
        self.queue_follower.relist()
        self.leadership.sweep_soon()
        self._wake()
