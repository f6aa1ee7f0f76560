"""Rows of values as columns: a field once when every row holds the same value, else a list.

A batch's records (group.py) are one submission's episodes: they share their spec but for the
seed, their owner, claim, submitter and most of their attempt. Kept as columns, a group's value
holds each shared field once, and a reader checks a field's type once per column and builds its
records from lists, instead of a map per member read field by field (9.8 us a CartPole member
as maps, design/performance.md). This module knows no record type: group.py says which fields
a table has, their types and their defaults.

A table is ``{"same": {name: value}, "each": {name: [value, ...]}}``. A field in neither holds
its default in every row (a None field is left out). Names a reader does not know are ignored
(a newer minor writer's).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import CorruptRecord
from .wire import pack, wrong_type

Table = dict[str, dict[str, Any]]
# Scalars whose == says they are the same value once their types are the same (floats too, but
# for the sign of zero, which _same checks apart)
_PLAIN = frozenset({str, int, bool, bytes, type(None)})
NO_DEFAULT: Any = object()  # a field every row must hold


class Fresh:
    """A default built anew for each row (a mapping): rows of different tables never share a
    mutable default."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def split(names: Sequence[str], columns: Sequence[Sequence[Any]]) -> Table:
    """The table of ``columns`` (one per name, rows in order, at least one row)."""
    same: dict[str, Any] = {}
    each: dict[str, Any] = {}
    for name, column in zip(names, columns, strict=True):
        if not _same(column):
            each[name] = list(column)
        elif column[0] is not None:
            same[name] = column[0]
    return {"same": same, "each": each}


def _same(column: Sequence[Any]) -> bool:
    """Whether every value is the same one, as its encoding would say: 1, 1.0 and True differ,
    and so do 0.0 and -0.0 (the decoded rows share the one value kept)."""
    first = column[0]
    kind = type(first)
    if kind in _PLAIN or kind is float:
        try:
            if len(set(column)) != 1 or len(set(map(type, column))) != 1:
                return False
        except TypeError:  # an unhashable value among them: not the same as a scalar
            return False
        return kind is not float or len({math.copysign(1.0, v) for v in column}) == 1
    if len(set(map(id, column))) == 1:  # decoded from a "same" field: one object
        return True
    if column.count(first) != len(column):
        return False
    encoded = _encoded(first)  # equal containers may still differ inside (1 and 1.0)
    return encoded is not None and all(_encoded(v) == encoded for v in column)


def _encoded(value: Any) -> bytes | None:
    try:
        return pack(value)
    except (TypeError, ValueError, OverflowError):
        return None


class Reader:
    """Reads one kind of table: its fields in order (the positional order of what rows become),
    each one's allowed types (absent: any) and default (``NO_DEFAULT``: required)."""

    __slots__ = ("_defaults", "_exact", "_names", "_types")

    def __init__(self, names: Sequence[str], types: Mapping[str, tuple[type, ...]], defaults: Mapping[str, Any]):
        self._names = tuple(names)
        self._types = dict(types)
        self._exact = {name: frozenset(kinds) for name, kinds in types.items()}
        self._defaults = dict(defaults)

    def columns(self, table: Any, rows: int, key: str) -> list[list[Any]]:
        """One checked column per field, ``rows`` long, in field order; CorruptRecord if the
        table is not one, a column is not ``rows`` long, a value has a type its field does not
        allow, or a required field is missing."""
        if not isinstance(table, dict):
            raise CorruptRecord(key, f"a table of columns must be a map, not {type(table).__name__}")
        same, each = table.get("same", {}), table.get("each", {})
        if not isinstance(same, dict) or not isinstance(each, dict):
            raise CorruptRecord(key, "a table's 'same' and 'each' must be maps")
        out: list[list[Any]] = []
        for name in self._names:
            if name in each:
                column = each[name]
                if not isinstance(column, list) or len(column) != rows:
                    raise CorruptRecord(key, f"column {name!r} must be a list of {rows} values")
                self._check(name, column, key)
            elif name in same:
                column = [same[name]] * rows
                self._check(name, column[:1], key)
            else:
                default = self._defaults.get(name)
                if default is NO_DEFAULT and rows:
                    raise CorruptRecord(key, f"field {name!r} is missing")
                column = [default.make() for _ in range(rows)] if isinstance(default, Fresh) else [default] * rows
            out.append(column)
        return out

    def _check(self, name: str, column: list[Any], key: str) -> None:
        exact = self._exact.get(name)
        if exact is None or set(map(type, column)) <= exact:
            return
        allowed = self._types[name]
        for value in column:
            problem = wrong_type(name, value, allowed)
            if problem is not None:
                raise CorruptRecord(key, problem)
