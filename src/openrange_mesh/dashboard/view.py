"""What every agent's HTTP server knows of the mesh: the leader and the hosts, from a watch of
``ctl/`` (design/dashboard.md). A follower needs the leader's URL to redirect; a leader needs the hosts
for its page. Hosts that left are remembered for an hour, from this process's own watch.

Threads: the follow thread writes; request handlers read through ``leader()``/``hosts()``,
which copy under ``_lock``.
"""

from __future__ import annotations

import logging
import threading
import time

from ..keys import Keys
from ..model import HostInfo, decode_or_none
from ..model.seat import Seat, read_seat
from ..registry import Event, Registry
from ..registry.follow import Follower

log = logging.getLogger(__name__)

LEFT_FOR = 3600.0  # seconds a host that left stays listed
BEATS_EVERY = 2.0  # seconds between reads of the hosts' lease ttls


class MeshView:
    def __init__(self, registry: Registry, keys: Keys) -> None:
        self.registry = registry
        self.keys = keys
        self.revision = 0
        self._leader: Seat | None = None
        self._hosts: dict[str, HostInfo] = {}
        self._leases: dict[str, int] = {}  # host -> the lease its key is bound to
        self._beats: tuple[float, dict[str, int | None]] = (0.0, {})  # (when read, host -> seconds)
        self._left: dict[str, float] = {}  # host -> when it left (unix time)
        self._changed = 0  # revision of the last change to hosts or leader
        self._lock = threading.Lock()
        self._follower = Follower(registry, keys.control(), on_relist=self._load)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="mesh-view", daemon=True)

    def start(self) -> None:
        self._load(None)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._follower.close()

    def leader(self) -> Seat | None:
        with self._lock:
            return self._leader

    def changed(self) -> int:
        """The revision of the last change to the hosts or the leader (an int read: no lock)."""
        return self._changed

    def hosts(self) -> tuple[int, list[HostInfo], dict[str, float]]:
        """(revision of the last change, live hosts by id, hosts that left in the last hour)."""
        with self._lock:
            cutoff = time.time() - LEFT_FOR
            self._left = {h: t for h, t in self._left.items() if t >= cutoff}
            return self._changed, sorted(self._hosts.values(), key=lambda h: h.id), dict(self._left)

    def heartbeats(self) -> dict[str, int | None]:
        """Seconds since each host last refreshed its lease (None: expired), read from etcd at
        most every ``BEATS_EVERY``: one lease read per host is too many to make per request."""
        read_at, beats = self._beats
        if time.monotonic() - read_at < BEATS_EVERY:
            return beats
        with self._lock:
            leases = dict(self._leases)
        beats = {}
        for host, lease in leases.items():
            ttl = self.registry.time_to_live(lease)
            beats[host] = None if ttl is None else max(0, ttl[1] - ttl[0])
        self._beats = (time.monotonic(), beats)
        return beats

    def _load(self, revision: int | None) -> None:
        listing = self.registry.range(self.keys.control(), revision=revision)
        hosts: dict[str, HostInfo] = {}
        leases: dict[str, int] = {}
        leader = None
        for kv in listing.kvs:
            if kv.key == self.keys.leader():
                leader = read_seat(kv.value, kv.create_revision) if kv else None
            elif kv.key.startswith(self.keys.hosts()):
                info = decode_or_none(HostInfo.from_bytes, kv.value, kv.key)
                if info is not None:
                    hosts[info.id], leases[info.id] = info, kv.lease
        with self._lock:
            for gone in set(self._hosts) - set(hosts):
                self._left[gone] = time.time()
            self._hosts, self._leases, self._leader = hosts, leases, leader
            self.revision = self._changed = listing.revision
        self._follower.start(listing.revision)

    def _follow(self) -> None:
        while not self._stop.is_set():
            events = self._follower.poll(1.0)
            if events:
                self._apply(events)

    def _apply(self, events: list[Event]) -> None:
        with self._lock:
            for event in events:
                self._apply_one(event)
                self.revision = max(self.revision, event.kv.mod_revision)

    def _apply_one(self, event: Event) -> None:
        key = event.kv.key
        if key == self.keys.leader():
            self._leader = read_seat(event.kv.value, event.kv.create_revision) if event.type == "put" else None
        elif key.startswith(self.keys.hosts()):
            host = self.keys.name_of(key, self.keys.hosts())
            if event.type == "delete":
                self._leases.pop(host, None)
                if self._hosts.pop(host, None) is not None:
                    self._left[host] = time.time()
            elif (info := decode_or_none(HostInfo.from_bytes, event.kv.value, key)) is not None:
                self._hosts[host], self._leases[host] = info, event.kv.lease
                self._left.pop(host, None)
        else:
            return
        self._changed = event.kv.mod_revision
