"""``SelfCheck``: whether this host is fit to run episodes, acted on. The store check before it
joins, infrastructure faults its worker pool reports, and the rechecks of a sick host.

Health (agent/health.py) keeps the verdict; SelfCheck runs the checks and tells peers through
the host record (a sick host's weight is 0: they take the queue entries it owned).

Threads: the loop thread (the pool reports faults from it). Owns the store it opened for its
checks (the run report at a drain is written there too).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..errors import StoreError
from ..store import Store, open_store
from ..store.probe import probe
from ..worker.pool import Pool
from .health import Health
from .host_record import HostRecord
from .metrics import Metrics

log = logging.getLogger(__name__)


class SelfCheck:
    def __init__(
        self,
        store_url: str,
        health: Health,
        pool: Pool,
        host_record: HostRecord,
        metrics: Metrics,
        wake: Callable[[], None],
    ) -> None:
        self.store_url = store_url
        self.health = health
        self.pool = pool
        self.host_record = host_record
        self.metrics = metrics
        self._wake = wake
        self.store: Store | None = None  # opened by the first check; None without a store URL

    def check_store(self) -> None:
        """Write, read back and delete a probe (store/probe.py): a store that cannot be opened
        or written is found here, once, not by every worker at every episode. Raises
        ``StoreError`` saying the check failed, and why."""
        if not self.store_url:
            return
        try:
            self.store = self.store or open_store(self.store_url)
            probe(self.store)
        except StoreError as exc:
            raise StoreError(f"store check failed: {exc}") from exc

    def fault(self, reason: str) -> None:
        """An infrastructure failure, from the pool."""
        self.metrics.faults.inc()
        if self.health.fault(reason):
            log.warning("draining itself: %s; claims again once its checks pass", reason)
            self.host_record.changed()  # say so in the host record now: peers take our entries
            self._wake()

    def step(self) -> str | None:
        """A sick host rechecks itself now and then: its store, and a worker that starts."""
        if not self.health.recheck_due():
            return None
        try:
            self.check_store()
            problem = None if self.pool.started() else "no worker could start"
        except StoreError as exc:
            problem = str(exc)
        if not self.health.rechecked(problem):
            return f"still draining itself: {problem}"
        self.host_record.changed()  # our weight is back: peers give us our share again
        return "checks pass again: claiming"
