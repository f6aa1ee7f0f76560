"""JSON's numbers: a NaN or an infinity is said by name, a string, wherever the project writes
JSON (the CLI's output, cli/common.py; stored events, store/events.py). JSON has no such numbers,
and its parsers reject the bare ``NaN`` that json.dumps writes by default (``jq`` would fail on a
whole listing). Pure functions; this module imports nothing of the project's."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def named_floats(value: Any) -> Any:
    """``value`` with each NaN or infinity as its name: "nan", "inf", "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf", "-inf"
    if isinstance(value, dict):
        return {k: named_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [named_floats(v) for v in value]
    return value


def has_odd_floats(event: Mapping[str, Any]) -> bool:
    """Whether a map holds a NaN or an infinity at any depth (what ``named_floats`` rewrites):
    ~0.5 us for an event of flat values, which a worker asks of every event it stores."""
    for value in event.values():
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):
                return True
        elif value is None or kind is str or kind is int or kind is bool:
            continue
        elif _holds_odd_floats(value):
            return True
    return False


def _holds_odd_floats(value: object) -> bool:
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, Mapping):
            todo.extend(item.values())
        elif isinstance(item, list | tuple):
            todo.extend(item)
    return False
