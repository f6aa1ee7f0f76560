"""``Collector``: the leader's collection in the store (ledger/storage_gc.py), from a thread of
its own: listing a store of 100k episodes takes seconds, which the loop must never wait for.

Threads: its own (``store-gc``), started by the agent and stopped with it. It reads whether this
agent leads (``is_leader``, a bool written by the leadership) and owns nothing else.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..client import snapshots
from ..errors import MeshError
from ..keys import Keys
from ..ledger import storage_gc
from ..registry import Registry
from ..store import Store

log = logging.getLogger(__name__)


class Collector:
    def __init__(
        self,
        registry: Registry,
        keys: Keys,
        store: Store | None,
        is_leader: Callable[[], bool],
        interval: float,
        grace: float,
    ) -> None:
        self.registry, self.keys, self.store = registry, keys, store
        self.is_leader = is_leader
        self.interval, self.grace = interval, grace
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-gc", daemon=True)

    def start(self) -> None:
        if self.interval and self.store is not None:  # an agent without a store has nothing to collect
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.is_leader():
                self.collect_once()

    def collect_once(self) -> dict[str, int]:
        """One collection (what went, by kind); a failure is logged and the next interval tries."""
        try:
            names = [n.digest for n in snapshots.names(self.registry, self.keys)]
            need = storage_gc.needed(self.registry, self.keys, names)
            assert self.store is not None  # started only with one
            return storage_gc.collect(self.store, need, self.grace)
        except MeshError as exc:
            log.warning("store collection failed (the next one tries again): %s", exc)
            return {}
        except Exception:  # a bug must not end the thread, and with it every later collection
            log.exception("store collection failed (the next one tries again)")
            return {}
