"""Keep one lease alive from a daemon thread, and know conservatively when it may have expired.

``expires_at`` is measured from when the last *successful* refresh was *sent*: etcd restarted the
lease's clock no earlier than that, so our estimate is never later than the real expiry. Fencing
in the ledger is what makes a late owner harmless; this estimate only lets the owner stop its
work early instead of computing results nobody will accept.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..errors import LeaseLost, RegistryError
from ..registry import Registry

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(
        self,
        registry: Registry,
        ttl: int,
        *,
        interval: float | None = None,
        on_lost: Callable[[int], None] | None = None,
    ) -> None:
        self.registry = registry
        self.ttl = ttl
        self.interval = interval if interval is not None else ttl / 3
        self.on_lost = on_lost
        self._lease = 0
        self._expires_at = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    @property
    def lease(self) -> int:
        return self._lease

    @property
    def expires_at(self) -> float:
        """monotonic() time by which the lease has certainly expired unless refreshed."""
        return self._expires_at

    @property
    def is_alive(self) -> bool:
        return self._lease != 0 and time.monotonic() < self._expires_at

    def start(self) -> int:
        """Grant a fresh lease and keep it alive. Returns the lease id."""
        with self._lock:
            sent = time.monotonic()
            self._lease = self.registry.grant(self.ttl)
            self._expires_at = sent + self.ttl
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
                self._thread.start()
            return self._lease

    def ensure(self) -> int:
        """The live lease, granting a new one if the old one is gone."""
        return self._lease if self.is_alive else self.start()

    def refresh(self) -> bool:
        """One refresh now. False when the lease is gone (``on_lost`` has been called)."""
        lease = self._lease
        if lease == 0:
            return False
        sent = time.monotonic()
        try:
            self.registry.refresh(lease)
        except LeaseLost:
            self._lost(lease)
            return False
        except RegistryError as exc:
            self._note_failure(exc)
            return self.is_alive
        with self._lock:
            if self._lease == lease:
                self._expires_at = sent + self.ttl
        if self._failing:
            log.info("lease %x refreshed again", lease)
            self._failing = False
        return True

    def stop(self, *, revoke: bool = True) -> None:
        self._stop.set()
        lease, self._lease = self._lease, 0
        if revoke and lease:
            try:
                self.registry.revoke(lease)
            except RegistryError as exc:  # the lease will expire by itself
                log.warning("could not revoke lease %x: %s", lease, exc)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self._lease:
                self.refresh()

    def _lost(self, lease: int) -> None:
        with self._lock:
            if self._lease != lease:
                return
            self._lease = 0
            self._expires_at = 0.0
        log.warning("lease %x lost", lease)
        if self.on_lost is not None:
            self.on_lost(lease)

    def _note_failure(self, exc: RegistryError) -> None:
        if not self._failing:
            log.warning("lease refresh failing: %s", exc, exc_info=True)
            self._failing = True
        else:
            log.warning("lease refresh failing: %s", exc)
        if not self.is_alive and self._lease:
            self._lost(self._lease)
