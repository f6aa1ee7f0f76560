"""``Watcher``: the two watch threads, which turn etcd events into what the parts know and wake
the loop.

* The queue watch follows our own mailbox (``queue/<host>/``, puts only: etcd does not even send
  deletes) and offers each entry to the owned queue (agent/owned.py). Peers' entries never reach
  us; ours leave our queue when we claim them, or when a claim of one fails (a peer stole it, a
  cancel took it, the leader moved it).
* The control watch (``ctl/``, with each deletion's previous value) follows host records (their
  weights decide where entries are written: ledger/placement.py), clients' submission markers
  (a sign for thieves: agent/peers.py), cancel markers and dead hosts (for the loop:
  agent/inbox.py), and the leader key (agent/leadership.py). A host that leaves or stops
  taking work leaves a mailbox nobody empties: the leader's to move (agent/mover.py). No peer
  looks at the queue then.

A watch that fell behind compaction re-lists what it derived: hosts, or our mailbox.

Threads: its own two, plus the loop at join (``join``, before they start). No state of its own
beyond its followers and threads: what the events say lives in the parts it feeds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..keys import Keys
from ..ledger.catalog import Catalog
from ..ledger.placement import Placement
from ..ledger.queue import QueueEntry, decode_entry
from ..registry import Event, Registry
from ..registry.follow import Follower
from .host_record import decode_host
from .inbox import DeadHost, Inbox
from .leadership import Leadership
from .mover import Mover
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
        placement: Placement,
        peers: Peers,
        inbox: Inbox,
        leadership: Leadership,
        mover: Mover,
        wake: Callable[[], None],
    ) -> None:
        self.registry = registry
        self.keys = keys
        self.catalog = catalog
        self.owned = owned
        self.placement = placement
        self.peers = peers
        self.inbox = inbox
        self.leadership = leadership
        self.mover = mover
        self._wake = wake
        self._mailbox = keys.mailbox(owned.host)
        self.queue_follower = Follower(registry, self._mailbox, puts_only=True, on_relist=self.load_queue)
        self.control_follower = Follower(registry, keys.control(), prev_kv=True, on_relist=self._control_relisted)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._follow, args=(f, on), name=f"watch-{i}", daemon=True)
            for i, (f, on) in enumerate(
                [(self.queue_follower, self.on_queue_events), (self.control_follower, self.on_control_events)]
            )
        ]

    def join(self) -> int:
        """What the watches would have said so far: live hosts, then the entries of our
        mailbox, read at one revision the watches resume after. Returns that revision."""
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
        """Live hosts as of ``revision`` (default: now)."""
        hosts = self.registry.range(self.keys.hosts(), revision=revision)
        records = [(self.keys.name_of(kv.key, self.keys.hosts()), decode_host(kv.value)) for kv in hosts.kvs]
        self.placement.load({host: info.weight if info else 0 for host, info in records})
        self.peers.load(host for host, _ in records)
        return hosts.revision if revision is None else revision

    def load_queue(self, revision: int) -> None:
        """The entries of our mailbox as of ``revision`` (where the queue watch resumes)."""
        queue: dict[str, QueueEntry] = {}
        for kv, _ in self.catalog.scan(self._mailbox, revision):
            entry = decode_entry(self.keys, kv)
            if entry is not None:
                queue[entry.name] = entry
        self.owned.replace(queue)
        self._wake()

    def _follow(self, follower: Follower, on_events: Callable[[list[Event]], None]) -> None:
        while not self._stop.is_set():
            events = follower.poll(1.0)
            if events:
                on_events(events)

    def on_queue_events(self, events: list[Event]) -> None:
        if self.owned.offer(e.kv for e in events):
            self._wake()

    def on_control_events(self, events: list[Event]) -> None:
        keys = self.keys
        wake = False
        for event in events:
            key = event.kv.key
            if key.startswith(keys.cancels()) and event.type == "put":
                self.inbox.cancel_requested(keys.name_of(key, keys.cancels()))
                wake = True
            elif key.startswith(keys.hosts()):
                wake |= self._on_host(keys.name_of(key, keys.hosts()), event)
            elif key == keys.leader():
                wake |= self.leadership.on_event(event)
            elif key == keys.queued_marker() and event.type == "put":
                wake |= self.peers.work_queued(event.kv.mod_revision)
        if wake:
            self._wake()

    def _on_host(self, host: str, event: Event) -> bool:
        """A host record written or deleted. True: wake the loop."""
        if event.type == "put":
            info = decode_host(event.kv.value)
            weight = info.weight if info is not None else 0
            if self.placement.weigh(host, weight) and not weight:
                self.mover.orphaned(host)  # it stopped taking work: its mailbox is the leader's to move
            self.peers.joined(host)
            return False
        self.placement.unweigh(host)
        self.peers.forget(host)
        self.mover.orphaned(host)
        if event.prev is not None:  # its heir among the hosts live at this revision, as every agent sees them
            self.inbox.host_died(DeadHost(host, event.prev.lease, event.kv.mod_revision, self.peers.heir(host)))
        return True

    def _control_relisted(self, revision: int) -> None:
        """The control watch fell behind compaction: re-read live hosts at the revision it
        resumes from, sweep for orphans of hosts whose deletion we missed, and (as the leader)
        look for mailboxes nobody empties."""
        self.load_hosts(revision)
        self.leadership.sweep_soon()
        self.mover.look_again()
        self._wake()
