"""The in-process registry: etcd's semantics (see base.py) without a server.

``memory://NAME`` opens the process-global store NAME (the first opener's ``history_limit``
wins); ``memory://`` opens a fresh private store. A store keeps the live keys (a dict plus a
sorted key list for ranges), each key's history and one change log covering the last
``history_limit`` revisions (reads and watches at a past revision), and leases with a heap of
deadlines that every call checks and one daemon reaper thread checks every ``_REAP_INTERVAL``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Concatenate, ParamSpec, TypeVar
from urllib.parse import urlsplit

from ...errors import ConfigError, RegistryError, TooLarge
from ..base import (
    MAX_REQUEST_BYTES,
    MAX_TXN_OPS,
    Compare,
    KeyValue,
    Observer,
    Op,
    RangeResult,
    Txn,
    TxnResult,
    error_kind,
)
from ._store import _open_store
from ._txn import _choose, _flatten, _holds, _results, check_keys, check_ops, request_bytes
from ._watch import _MemoryWatch

__all__ = ["MemoryRegistry"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _observed(
    operation: str,
) -> Callable[[Callable[Concatenate[MemoryRegistry, _P], _R]], Callable[Concatenate[MemoryRegistry, _P], _R]]:
    """Tell the registry's observer of each call (base.py), as etcd's backend does of each request."""

    def wrap(method: Callable[Concatenate[MemoryRegistry, _P], _R]) -> Callable[Concatenate[MemoryRegistry, _P], _R]:
        def observed(self: MemoryRegistry, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
            observer = self.observer
            if observer is None:
                return method(self, *args, **kwargs)
            began = time.perf_counter()
            try:
                result = method(self, *args, **kwargs)
            except RegistryError as exc:
                observer(operation, time.perf_counter() - began, error_kind(exc))
                raise
            observer(operation, time.perf_counter() - began, None)
            return result

        functools.update_wrapper(observed, method)
        return observed

    return wrap


class MemoryRegistry:
    def __init__(
        self, url: str, *, retry_timeout: float = 10.0, history_limit: int = 100_000, observer: Observer | None = None
    ) -> None:
        self.observer = observer
        parts = urlsplit(url)
        if parts.scheme != "memory":
            raise ConfigError(f"not a memory registry URL: {url!r}")
        self.url = url
        self.retry_timeout = retry_timeout  # nothing to retry in-process
        name = parts.netloc + parts.path
        # No other opener can reach an unnamed store: only whoever holds this object reads it.
        self.is_private = not name
        self._store = _open_store(name, history_limit)
        self._watches: set[_MemoryWatch] = set()
        self._is_closed = False

    @_observed("lease_grant")
    def grant(self, ttl: int) -> int:
        if ttl < 1:
            raise RegistryError(f"lease ttl must be at least 1 second, got {ttl}")
        store = self._store
        with store.lock:
            store.expire()
            return store.grant(ttl)

    @_observed("lease_refresh")
    def refresh(self, lease: int) -> int:
        store = self._store
        with store.lock:
            store.expire()
            return store.refresh(lease)

    @_observed("lease_ttl")
    def time_to_live(self, lease: int) -> tuple[int, int] | None:
        store = self._store
        with store.lock:
            store.expire()
            held = store.leases.get(lease)
            if held is None:
                return None
            return max(0, int(held.deadline - time.monotonic())), held.ttl

    @_observed("lease_revoke")
    def revoke(self, lease: int) -> None:
        store = self._store
        with store.lock:
            store.expire()
            revoked = store.leases.pop(lease, None)
            if revoked is not None:
                store.drop_keys(revoked.keys)

    @_observed("get")
    def get(self, key: bytes) -> tuple[KeyValue | None, int]:
        store = self._store
        with store.lock:
            store.expire()
            return store.kvs.get(key), store.revision

    @_observed("range")
    def range(
        self,
        prefix: bytes,
        *,
        start: bytes | None = None,
        revision: int | None = None,
        limit: int = 0,
    ) -> RangeResult:
        store = self._store
        with store.lock:
            store.expire()
            at = revision if revision is not None and revision > 0 else store.revision  # etcd: <= 0 is now
            return store.range(prefix, start, at, limit)

    @_observed("txn")
    def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        check_ops(compares, success, failure, MAX_TXN_OPS)
        for branch in (success, failure):
            if len(branch) > 1 or any(type(op) is Txn for op in branch):
                check_keys(branch)
        size = request_bytes(compares, success, failure)
        if size > MAX_REQUEST_BYTES:
            raise TooLarge("run a txn", size, MAX_REQUEST_BYTES)
        store = self._store
        with store.lock:
            store.expire()
            kvs = store.kvs
            succeeded = True
            for compare in compares:
                if not _holds(compare, kvs.get(compare.key)):
                    succeeded = False
                    break
            branch = success if succeeded else failure
            if not any(type(op) is Txn for op in branch):
                responses = store.apply(branch)
                return TxnResult(succeeded, store.revision, responses)
            tree = _choose(branch, kvs)  # every compare first, against the state before the txn
            flat = _flatten(tree)
            answers = iter(store.apply(flat))
            responses, nested = _results(tree, answers, store.revision)
            return TxnResult(succeeded, store.revision, responses, nested)

    def watch(
        self, prefix: bytes, start_revision: int, *, prev_kv: bool = False, puts_only: bool = False
    ) -> _MemoryWatch:
        if self._is_closed:
            raise RegistryError(f"registry {self.url} is closed")
        if start_revision <= 0:  # etcd: 0 means "from the next write"
            with self._store.lock:
                start_revision = self._store.revision + 1
        watch = _MemoryWatch(self, prefix, start_revision, prev_kv, puts_only)
        self._watches.add(watch)
        return watch

    def compact(self, revision: int) -> None:
        """Forget every revision older than ``revision`` (etcd's compaction): reads and watches
        from before it raise ``Compacted``."""
        store = self._store
        with store.lock:
            store.compact(revision)

    def share_answers(self) -> None:
        return None  # one process's registry: no endpoint to vouch for

    def close(self) -> None:
        self._is_closed = True
        for watch in list(self._watches):
            watch.cancel()

    def __repr__(self) -> str:
        return f"MemoryRegistry({self.url!r})"
