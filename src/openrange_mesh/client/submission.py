"""What ``MeshClient.submit`` does to the specs it is given before any is written: one list,
batch set, one spec per idempotency key, snapshots pinned to their digests."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..errors import SpecError
from ..model import EpisodeSpec


def as_list(specs: Any) -> builtins.list[Any]:
    """The specs ``submit`` was given, one or an iterable of them; anything else is a SpecError."""
    if isinstance(specs, EpisodeSpec | Mapping):
        return [specs]
    if isinstance(specs, str | bytes) or not isinstance(specs, Iterable):
        raise SpecError("spec", f"expected an EpisodeSpec, a mapping or a list of them, not {type(specs).__name__}")
    return list(specs)


def one_per_key(specs: Sequence[EpisodeSpec]) -> tuple[builtins.list[EpisodeSpec], builtins.list[int]]:
    """The specs to write (the first of each idempotency key), and for each given spec the index
    of the one written for it. A later spec with a key seen earlier in the same submission names
    the first's episode, as it would in a later submission: writing both would put the key twice
    in one txn, which etcd refuses ("duplicate key given in txn request"), failing the lot."""
    unique: builtins.list[EpisodeSpec] = []
    stands_for: builtins.list[int] = []
    first: dict[str, int] = {}
    for spec in specs:
        key = spec.idempotency_key
        if key is not None and key in first:
            stands_for.append(first[key])
            continue
        if key is not None:
            first[key] = len(unique)
        stands_for.append(len(unique))
        unique.append(spec)
    return unique, stands_for


def with_batch(spec: Any, batch: int) -> Any:
    """``spec`` with its ``batch`` set (anything else is left for ``check_spec`` to reject)."""
    if isinstance(spec, EpisodeSpec):
        return replace(spec, batch=batch)
    return {**spec, "batch": batch} if isinstance(spec, Mapping) else spec


def pin_snapshots(specs: Sequence[EpisodeSpec], resolve: Callable[[str], str]) -> builtins.list[EpisodeSpec]:
    """Each spec's snapshot as a digest (``resolve``: a name or digest -> a digest present in the
    store; SpecError if not), each distinct ref resolved once: the episode runs the content it
    was submitted with, whatever its name points at later."""
    digests: dict[str, str] = {}
    pinned = []
    for spec in specs:
        if spec.snapshot is not None:
            digest = digests.get(spec.snapshot) or digests.setdefault(spec.snapshot, resolve(spec.snapshot))
            spec = spec if digest == spec.snapshot else replace(spec, snapshot=digest)
        pinned.append(spec)
    return pinned
