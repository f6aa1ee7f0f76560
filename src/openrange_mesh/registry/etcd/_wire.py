"""etcd's v3 JSON gateway encoding: bytes are base64, int64 fields arrive as strings and are
omitted when zero."""

from __future__ import annotations

import base64
from binascii import a2b_base64
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ..base import (
    Compare,
    Delete,
    Event,
    Get,
    KeyValue,
    Op,
    Put,
    Txn,
    TxnResult,
    prefix_end,
)

_COMPARE_FIELDS = {"value": "value", "version": "version", "create": "create_revision", "mod": "mod_revision"}
_COMPARE_OPS = {"==": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _int(obj: Mapping[str, Any], name: str) -> int:
    return int(obj.get(name, 0))


def _kv(obj: Mapping[str, Any]) -> KeyValue:
    # Every watch event and listed key goes through here: binascii directly (base64.b64decode
    # checks its argument's type first; same decoding), int() inline.
    get = obj.get
    return KeyValue(
        key=a2b_base64(get("key", "")),
        value=a2b_base64(get("value", "")),
        create_revision=int(get("create_revision", 0)),
        mod_revision=int(get("mod_revision", 0)),
        version=int(get("version", 0)),
        lease=int(get("lease", 0)),
    )


def _event(obj: Mapping[str, Any]) -> Event:
    prev = obj.get("prev_kv")
    kind: Literal["put", "delete"] = "delete" if obj.get("type") == "DELETE" else "put"
    return Event(type=kind, kv=_kv(obj.get("kv", {})), prev=_kv(prev) if prev else None)


def _revision(obj: Mapping[str, Any]) -> int:
    return _int(obj.get("header", {}), "revision")


def _range_request(key: bytes, prefix: bool) -> dict[str, Any]:
    if not prefix:
        return {"key": _b64(key)}
    # etcd rejects an empty key; "\0" up to range_end "\0" means every key.
    return {"key": _b64(key or b"\0"), "range_end": _b64(prefix_end(key))}


def _compare(cmp: Compare) -> dict[str, Any]:
    if cmp.target not in (*_COMPARE_FIELDS, "lease") or cmp.op not in _COMPARE_OPS:
        raise ValueError(f"bad compare {cmp!r}")
    if (cmp.target == "value") != isinstance(cmp.operand, bytes):
        raise TypeError(f"compare on {cmp.target} needs a {'bytes' if cmp.target == 'value' else 'int'} operand")
    name = _COMPARE_FIELDS.get(cmp.target, "lease")
    operand = _b64(cmp.operand) if isinstance(cmp.operand, bytes) else cmp.operand
    return {"key": _b64(cmp.key), "target": cmp.target.upper(), "result": _COMPARE_OPS[cmp.op], name: operand}


def _request_op(op: Op) -> dict[str, Any]:
    if isinstance(op, Put):
        return {"request_put": {"key": _b64(op.key), "value": _b64(op.value), "lease": op.lease}}
    if isinstance(op, Delete):
        return {"request_delete_range": _range_request(op.key, op.prefix)}
    if isinstance(op, Txn):
        return {"request_txn": _txn_request(op.compares, op.success, op.failure)}
    return {"request_range": _range_request(op.key, op.prefix)}


def _txn_request(compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> dict[str, Any]:
    return {
        "compare": [_compare(c) for c in compares],
        "success": [_request_op(op) for op in success],
        "failure": [_request_op(op) for op in failure],
    }


def _txn_result(answer: Mapping[str, Any], succeeded: bool, branch: Sequence[Op], revision: int) -> TxnResult:
    """A txn's result from etcd's answer (a nested txn's answer carries no header)."""
    answers = answer.get("responses", [])
    responses: list[list[KeyValue]] = []
    nested: list[TxnResult] = []
    for i, op in enumerate(branch):
        found = answers[i] if i < len(answers) else {}
        if isinstance(op, Get):
            responses.append([_kv(kv) for kv in found.get("response_range", {}).get("kvs", [])])
            continue
        responses.append([])
        if isinstance(op, Txn):
            inner = found.get("response_txn", {})
            held = bool(inner.get("succeeded", False))
            nested.append(_txn_result(inner, held, op.success if held else op.failure, revision))
    return TxnResult(succeeded=succeeded, revision=revision, responses=responses, nested=nested)


def _leaves(ops: Sequence[Op]) -> list[Put | Delete | Get]:
    """The plain ops of a txn, nested txns' (both branches) included."""
    out: list[Put | Delete | Get] = []
    for op in ops:
        out += _leaves([*op.success, *op.failure]) if isinstance(op, Txn) else [op]
    return out


def _op_size(op: Op) -> int:
    return len(op.key) + len(op.value) if isinstance(op, Put) else len(op.key) if not isinstance(op, Txn) else 0
