"""One in-process keyspace: live keys, their history, a change log, leases and the reaper
thread that expires them."""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
from bisect import bisect_left, bisect_right, insort
from collections.abc import Sequence
from operator import attrgetter

from ...errors import Compacted, ConfigError, LeaseLost, RegistryError
from ..base import (
    Delete,
    Get,
    KeyValue,
    Op,
    Put,
    RangeResult,
    prefix_end,
)

_REAP_INTERVAL = 0.1  # seconds between the reaper's lease checks: expiry lands within ttl + 0.1 s
_mod_revision = attrgetter("mod_revision")


def _insert(keys: list[bytes], key: bytes) -> None:
    if not keys or key > keys[-1]:  # keys made in order (ids, timestamps) go at the end
        keys.append(key)
    else:
        insort(keys, key)


def _span(keys: list[bytes], prefix: bytes, start: bytes | None) -> tuple[int, int]:
    """The slice of the sorted ``keys`` under ``prefix``, from ``start``."""
    lo = bisect_left(keys, prefix if start is None or start < prefix else start)
    end = prefix_end(prefix)
    return lo, len(keys) if end == b"\0" else bisect_left(keys, end, lo)


class _Lease:
    __slots__ = ("deadline", "keys", "ttl")

    def __init__(self, ttl: int, deadline: float) -> None:
        self.ttl = ttl
        self.deadline = deadline
        self.keys: set[bytes] = set()


class _Store:
    """One keyspace. Every method but ``reap`` expects the caller to hold ``lock``."""

    def __init__(self, history_limit: int) -> None:
        if history_limit < 1:
            raise ConfigError(f"history_limit must be at least 1, got {history_limit}")
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.waiting = 0  # watchers blocked in changed.wait(): writers notify only if any
        self.revision = 1  # like etcd: the empty store is revision 1
        self.compacted = 1  # the oldest revision still readable
        self.pruned = 1  # history and log hold nothing older than this is needed for
        self.history_limit = history_limit
        self.prune_step = max(1, history_limit // 16)  # trim in batches: amortized O(1) per write
        self.kvs: dict[bytes, KeyValue] = {}
        self.live: list[bytes] = []  # sorted keys of kvs
        self.history: dict[bytes, list[KeyValue]] = {}  # per key, by mod_revision; tombstones too
        self.known: list[bytes] = []  # sorted keys of history
        # Every change since pruned, in revision then op order: the new KeyValue (a tombstone,
        # version 0 and empty value, for a delete) and, at the same index, the one it replaced.
        self.log: list[KeyValue] = []
        self.log_prev: list[KeyValue | None] = []
        self.leases: dict[int, _Lease] = {}
        self.deadlines: list[tuple[float, int]] = []  # heap; stale entries skipped on pop
        self.lease_ids = itertools.count(random.randrange(1 << 40, 1 << 48))
        self.is_reaped = False

    # -- leases

    def expire(self) -> None:
        """Drop the leases whose deadline passed, with their keys (every call looks: a
        heap peek when none is due)."""
        now = time.monotonic()
        heap = self.deadlines
        while heap and heap[0][0] <= now:
            deadline, lease_id = heapq.heappop(heap)
            lease = self.leases.get(lease_id)
            if lease is not None and lease.deadline == deadline:  # else refreshed or revoked
                del self.leases[lease_id]
                self.drop_keys(lease.keys)

    def grant(self, ttl: int) -> int:
        lease_id = next(self.lease_ids)
        deadline = time.monotonic() + ttl
        self.leases[lease_id] = _Lease(ttl, deadline)
        heapq.heappush(self.deadlines, (deadline, lease_id))
        if not self.is_reaped:
            self.is_reaped = True
            _reaper.add(self)
        return lease_id

    def refresh(self, lease_id: int) -> int:
        lease = self.leases.get(lease_id)
        if lease is None:
            raise LeaseLost(lease_id)
        lease.deadline = time.monotonic() + lease.ttl
        heapq.heappush(self.deadlines, (lease.deadline, lease_id))
        return lease.ttl

    def drop_keys(self, keys: set[bytes]) -> None:
        """Delete a revoked lease's keys in one revision, in key order (as etcd does)."""
        if not keys:
            return
        rev = self.revision + 1
        for key in sorted(keys):
            del self.live[bisect_left(self.live, key)]
            self.drop(key, rev)
        self.commit(rev)

    def reap(self) -> bool:
        """The reaper's pass: expire due leases; False (and unregistered) once none are left."""
        with self.lock:
            self.expire()
            if self.leases:
                return True
            self.is_reaped = False
            _reaper.discard(self)
            return False

    # -- writes

    def apply(self, ops: Sequence[Op]) -> list[list[KeyValue]]:
        leases = self.leases
        for op in ops:  # check first: a txn applies all or nothing
            if type(op) is Put and op.lease and op.lease not in leases:
                raise LeaseLost(op.lease)
        rev = self.revision + 1
        kvs = self.kvs
        wrote = False
        responses: list[list[KeyValue]] = []
        for op in ops:
            if type(op) is Put:  # the hot path, inlined: a few microseconds per txn matter
                key = op.key
                lease = op.lease
                prev = kvs.get(key)
                if prev is None:
                    kv = KeyValue(key, op.value, rev, rev, 1, lease)
                    _insert(self.live, key)
                else:
                    kv = KeyValue(key, op.value, prev.create_revision, rev, prev.version + 1, lease)
                    if prev.lease and prev.lease != lease:
                        self.unbind(prev.lease, key)
                if lease:
                    leases[lease].keys.add(key)
                kvs[key] = kv
                self.record(kv, prev)
                wrote = True
                responses.append([])
            elif type(op) is Delete:
                wrote = self.delete(op, rev) or wrote
                responses.append([])
            elif type(op) is Get:
                responses.append(self.read(op))
            else:
                raise RegistryError(f"not a txn op: {op!r}")
        if wrote:
            self.commit(rev)
        return responses

    def delete(self, op: Delete, rev: int) -> bool:
        if op.prefix:
            lo, hi = _span(self.live, op.key, None)
            keys = self.live[lo:hi]
            del self.live[lo:hi]
            for key in keys:
                self.drop(key, rev)
            return bool(keys)
        if op.key not in self.kvs:
            return False
        del self.live[bisect_left(self.live, op.key)]
        self.drop(op.key, rev)
        return True

    def drop(self, key: bytes, rev: int) -> None:
        """Delete ``key`` from kvs (the caller removed it from live)."""
        prev = self.kvs.pop(key)
        if prev.lease:
            self.unbind(prev.lease, key)
        self.record(KeyValue(key, b"", 0, rev, 0, 0), prev)

    def unbind(self, lease_id: int, key: bytes) -> None:
        lease = self.leases.get(lease_id)
        if lease is not None:
            lease.keys.discard(key)

    def record(self, kv: KeyValue, prev: KeyValue | None) -> None:
        versions = self.history.get(kv.key)
        if versions is None:
            self.history[kv.key] = [kv]
            _insert(self.known, kv.key)
        else:
            versions.append(kv)
        self.log.append(kv)
        self.log_prev.append(prev)

    def commit(self, rev: int) -> None:
        self.revision = rev
        if rev - self.compacted >= self.history_limit:
            self.compacted = rev - self.history_limit + 1
            if self.compacted - self.pruned >= self.prune_step:
                self.prune()
        if self.waiting:
            self.changed.notify_all()

    def compact(self, revision: int) -> None:
        if revision > self.revision:
            raise RegistryError(f"cannot compact to revision {revision}: the store is at {self.revision}")
        if revision > self.compacted:
            self.compacted = revision
            self.prune()

    def prune(self) -> None:
        """Drop what no read at or after ``compacted`` needs: log entries older than it, and per
        key every version older than the last one at or before it (and that one if a tombstone)."""
        oldest = self.compacted
        cut = bisect_left(self.log, oldest, key=_mod_revision)
        forgotten: set[bytes] = set()
        for key in {kv.key for kv in self.log[:cut]}:
            versions = self.history.get(key)
            if versions is None:  # forgotten by an earlier prune (its tombstone was at the cut)
                continue
            keep = bisect_right(versions, oldest, key=_mod_revision) - 1
            if keep > 0:
                del versions[:keep]
            if versions[0].version == 0 and versions[0].mod_revision <= oldest:
                del versions[0]
            if not versions:
                del self.history[key]
                forgotten.add(key)
        del self.log[:cut]
        del self.log_prev[:cut]
        if forgotten:
            self.known = [key for key in self.known if key not in forgotten]
        self.pruned = oldest

    # -- reads

    def read(self, op: Get) -> list[KeyValue]:
        if op.prefix:
            lo, hi = _span(self.live, op.key, None)
            kvs = self.kvs
            return [kvs[key] for key in self.live[lo:hi]]
        kv = self.kvs.get(op.key)
        return [] if kv is None else [kv]

    def range(self, prefix: bytes, start: bytes | None, revision: int, limit: int) -> RangeResult:
        if revision == self.revision:
            lo, hi = _span(self.live, prefix, start)
            more = 0 < limit < hi - lo
            if more:
                hi = lo + limit
            kvs = self.kvs
            return RangeResult([kvs[key] for key in self.live[lo:hi]], revision, more)
        if revision > self.revision:
            raise RegistryError(f"revision {revision} is in the future (current: {self.revision})")
        if revision < self.compacted:
            raise Compacted(revision, self.compacted)
        known = self.known
        lo, hi = _span(known, prefix, start)
        found: list[KeyValue] = []
        for i in range(lo, hi):  # not known[lo:hi]: a page should not copy the whole span
            versions = self.history[known[i]]
            at = bisect_right(versions, revision, key=_mod_revision) - 1
            if at >= 0 and versions[at].version:
                if limit and len(found) == limit:
                    return RangeResult(found, revision, True)
                found.append(versions[at])
        return RangeResult(found, revision, False)

    def changes_since(self, revision: int) -> tuple[list[KeyValue], list[KeyValue | None]]:
        if revision < self.compacted:
            raise Compacted(revision, self.compacted)
        log = self.log
        if not log or log[-1].mod_revision < revision:
            return [], []
        at = bisect_left(log, revision, key=_mod_revision)
        return log[at:], self.log_prev[at:]


class _Reaper:
    """One daemon thread for the process, expiring leases of every store that has some, so
    watchers see expiry deletes without other traffic."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: set[_Store] = set()
        self._thread: threading.Thread | None = None

    def add(self, store: _Store) -> None:
        with self._lock:
            self._stores.add(store)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="memory-registry-reaper", daemon=True)
                self._thread.start()

    def discard(self, store: _Store) -> None:
        with self._lock:
            self._stores.discard(store)

    def _run(self) -> None:
        while True:
            time.sleep(_REAP_INTERVAL)
            with self._lock:
                stores = list(self._stores)
            for store in stores:
                store.reap()


_reaper = _Reaper()
_named_lock = threading.Lock()
_named: dict[str, _Store] = {}


def _open_store(name: str, history_limit: int) -> _Store:
    if not name:
        return _Store(history_limit)
    with _named_lock:
        store = _named.get(name)
        if store is None:
            store = _named[name] = _Store(history_limit)
        return store
