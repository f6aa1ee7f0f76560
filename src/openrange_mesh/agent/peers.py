"""What this host knows of its peers' backlogs, to steal from them: ``Peers``.

Each host claims the queue entries it owns (agent/owned.py); a host with idle workers and none
of its own takes a busy peer's (agent/claimer.py: a steal read). A read costs a range of the
queue, so it is made only after a sign that a peer has a backlog: more of its entries arrived
than its last record said it had free workers, or its record says it is full. Peers keeps each
host's free workers and arrivals since its record, and the revision of the latest sign; and
whether the loop wants to steal, so that a sign wakes the loop only when it has idle workers.

Threads: the control-watch thread writes what host records say; the queue-watch thread counts
arrivals (and the signs of a queue listing); the loop says whether it wants to steal and reads
the latest sign (agent/watcher.py, agent/claimer.py). ``_lock`` guards every field.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from ..model import HostInfo


class Peers:
    def __init__(self, host: str) -> None:
        self.host = host  # ours: our own record is no sign of anything
        self._lock = threading.Lock()
        self._free: dict[str, int] = {}  # host -> workers its last record says were free
        self._arrivals: dict[str, int] = {}  # host -> entries of its that arrived since that record
        self._backlog_at = 0  # revision of the latest sign that a peer has a backlog we could steal from
        self._steal_wanted = False  # the loop's last pass left workers idle with nothing of ours to claim

    @property
    def backlog_at(self) -> int:
        with self._lock:
            return self._backlog_at

    @property
    def steal_wanted(self) -> bool:
        with self._lock:
            return self._steal_wanted

    def want_steal(self, wanted: bool) -> None:
        """From the loop: whether it has idle workers and nothing of ours to give them."""
        with self._lock:
            self._steal_wanted = wanted

    def load(self, records: Iterable[tuple[str, HostInfo | None]], revision: int) -> None:
        """Every live host's record, as listed at ``revision``: what was known before goes."""
        with self._lock:
            self._free = {}
            self._arrivals = {}
            for host, info in records:
                self._note(host, info, revision)

    def on_record(self, host: str, info: HostInfo | None, revision: int) -> bool:
        """A host's record, new or rewritten (None: unreadable, no free workers). True: wake
        the loop, which wants to steal, and a peer it knew is full now."""
        with self._lock:
            known = host in self._free
            self._note(host, info, revision)
            return known and self._steal_wanted and host != self.host and self._free[host] <= 0

    def forget(self, host: str) -> None:
        """A host left."""
        with self._lock:
            self._free.pop(host, None)
            self._arrivals.pop(host, None)

    def arrived(self, owners: Iterable[tuple[str, int]]) -> bool:
        """Entries of peers arrived: (owner, mod_revision) each. True: one is a sign of a
        backlog and the loop wants to steal: wake it."""
        wake = False
        with self._lock:
            for owner, revision in owners:
                self._arrivals[owner] = arrived = self._arrivals.get(owner, 0) + 1
                if arrived > self._free.get(owner, 0):  # more than it had free workers for
                    self._backlog_at = max(self._backlog_at, revision)
                    wake |= self._steal_wanted
        return wake

    def backlog_seen(self, revision: int) -> None:
        """A queue listing at ``revision`` held peers' entries: they may be a backlog."""
        with self._lock:
            self._backlog_at = max(self._backlog_at, revision)

    def _note(self, host: str, info: HostInfo | None, revision: int) -> None:
        """Entries of ``host`` that arrive from now on are counted against its free workers."""
        self._free[host] = info.capacity - info.running if info is not None else 0
        self._arrivals[host] = 0
        if info is not None and info.full and host != self.host:
            self._backlog_at = max(self._backlog_at, revision)  # it may have a backlog we could take
