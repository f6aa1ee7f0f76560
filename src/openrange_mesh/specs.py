"""Turning user input into checked specs: the one entry every submission path goes through."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import SpecError
from .model import MAX_SPEC_BYTES, EpisodeSpec, pack
from .model.spec import check_seed
from .model.wire import pack_exact
from .runtimes import load_runtime

# How deep params may nest. Far deeper than any real config, and far below what would fail later:
# Python's recursion limit (json, repr; ~1000) and msgpack's nesting limits.
MAX_PARAMS_DEPTH = 64


def check_spec(spec: EpisodeSpec | Mapping[str, Any], *, accepted: set[tuple[str, bytes]] | None = None) -> EpisodeSpec:
    """A spec, or a mapping of spec fields, checked in full: fields, size, that its params are
    JSON values, that its snapshot ref is one the store takes, that the runtime exists, and that
    the runtime accepts its params. Raises SpecError (UnknownRuntime) naming the culprit.
    ``accepted``: (runtime, packed params) its runtime already took, shared by ``check_specs``."""
    if isinstance(spec, Mapping):
        spec = EpisodeSpec.from_dict(spec)  # checks its fields
    elif isinstance(spec, EpisodeSpec):
        spec.check()
    else:
        raise SpecError("spec", f"expected an EpisodeSpec or a mapping, not {type(spec).__name__}")
    check_json("params", spec.params)
    if spec.snapshot is not None:
        _check_snapshot(spec.snapshot)
    if accepted is None:
        load_runtime(spec.runtime).validate(spec.params)
        return spec
    # params as workers will see them: what packs alike (a tuple and a list) reaches them alike
    seen = (spec.runtime, pack(spec.params))
    if seen not in accepted:
        load_runtime(spec.runtime).validate(spec.params)
        accepted.add(seen)
    return spec


def check_specs(specs: Iterable[EpisodeSpec | Mapping[str, Any]]) -> list[EpisodeSpec]:
    """``check_spec`` of each, the runtime asked about each distinct params once: a submission
    of N episodes of one environment repeats one params map N times, and a runtime's check
    (gymnasium's: ~6 us) was a third of checking a spec. Likewise a mapping whose fields but
    its seed encode as those of one checked before is checked for its seed alone: a full
    check cost 8.4 us a CartPole spec, a third of a trainer's CPU per episode through the
    mesh, and a submission of N seeds of one spec is the common case."""
    accepted: set[tuple[str, bytes]] = set()
    shapes: set[bytes] = set()
    return [_check_one(spec, accepted, shapes) for spec in specs]


# A spec's encoding grows by at most this much with a seed: the key and a 9-byte integer
_SEED_BYTES = 16


def _check_one(
    spec: EpisodeSpec | Mapping[str, Any], accepted: set[tuple[str, bytes]], shapes: set[bytes]
) -> EpisodeSpec:
    """``check_spec``, but for a mapping shaped like one checked before (``shapes``: the
    encodings of such mappings' fields but their seeds)."""
    if not isinstance(spec, Mapping):
        return check_spec(spec, accepted=accepted)
    shape = _shape(spec)
    if shape in shapes:
        # The same fields as a spec that passed every check (this encoding tells 1 from 1.0
        # and True, a str from bytes, and has no form for a set), and room for any seed: only
        # the seed is new.
        check_seed(spec.get("seed"))
        return EpisodeSpec(**spec)
    checked = check_spec(spec, accepted=accepted)
    if shape is not None and len(pack(checked.wire())) <= MAX_SPEC_BYTES - _SEED_BYTES:
        shapes.add(shape)
    return checked


def _shape(spec: Mapping[str, Any]) -> bytes | None:
    """The encoding of a spec mapping's fields but its seed; None if they do not encode
    exactly (``check_spec`` says what is wrong, if anything)."""
    try:
        return pack_exact({key: value for key, value in spec.items() if key != "seed"})
    except (TypeError, ValueError, OverflowError):
        return None


def check_json(name: str, value: object) -> None:
    """``value`` is JSON: maps with string keys, lists, strings, finite numbers, booleans, null,
    nested at most ``MAX_PARAMS_DEPTH`` deep. msgpack would take more (sets, bytes, NaN, int
    keys), but what it takes must also come back: a map with an int key does not decode (every
    reader would skip the record as corrupt, and the episode would never run), and ``show``,
    ``ls -o json`` and the runtimes' JSON see the rest. Iterative: a deep value must not
    overflow the stack that checks it."""
    todo: list[tuple[str, object, int]] = [(name, value, 1)]
    while todo:
        path, item, depth = todo.pop()
        if depth > MAX_PARAMS_DEPTH:
            raise SpecError(
                path if len(path) <= 80 else path[:79] + "…", f"nested deeper than {MAX_PARAMS_DEPTH} levels"
            )
        if isinstance(item, str | bool | int) or item is None:
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise SpecError(path, f"must be a finite number, not {item!r}")
        elif isinstance(item, Mapping):
            for key, inner in item.items():
                if not isinstance(key, str):
                    raise SpecError(path, f"map keys must be strings, not {type(key).__name__}")
                todo.append((f"{path}.{key}", inner, depth + 1))
        elif isinstance(item, list | tuple):
            todo += ((f"{path}[{i}]", inner, depth + 1) for i, inner in enumerate(item))
        else:
            raise SpecError(
                path, f"must be a JSON value (map, list, string, number, bool, null), not {type(item).__name__}"
            )


def is_plain_json(value: object) -> bool:
    """What ``check_json`` accepts, answered without building paths for messages: ~1.5 us for
    a small result, which a worker checks for every episode (a result that is not, nested too
    deep to pickle or to pack, or with an int key every reader would refuse, must fail its
    episode in the worker, not crash the worker or the agent's commit)."""
    todo: list[tuple[object, int]] = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if depth > MAX_PARAMS_DEPTH:
            return False
        kind = type(item)
        if item is None or kind is str or kind is int or kind is bool:
            continue
        if kind is float:
            if not math.isfinite(item):  # type: ignore[arg-type]
                return False
        elif isinstance(item, Mapping):
            for key, inner in item.items():
                if type(key) is not str:
                    return False
                todo.append((inner, depth + 1))
        elif isinstance(item, list | tuple):
            todo.extend((inner, depth + 1) for inner in item)
        else:
            return isinstance(item, str | int | float) and is_plain_json(_plain(item))
    return True


def _plain(item: object) -> object:
    """A subclass of str, int or float (numpy's float64, an IntEnum) as its plain value."""
    return float(item) if isinstance(item, float) else int(item) if isinstance(item, int) else str(item)


def _check_snapshot(ref: str) -> None:
    # Imported here: the store package imports fsspec (~0.1 s), which a trainer that only
    # submits need not load unless its specs name snapshots.
    from .store.layout import component_problem

    problem = component_problem(ref)
    if problem is not None:
        raise SpecError("snapshot", f"{ref!r} {problem} (snapshots/<ref> in the store)")
