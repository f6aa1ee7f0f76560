"""What the control watch hands the loop to act on: cancel markers seen, hosts that died.

Threads: the control-watch thread adds (agent/watcher.py), and the loop adds the cancels of
claims it adopts (agent/claimer.py); the loop takes (agent/stopper.py, agent/orphans.py).
``_lock`` guards ``_cancels``; dead hosts go through a ``SimpleQueue``, which has a lock of
its own.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class DeadHost:
    """A host key deleted, as the watch saw it: its lease is gone, and with it, at the same
    revision, every claim key of that host. Its claims are read at the revision before, and
    put back by its ``heir`` (and the leader: agent/orphans.py)."""

    host: str
    lease: int
    revision: int  # of the deletion
    heir: str | None  # ledger/owners.Ring.heir over the hosts live at that revision, this one included


class Inbox:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancels: set[str] = set()  # cancel markers seen, not yet taken by the loop
        self._dead: queue.SimpleQueue[DeadHost] = queue.SimpleQueue()

    def cancel_requested(self, episode_id: str) -> None:
        with self._lock:
            self._cancels.add(episode_id)

    def take_cancels(self) -> set[str]:
        with self._lock:
            cancels, self._cancels = self._cancels, set()
        return cancels

    def host_died(self, dead: DeadHost) -> None:
        """A dead host to requeue the claims of; the loop puts one back when etcd could not
        answer (requeues are idempotent: another try, or nobody would)."""
        self._dead.put(dead)

    def next_dead_host(self) -> DeadHost | None:
        try:
            return self._dead.get_nowait()
        except queue.Empty:
            return None
