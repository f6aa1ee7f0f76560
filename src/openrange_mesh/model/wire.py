"""The wire codec of every record: msgpack maps of named fields with a schema version.

Records are maps of named fields so that decoding is tolerant: unknown fields are ignored (a newer
minor writer), missing fields take their defaults (an older writer). A record whose schema major
version is newer than ours, or that does not decode at all, raises ``CorruptRecord``; callers
that scan the registry log it and skip the record (``decode_or_none``). This module knows no
record type: the values (spec.py, record.py, host.py) say which fields they have.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import msgpack

from ..errors import CorruptRecord

log = logging.getLogger(__name__)

SCHEMA = 1
NUM = (int, float)
OPT_STR = (str, type(None))
OPT_NUM = (int, float, type(None))

T = TypeVar("T")


def decode_or_none(decode: Callable[[bytes, str], T], data: bytes, key: bytes) -> T | None:
    """Decode a record read from the registry; log and skip (None) one that does not decode.
    One bad record must never take an agent or a listing down."""
    try:
        return decode(data, key.decode(errors="replace"))
    except CorruptRecord as exc:
        log.warning("skipping %s", exc)
        return None


def pack(value: Any) -> bytes:
    # One Packer per thread: msgpack.packb builds a new one per call, half the cost of a record.
    packer: msgpack.Packer | None = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True, default=_plain)
    data: bytes = packer.pack(value)
    return data


_packers = threading.local()


def pack_exact(value: Any) -> bytes:
    """``pack`` without its fallback for other mappings and sequences (a set would pack as a
    list): what this encodes alike is alike to every check of a spec. TypeError for a value
    msgpack has no type for."""
    packer: msgpack.Packer | None = getattr(_packers, "exact", None)
    if packer is None:
        packer = _packers.exact = msgpack.Packer(use_bin_type=True)
    data: bytes = packer.pack(value)
    return data


def unpack(data: bytes, key: str = "?") -> Any:
    try:
        return msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise CorruptRecord(key, f"not msgpack ({exc or type(exc).__name__})") from exc


def unpack_map(data: bytes, key: str) -> dict[str, Any]:
    raw = unpack(data, key)
    if not isinstance(raw, dict):
        raise CorruptRecord(key, f"expected a map, got {type(raw).__name__}")
    version = raw.get("v")
    if not isinstance(version, int) or version > SCHEMA:
        raise CorruptRecord(key, f"schema version {version!r} is not one this version ({SCHEMA}) reads")
    return raw


class Fields:
    """The fields one record type reads: their names and, for some, the types allowed.
    ``of(raw)`` keeps the named fields of ``raw`` (others are ignored: written by a newer
    version) and checks their types. Built once per type: a 250-episode group decodes a few
    thousand maps, and one exact-type lookup per field costs a third of ``isinstance`` checks."""

    __slots__ = ("_exact", "_types")

    def __init__(self, names: frozenset[str], types: Mapping[str, tuple[type, ...]]) -> None:
        self._types = dict(types)
        # msgpack decodes to exact types: one set lookup accepts those; anything else (a
        # subclass, a bool where a number belongs) takes the isinstance path in _check
        self._exact: dict[str, frozenset[type] | None] = {
            name: frozenset(types[name]) if name in types else None for name in names
        }

    def of(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        exact = self._exact
        fields: dict[str, Any] = {}
        for name, value in raw.items():
            allowed = exact.get(name, _UNKNOWN)
            if allowed is _UNKNOWN:
                continue
            if allowed is not None and type(value) not in allowed:
                self._check(name, value)
            fields[name] = value
        return fields

    def _check(self, name: str, value: Any) -> None:
        problem = wrong_type(name, value, self._types[name])
        if problem is not None:
            raise TypeError(problem)


def wrong_type(name: str, value: Any, allowed: tuple[type, ...]) -> str | None:
    """What is wrong with ``value`` as field ``name``, if its type is not one ``allowed``."""
    # bool is an int to isinstance: a bool where a number belongs is wrong
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        return f"field {name!r} is {type(value).__name__}, not {' or '.join(t.__name__ for t in allowed)}"
    return None


_UNKNOWN: Any = object()


def _plain(value: Any) -> Any:
    """msgpack's fallback: other mappings (MappingProxy, user types) become dicts, other
    sequences lists. Anything else does not serialize."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list | tuple | set | frozenset):
        return list(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")
