"""What this host knows of its peers, to steal from them: ``Peers``.

Each host claims the entries of its own mailbox (agent/owned.py); a host with idle workers and
none of its own takes a busy peer's (agent/claimer.py: a steal read of peers' mailboxes). A read
costs a range request, so it is made only when our own mailbox runs dry (the claimer sees that),
and after a sign that work was queued elsewhere: a client's submission marker (``ctl/queued``,
written with its submission's last txn when the submission left a host without a share, at
most once a second per client). Entries of peers no longer reach us (each goes to its owner
alone), and host records are no longer rewritten as their hosts get busy (each write reaches
every agent), so the marker is the one sign: it matters when a submission gave us no share at
all, and costs each agent an event per client per second at most, whatever the number of
episodes, and none for a submission that gave every host a share. Peers keeps the live hosts
(where a steal read may start, and on a ring, where a dead host's heir is found: ledger/owners.py),
the revision and time of the latest sign, and whether the loop wants to steal, so that a sign wakes
the loop only when it has idle workers.

Threads: the control-watch thread writes hosts and signs; the loop says whether it wants to
steal and reads the rest (agent/watcher.py, agent/claimer.py). ``_lock`` guards every field.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from ..ledger.owners import Ring


class Peers:
    def __init__(self, host: str) -> None:
        self.host = host  # ours: not a peer
        self._lock = threading.Lock()
        self._hosts: set[str] = set()  # live peers
        self._ring = Ring([host])  # they and we
        self._backlog_at = 0  # revision of the latest sign that work was queued
        self._sign_at = 0.0  # monotonic time it arrived
        self._steal_wanted = False  # the loop's last pass left workers idle with nothing of ours to claim

    @property
    def backlog_at(self) -> int:
        with self._lock:
            return self._backlog_at

    @property
    def sign_at(self) -> float:
        with self._lock:
            return self._sign_at

    @property
    def steal_wanted(self) -> bool:
        with self._lock:
            return self._steal_wanted

    def want_steal(self, wanted: bool) -> bool:
        """From the loop: whether it has idle workers and nothing of ours to give them. True
        when it did not before."""
        with self._lock:
            ran_dry = wanted and not self._steal_wanted
            self._steal_wanted = wanted
            return ran_dry

    def peers(self) -> list[str]:
        """Live peers, sorted."""
        with self._lock:
            return sorted(self._hosts)

    def load(self, hosts: Iterable[str]) -> None:
        """Every live host, as listed."""
        with self._lock:
            self._hosts = {h for h in hosts if h != self.host}
            self._ring = Ring([self.host, *self._hosts])

    def joined(self, host: str) -> None:
        if host != self.host:
            with self._lock:
                self._hosts.add(host)
                self._ring.add(host)

    def forget(self, host: str) -> None:
        """A host left."""
        with self._lock:
            self._hosts.discard(host)
            if host != self.host:
                self._ring.remove(host)

    def heir(self, dead: str) -> str | None:
        """Who puts back the claims of ``dead`` among the live hosts, us included (every
        agent's answer at the revision that deleted its key: ``Ring.heir``)."""
        with self._lock:
            return self._ring.heir(dead)

    def work_queued(self, revision: int) -> bool:
        """A submission marker at ``revision``. True: wake the loop, which wants to steal."""
        with self._lock:
            self._backlog_at = max(self._backlog_at, revision)
            self._sign_at = time.monotonic()
            return self._steal_wanted
