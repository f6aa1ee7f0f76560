"""The registry seam: a handful of etcd-shaped primitives, nothing domain-specific.

Every backend implements ``Registry`` with etcd's semantics:

* Every successful write (put, delete, or a txn whose chosen branch writes) advances the single
  store-wide revision by exactly one; all keys written by one txn share that revision.
  A txn that writes nothing (a failed compare with an empty failure branch, or reads only)
  does not advance the revision.
* ``KeyValue.create_revision`` is the revision that created the key's current incarnation (0 when
  absent in a compare), ``mod_revision`` the last write, ``version`` the number of writes since
  creation, ``lease`` the lease the key is bound to (0 for none).
* A lease expires ``ttl`` seconds after its grant or last refresh; expiry deletes every key bound
  to it, each deletion a normal delete event, all in one revision.
* ``watch(prefix, start_revision)`` yields every event on keys under ``prefix`` with revision >=
  ``start_revision``, in revision order (events of one txn in op order). A start revision older
  than the oldest kept revision raises ``Compacted``: re-list with ``range`` and watch again from
  the list's revision + 1. With ``puts_only`` deletes are left out (etcd's NODELETE filter:
  etcd does not even send them, which is the point).
* Keys and values are bytes. Nothing above the seam sees a third-party exception: backends raise
  only ``errors.RegistryError`` subclasses (``Unavailable`` is the only retryable one).
* ``observer`` (None by default) is told of every request a backend makes: ``observer(operation,
  seconds, kind)``, ``operation`` one of ``OPERATIONS``, ``kind`` None when it was answered, else
  one of ``ERROR_KINDS`` (``error_kind``). The agent points it at its metrics (agent/metrics.py), so
  nothing here imports them. It is called on the calling thread, on the hot path: it must be cheap
  and must not raise. A watch reports ``"watch"`` once each time its stream is opened again
  (``seconds``: how long the one before lasted).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from ..errors import Compacted, LeaseLost, RegistryError, TlsError, Unavailable

# What ``Registry.observer`` is told of: the request, and how a failed one failed.
OPERATIONS = ("txn", "range", "get", "lease_grant", "lease_refresh", "lease_revoke", "lease_ttl", "watch")
ERROR_KINDS = ("unavailable", "timeout", "tls", "other")
Observer = Callable[[str, float, "str | None"], None]

# etcd's limits on one request (its defaults for --max-txn-ops and --max-request-bytes), declared
# once: every txn packer above the seam derives its budget from them, and memory:// enforces them.
MAX_TXN_OPS = 128
MAX_REQUEST_BYTES = 1572864  # 1.5 MiB

CompareTarget = Literal["value", "version", "create", "mod", "lease"]
CompareOp = Literal["==", "!=", "<", ">"]


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Compare:
    """``key``'s ``target`` ``op`` ``operand``. An absent key has version, create and mod 0,
    lease 0, and fails every value compare (etcd's behaviour)."""

    key: bytes
    target: CompareTarget
    op: CompareOp
    operand: bytes | int


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete ``key``; with ``prefix=True`` every key starting with ``key``."""

    key: bytes
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class Get:
    """Read inside a txn: ``key`` exactly, or with ``prefix=True`` every key under it."""

    key: bytes
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class Txn:
    """A txn as an op of a txn (etcd >= 3.3): independent conditional writes in one request.
    As in etcd, every compare of the whole tree is checked against the state before any of it
    applies, and everything it writes shares one revision. Its result is in ``TxnResult.nested``."""

    compares: Sequence[Compare]
    success: Sequence[Op]
    failure: Sequence[Op] = ()


Op = Put | Delete | Get | Txn


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    # One entry per op of the branch that ran: the KeyValues a Get read, [] for other ops.
    responses: list[list[KeyValue]] = field(default_factory=list)
    # One result per Txn op of the branch that ran, in order.
    nested: list[TxnResult] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: list[KeyValue]
    revision: int  # the store revision the range was read at
    more: bool  # there are more keys after the last one returned (paging)


@dataclass(frozen=True, slots=True)
class Event:
    type: Literal["put", "delete"]
    kv: KeyValue  # for a delete: key, mod_revision = the delete's revision, empty value
    prev: KeyValue | None = None  # the key's previous KeyValue, when the watch asked for it


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """What one wait on a watch returns: zero or more events, and the revision up to which
    the watcher has seen everything (so a resumed watch starts at ``revision + 1``)."""

    events: list[Event]
    revision: int


@runtime_checkable
class Watch(Protocol):
    def next(self, timeout: float) -> WatchBatch:
        """Wait up to ``timeout`` seconds for events; an empty batch on timeout.
        Raises ``Compacted`` if the start revision is gone, ``Unavailable`` when no endpoint
        answers (the watch may be resumed by opening a new one at ``revision + 1``)."""
        ...

    def cancel(self) -> None:
        """Stop the watch and release its connection and thread. Idempotent."""
        ...

    def __iter__(self) -> Iterator[Event]: ...


@runtime_checkable
class Registry(Protocol):
    """The control-plane seam. Implementations are thread-safe."""

    url: str  # the URL it was opened with, credentials removed (safe to log)
    observer: Observer | None  # told of every request (see the module docstring); None: nobody

    def grant(self, ttl: int) -> int:
        """Grant a lease of ``ttl`` seconds (>= 2 on etcd); return its id."""
        ...

    def refresh(self, lease: int) -> int:
        """Keep ``lease`` alive; return its ttl. Raises ``LeaseLost`` if it already expired."""
        ...

    def revoke(self, lease: int) -> None:
        """Revoke ``lease`` and delete its keys. Revoking an unknown lease is not an error."""
        ...

    def time_to_live(self, lease: int) -> tuple[int, int] | None:
        """(seconds left, ttl granted) of a live lease; None once it expired or was revoked.
        Read-only: it does not refresh the lease. Seconds are etcd's: whole, rounded down."""
        ...

    def get(self, key: bytes) -> tuple[KeyValue | None, int]:
        """The current KeyValue of ``key`` (or None) and the revision it was read at."""
        ...

    def range(
        self,
        prefix: bytes,
        *,
        start: bytes | None = None,
        revision: int | None = None,
        limit: int = 0,
    ) -> RangeResult:
        """Keys under ``prefix`` in byte order, from ``start`` (inclusive; default the prefix)
        at ``revision`` (default: current), at most ``limit`` (0: all). Page by passing the
        last key + b"\\0" as the next ``start`` and the first page's revision."""
        ...

    def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        """Atomically: if every compare holds run ``success`` else ``failure``."""
        ...

    def watch(self, prefix: bytes, start_revision: int, *, prev_kv: bool = False, puts_only: bool = False) -> Watch:
        """Watch every key under ``prefix`` from ``start_revision`` (see module docstring)."""
        ...

    def share_answers(self) -> Any:
        """A table, in memory another process of this host can map, of when each endpoint last
        answered this registry (None where there is nothing to share: memory://). A registry
        opened with it (``open_registry(answers=...)``) reads and writes the same table, so
        one process's lease keepalive proves the endpoint alive to the other's quiet watches
        (the dashboard child's), which then send etcd nothing."""
        ...

    def close(self) -> None:
        """Cancel open watches, release connections. Idempotent."""
        ...


def error_kind(exc: RegistryError) -> str | None:
    """How a request failed, for ``observer``: None for an answer that is a fact about the data
    (a lease etcd no longer has, a compacted revision), not a failure of etcd or the way to it."""
    if isinstance(exc, LeaseLost | Compacted):
        return None
    if isinstance(exc, TlsError):
        return "tls"
    if isinstance(exc, Unavailable):
        return "timeout" if exc.timed_out else "unavailable"
    return "other"


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix`` (etcd's range_end)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # etcd: range_end "\0" means "every key >= key"


class WatchIterMixin:
    """``__iter__`` for Watch implementations: yield events until cancelled."""

    _cancelled: threading.Event

    def next(self, timeout: float) -> WatchBatch:  # pragma: no cover - provided by the backend
        raise NotImplementedError

    def __iter__(self) -> Iterator[Event]:
        while not self._cancelled.is_set():
            yield from self.next(0.5).events
