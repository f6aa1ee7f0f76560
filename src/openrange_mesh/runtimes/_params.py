"""Reading runtime params and import paths; every problem is a ``SpecError`` naming its field."""

from __future__ import annotations

import importlib
import math
from collections.abc import Collection, Mapping
from typing import Any

from ..errors import SpecError


def field(name: str) -> str:
    return f"params.{name}"


def check_keys(params: Any, *, allowed: Collection[str], required: Collection[str] = ()) -> None:
    """``params`` is a mapping with only ``allowed`` keys and every ``required`` one."""
    if not isinstance(params, Mapping):
        raise SpecError("params", f"must be a mapping, not {type(params).__name__}")
    for key in params:
        if key not in allowed:
            raise SpecError(field(str(key)), f"unknown parameter (known: {', '.join(sorted(allowed))})")
    for key in required:
        if key not in params:
            raise SpecError(field(key), "is required")


def get_str(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise SpecError(field(name), f"must be a non-empty string, not {value!r}")
    return value


def get_bool(params: Mapping[str, Any], name: str, default: bool) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise SpecError(field(name), f"must be true or false, not {value!r}")
    return value


def get_int(params: Mapping[str, Any], name: str, *, minimum: int) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(field(name), f"must be an integer >= {minimum}, not {value!r}")
    return value


def get_float(params: Mapping[str, Any], name: str, default: float, *, minimum: float) -> float:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SpecError(field(name), f"must be a number, not {value!r}")
    if value < minimum:
        raise SpecError(field(name), f"must be >= {minimum}, not {value!r}")
    return float(value)


def get_dict(params: Mapping[str, Any], name: str, *, str_values: bool = False) -> dict[str, Any]:
    """A mapping with string keys (and string values when ``str_values``); ``{}`` when absent."""
    value = params.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise SpecError(field(name), f"must be a mapping with string keys, not {value!r}")
    if str_values and not all(isinstance(v, str) for v in value.values()):
        raise SpecError(field(name), "every value must be a string")
    return dict(value)


def import_object(path: str, field_name: str) -> Any:
    """Resolve ``"pkg.mod:attr[.attr...]"``; any failure is a ``SpecError`` on ``field_name``."""
    module_name, sep, attr_path = path.partition(":")
    if not sep or not module_name or not attr_path:
        raise SpecError(field_name, f"{path!r} is not an import path of the form 'pkg.module:name'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise SpecError(field_name, f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError as exc:
            raise SpecError(field_name, f"{module_name!r} has no attribute {attr_path!r}") from exc
    return obj
