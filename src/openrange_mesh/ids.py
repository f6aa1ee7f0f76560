"""Globally unique, creation-sortable episode IDs without an etcd round trip per ID.

An ID is ``<revision:010x>-<seq:04x>-<host>``. ``revision`` is the revision of a write *this
allocator itself made* (its incarnation write, or later one of its own submission txns): etcd
gives every write a distinct revision, so no two allocators anywhere can hold the same one, and
``seq`` counts IDs issued under it. Adopting the revision of our latest own write keeps IDs
sorted by creation across clients to within one submission. ``host`` is for humans.
"""

from __future__ import annotations

import threading

from .keys import Keys, check_name
from .registry import Put, Registry

_SEQ_LIMIT = 0x10000


def format_id(revision: int, seq: int, host: str) -> str:
    return f"{revision:010x}-{seq:04x}-{host}"


class IdAllocator:
    def __init__(self, registry: Registry, keys: Keys, host: str) -> None:
        self._registry = registry
        self._keys = keys
        self._host = check_name("host id", host)
        self._lock = threading.Lock()
        self._revision = 0
        self._seq = 0

    def next_ids(self, count: int) -> list[str]:
        ids: list[str] = []
        with self._lock:
            while len(ids) < count:
                if self._revision == 0 or self._seq >= _SEQ_LIMIT:
                    self._adopt_locked(self._incarnate())
                take = min(count - len(ids), _SEQ_LIMIT - self._seq)
                ids.extend(format_id(self._revision, s, self._host) for s in range(self._seq, self._seq + take))
                self._seq += take
        return ids

    def adopt(self, revision: int) -> None:
        """Tell the allocator a revision produced by one of its own successful writes."""
        with self._lock:
            if revision > self._revision:
                self._adopt_locked(revision)

    def _adopt_locked(self, revision: int) -> None:
        self._revision = revision
        self._seq = 0

    def _incarnate(self) -> int:
        result = self._registry.txn([], [Put(self._keys.incarnation(self._host), b"")])
        return result.revision
