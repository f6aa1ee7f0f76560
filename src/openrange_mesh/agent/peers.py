"""What this host knows of its peers' backlogs, to steal from them: ``Peers``.

Each host claims the entries of its own mailbox (agent/owned.py); a host with idle workers and
none of its own takes a busy peer's (agent/claimer.py: a steal read of a peer's mailbox). A read
costs a range request, so it is made only when our own mailbox runs dry (once, then) and after a
sign that a peer has a backlog: its record says so (more entries in its mailbox than idle
workers: agent/host_record.py). Entries of peers no longer reach us (each goes to its owner
alone), so their records are the only sign; a backlog is written at most once a second, so a
thief that ran dry reads once without waiting for one. Peers keeps which peers had a backlog as
of their last record, the revision of the latest sign, and whether the loop wants to steal, so
that a sign wakes the loop only when it has idle workers.

Threads: the control-watch thread writes what host records say; the loop says whether it wants
to steal and reads the latest sign and who has a backlog (agent/watcher.py, agent/claimer.py).
``_lock`` guards every field.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from ..model import HostInfo


class Peers:
    def __init__(self, host: str) -> None:
        self.host = host  # ours: our own record is no sign of anything
        self._lock = threading.Lock()
        self._backlog: dict[str, bool] = {}  # live host -> whether its last record said it had a backlog
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

    def want_steal(self, wanted: bool) -> bool:
        """From the loop: whether it has idle workers and nothing of ours to give them. True
        when it did not before: our mailbox just ran dry."""
        with self._lock:
            ran_dry = wanted and not self._steal_wanted
            self._steal_wanted = wanted
            return ran_dry

    def peers(self) -> tuple[list[str], list[str]]:
        """Live peers whose last record said they had a backlog, and the others."""
        with self._lock:
            busy = [h for h, b in self._backlog.items() if b and h != self.host]
            rest = [h for h, b in self._backlog.items() if not b and h != self.host]
        return busy, rest

    def load(self, records: Iterable[tuple[str, HostInfo | None]], revision: int) -> None:
        """Every live host's record, as listed at ``revision``: what was known before goes."""
        with self._lock:
            self._backlog = {}
            for host, info in records:
                self._note(host, info, revision)

    def on_record(self, host: str, info: HostInfo | None, revision: int) -> bool:
        """A host's record, new or rewritten (None: unreadable, no backlog). True: wake the
        loop, which wants to steal, and a peer has a backlog now."""
        with self._lock:
            return self._note(host, info, revision) and self._steal_wanted

    def forget(self, host: str) -> None:
        """A host left."""
        with self._lock:
            self._backlog.pop(host, None)

    def _note(self, host: str, info: HostInfo | None, revision: int) -> bool:
        """Record whether ``host`` has a backlog; True if that is a sign for us."""
        backlog = info is not None and info.backlog
        self._backlog[host] = backlog
        if backlog and host != self.host:
            self._backlog_at = max(self._backlog_at, revision)
        return backlog and host != self.host
