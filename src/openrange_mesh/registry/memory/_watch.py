"""A watch on an in-process store: events from its change log, in revision order."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from ..base import (
    Event,
    KeyValue,
    WatchBatch,
    WatchIterMixin,
)

if TYPE_CHECKING:
    from . import MemoryRegistry


class _MemoryWatch(WatchIterMixin):
    def __init__(
        self, registry: MemoryRegistry, prefix: bytes, start_revision: int, prev_kv: bool, puts_only: bool
    ) -> None:
        self._registry = registry
        self._store = registry._store
        self._prefix = prefix
        self._next_revision = start_revision
        self._prev_kv = prev_kv
        self._puts_only = puts_only
        self._cancelled = threading.Event()

    def next(self, timeout: float) -> WatchBatch:
        store = self._store
        deadline = time.monotonic() + timeout
        while not self._cancelled.is_set():
            with store.lock:
                kvs, prevs = self._wait(deadline)
                seen = max(store.revision, self._next_revision - 1)
            self._next_revision = seen + 1
            prefix = self._prefix
            events = [
                Event("put" if kv.version else "delete", kv, prev if self._prev_kv else None)
                for kv, prev in zip(kvs, prevs, strict=True)
                if kv.key.startswith(prefix) and (kv.version or not self._puts_only)
            ]
            if events or time.monotonic() >= deadline:
                return WatchBatch(events, seen)
        return WatchBatch([], self._next_revision - 1)

    def _wait(self, deadline: float) -> tuple[list[KeyValue], list[KeyValue | None]]:
        """Changes from the next revision on, waiting until ``deadline`` for some (lock held)."""
        store = self._store
        while True:
            store.expire()
            changes = store.changes_since(self._next_revision)
            remaining = deadline - time.monotonic()
            if changes[0] or remaining <= 0 or self._cancelled.is_set():
                return changes
            store.waiting += 1
            try:
                store.changed.wait(remaining)
            finally:
                store.waiting -= 1

    def cancel(self) -> None:
        self._cancelled.set()
        self._registry._watches.discard(self)
        with self._store.changed:
            self._store.changed.notify_all()
