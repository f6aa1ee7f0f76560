"""Compares and nested txns, checked as etcd checks them: the whole tree against the state
before any of it applies."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import eq, gt, lt, ne
from typing import Any

from ...errors import RegistryError
from ..base import (
    Compare,
    Delete,
    KeyValue,
    Op,
    Put,
    Txn,
    TxnResult,
    prefix_end,
)

_INT_TARGETS = frozenset({"version", "create", "mod", "lease"})
_COMPARE_OPS: dict[str, Callable[[Any, Any], bool]] = {"==": eq, "!=": ne, "<": lt, ">": gt}


def check_ops(compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op], budget: int) -> None:
    """Refuse what etcd refuses: more than ``budget`` compares or ops in a branch, where a
    nested txn's budget is what its parent's widest list left (etcd's checkTxnRequest: ten
    nested txns of 118 ops pass, of 119 fail)."""
    width = max(len(compares), len(success), len(failure))
    if width > budget:
        raise RegistryError("memory registry refused a txn: too many operations in txn request (etcd's limit)")
    for op in (*success, *failure):
        if type(op) is Txn:
            check_ops(op.compares, op.success, op.failure, budget - width)


def request_bytes(compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> int:
    """The txn's size as etcd measures it against ``--max-request-bytes``: its raft request,
    protobuf-encoded (the txn, and a header holding a request id of up to ten bytes). Matches
    etcd 3.5.1's boundary to the byte, or one byte short where etcd's id is shorter (one put, a
    lease, nested txns with gets and deletes: measured)."""
    return _HEADER + _field(_txn_size(compares, success, failure))


_HEADER = 14  # InternalRaftRequest.header: a two-byte tag, a length, the id's tag and varint


def _varint(n: int) -> int:
    return 10 if n < 0 else max(1, (n.bit_length() + 6) // 7)


def _field(size: int) -> int:
    """A length-delimited field of ``size`` bytes, its one-byte tag included."""
    return 1 + _varint(size) + size


def _txn_size(compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> int:
    size = sum(_field(_compare_size(c)) for c in compares)
    return size + sum(_field(_field(_op_size(op))) for op in (*success, *failure))  # a RequestOp around each


def _compare_size(compare: Compare) -> int:
    # etcd's enums leave out their zeros (EQUAL, VERSION); the operand, a oneof, is sent even when zero.
    enums = 2 * (compare.op != "==") + 2 * (compare.target != "version")
    operand = compare.operand
    operand_size = _field(len(operand)) if isinstance(operand, bytes) else 1 + _varint(operand)
    return enums + _field(len(compare.key)) + operand_size


def _op_size(op: Op) -> int:
    if isinstance(op, Txn):
        return _txn_size(op.compares, op.success, op.failure)
    if isinstance(op, Put):
        value = _field(len(op.value)) if op.value else 0
        return _field(len(op.key)) + value + (1 + _varint(op.lease) if op.lease else 0)
    key = (op.key or b"\0") if op.prefix else op.key  # as the etcd backend sends a range
    return _field(len(key)) + (_field(len(prefix_end(op.key))) if op.prefix else 0)


def check_keys(ops: Sequence[Op]) -> tuple[set[bytes], _Deleted]:
    """Refuse what etcd's checkIntervals refuses, whatever the compares will say: a put of a
    key that this branch deletes, or that an earlier nested txn puts (in either branch; a txn's
    own two branches may share keys) or deletes. Returns the keys the branch may put and
    delete (measured against etcd 3.5.1: a later nested txn may delete what an earlier one puts)."""
    deleted = _Deleted()
    deleted.add(op for op in ops if type(op) is Delete)
    puts: set[bytes] = set()
    for op in ops:
        if type(op) is not Txn:
            continue
        (then_puts, then_deleted), (else_puts, else_deleted) = check_keys(op.success), check_keys(op.failure)
        for key in then_puts:
            _refuse_if(key in puts or deleted.covers(key), key)
        for key in else_puts:
            _refuse_if((key in puts and key not in then_puts) or deleted.covers(key), key)
        puts |= then_puts | else_puts
        deleted.merge(then_deleted)
        deleted.merge(else_deleted)
    for op in ops:
        if type(op) is Put:
            _refuse_if(op.key in puts or deleted.covers(op.key), op.key)
            puts.add(op.key)
    return puts, deleted


class _Deleted:
    """Keys and prefixes deleted (sets, not pairwise scans: a commit has many of each)."""

    def __init__(self) -> None:
        self.keys: set[bytes] = set()
        self.prefixes: list[bytes] = []

    def add(self, deletes: Iterable[Delete]) -> None:
        for op in deletes:
            if op.prefix:
                self.prefixes.append(op.key)
            else:
                self.keys.add(op.key)

    def merge(self, other: _Deleted) -> None:
        self.keys |= other.keys
        self.prefixes += other.prefixes

    def covers(self, key: bytes) -> bool:
        return key in self.keys or any(key.startswith(p) for p in self.prefixes)


def _refuse_if(duplicate: bool, key: bytes) -> None:
    if duplicate:
        raise RegistryError(f"duplicate key {key!r} given in txn request")


@dataclass
class _Chosen:
    """A nested txn whose compares were checked: the ops of the branch that runs."""

    succeeded: bool
    ops: list[Op | _Chosen]


def _choose(ops: Sequence[Op], kvs: dict[bytes, KeyValue]) -> list[Op | _Chosen]:
    out: list[Op | _Chosen] = []
    for op in ops:
        if type(op) is Txn:
            held = all(_holds(c, kvs.get(c.key)) for c in op.compares)
            out.append(_Chosen(held, _choose(op.success if held else op.failure, kvs)))
        else:
            out.append(op)
    return out


def _flatten(tree: Sequence[Op | _Chosen]) -> list[Op]:
    flat: list[Op] = []
    for item in tree:
        if isinstance(item, _Chosen):
            flat += _flatten(item.ops)
        else:
            flat.append(item)
    return flat


def _results(
    tree: Sequence[Op | _Chosen], answers: Iterator[list[KeyValue]], revision: int
) -> tuple[list[list[KeyValue]], list[TxnResult]]:
    responses: list[list[KeyValue]] = []
    nested: list[TxnResult] = []
    for item in tree:
        if isinstance(item, _Chosen):
            inner, deeper = _results(item.ops, answers, revision)
            nested.append(TxnResult(item.succeeded, revision, inner, deeper))
            responses.append([])
        else:
            responses.append(next(answers))
    return responses, nested


def _holds(compare: Compare, kv: KeyValue | None) -> bool:
    target = compare.target
    have: bytes | int
    if kv is None:
        if target == "value":
            return False  # etcd: an absent key fails every value compare
        if target not in _INT_TARGETS:
            raise RegistryError(f"unknown compare target {target!r}")
        have = 0  # an absent key's version, create, mod and lease
    elif target == "value":
        have = kv.value
    elif target == "version":
        have = kv.version
    elif target == "mod":
        have = kv.mod_revision
    elif target == "create":
        have = kv.create_revision
    elif target == "lease":
        have = kv.lease
    else:
        raise RegistryError(f"unknown compare target {target!r}")
    compare_op = _COMPARE_OPS.get(compare.op)
    if compare_op is None:
        raise RegistryError(f"unknown compare op {compare.op!r}")
    try:
        return compare_op(have, compare.operand)
    except TypeError:
        raise RegistryError(f"cannot compare {target} with {compare.operand!r}") from None
