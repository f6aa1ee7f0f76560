"""What to run: ``EpisodeSpec``, a frozen value checked field by field at every entry."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import SpecError
from .wire import OPT_NUM, OPT_STR, Fields, pack

# etcd rejects requests over 1.5 MiB (--max-request-bytes). A spec is stored inside its record and
# several records share one submission txn, so a spec gets a third of that; bigger inputs belong
# in the store (snapshots) and are referenced by name.
MAX_SPEC_BYTES = 512 * 1024
MAX_LABELS = 32
MAX_ATTEMPTS = 100
# Episodes one claim may take: a batch's records share one key (ids.MAX_GROUP members at most),
# so a claim or commit costs a few ops whatever its size.
MAX_BATCH = 250
# A batch of specs with idempotency keys is one group: its record, its queue entry and a key per
# member in one txn of at most 128 ops (etcd's limit; ledger/txns.py)
MAX_KEYED_BATCH = 126
# What an attempt's events are kept at (``EpisodeSpec.events``): every event its runtime emits,
# only its "reset" and "terminal" events, or none (its result and times are in its record).
EVENT_LEVELS = ("all", "summary", "none")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_./-]{0,62})$")


@dataclass(frozen=True, slots=True)
class EpisodeSpec:
    """What to run. ``timeout`` is wall-clock seconds per attempt; ``progress_timeout`` is the
    no-progress watchdog (seconds without an event); ``on_timeout`` is "fail" or "retry".
    ``batch`` lets one claim take up to that many episodes of the same submission (short
    episodes); 1 keeps per-episode claims (design/README.md, "Batching"). ``events`` is what
    the store keeps of each attempt's events (``EVENT_LEVELS``); a worker sees them all, so
    ``progress_timeout`` works at every level."""

    runtime: str
    params: Mapping[str, Any] = field(default_factory=dict)
    snapshot: str | None = None
    seed: int | None = None
    timeout: float | None = None
    progress_timeout: float | None = None
    on_timeout: str = "fail"
    max_attempts: int = 3
    idempotency_key: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    batch: int = 1
    events: str = "all"
    # The compacted dict every record encoding of this spec uses, built once (the hot path
    # encodes the same spec two or three times per episode). Not a field of the spec.
    _wire: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def check(self) -> EpisodeSpec:
        """Raise SpecError naming the first bad field; return self. Runtime-specific params,
        that params are JSON and the snapshot ref's form (the store's rule) are checked by
        ``specs.check_spec``, which calls this first."""
        _check_str("runtime", self.runtime, 200)
        if not isinstance(self.params, Mapping):
            raise SpecError("params", f"must be a mapping, not {type(self.params).__name__}")
        if self.snapshot is not None and not isinstance(self.snapshot, str):
            raise SpecError("snapshot", f"must be a string, not {type(self.snapshot).__name__}")
        check_seed(self.seed)
        _check_seconds("timeout", self.timeout)
        _check_seconds("progress_timeout", self.progress_timeout)
        if self.on_timeout not in ("fail", "retry"):
            raise SpecError("on_timeout", f"must be 'fail' or 'retry', not {self.on_timeout!r}")
        if not _is_int(self.max_attempts) or not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise SpecError("max_attempts", f"must be an integer from 1 to {MAX_ATTEMPTS}, not {self.max_attempts!r}")
        _check_optional_str("idempotency_key", self.idempotency_key, 256)
        if not _is_int(self.batch) or not 1 <= self.batch <= MAX_BATCH:
            raise SpecError("batch", f"must be an integer from 1 to {MAX_BATCH}, not {self.batch!r}")
        if self.idempotency_key is not None and self.batch > MAX_KEYED_BATCH:
            why = "a batch's keys are written in one etcd txn, with its record and its queue entry"
            raise SpecError("batch", f"at most {MAX_KEYED_BATCH} with an idempotency_key ({why}), not {self.batch}")
        if self.events not in EVENT_LEVELS:
            raise SpecError("events", f"must be one of {', '.join(map(repr, EVENT_LEVELS))}, not {self.events!r}")
        _check_labels(self.labels)
        size = len(_pack_spec(self))
        if size > MAX_SPEC_BYTES:
            raise SpecError(
                "params",
                f"spec encodes to {size} bytes, over the {MAX_SPEC_BYTES}-byte limit "
                "(put large inputs in the store and pass a snapshot reference)",
            )
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # to worker processes with every episode: its fields, not its wire cache, and not through
        # dataclasses' state functions (fields() on every call)
        return EpisodeSpec, tuple(getattr(self, name) for name in _SPEC_FIELDS)

    def wire(self) -> dict[str, Any]:
        """The spec as records store it: ``to_dict`` without the fields that hold their
        defaults (decoding restores them; every record carries its spec, and every byte of a
        record crosses etcd's JSON gateway a few times per episode), cached."""
        wire = self._wire
        if wire is None:
            wire = {k: v for k, v in self.to_dict().items() if v is not None and _SPEC_DEFAULTS.get(k, _NO) != v}
            object.__setattr__(self, "_wire", wire)
        return wire

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "params": self.params,
            "snapshot": self.snapshot,
            "seed": self.seed,
            "timeout": self.timeout,
            "progress_timeout": self.progress_timeout,
            "on_timeout": self.on_timeout,
            "max_attempts": self.max_attempts,
            "idempotency_key": self.idempotency_key,
            "labels": self.labels,
            "batch": self.batch,
            "events": self.events,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EpisodeSpec:
        """Build a spec from user input (JSON, CLI): unknown fields are an error here, since a
        typo in a spec file should not be silently dropped."""
        unknown = [name for name in data if name not in SPEC_NAMES]
        if unknown:
            raise SpecError(str(unknown[0]), f"unknown field (known: {', '.join(_SPEC_FIELDS)})")
        if "runtime" not in data:
            raise SpecError("runtime", "missing")
        return cls(**data).check()


_SPEC_FIELDS = tuple(f for f in EpisodeSpec.__dataclass_fields__ if not f.startswith("_"))
_NO = object()
# the defaults a spec's wire form leaves out ("runtime" has none; mappings compare by value)
_SPEC_DEFAULTS = {k: v for k, v in EpisodeSpec(runtime="-").to_dict().items() if k != "runtime" and v is not None}
SPEC_NAMES = frozenset(_SPEC_FIELDS)

SPEC_TYPES: dict[str, tuple[type, ...]] = {
    "runtime": (str,),
    "params": (dict,),
    "snapshot": OPT_STR,
    "seed": (int, type(None)),
    "timeout": OPT_NUM,
    "progress_timeout": OPT_NUM,
    "on_timeout": (str,),
    "max_attempts": (int,),
    "idempotency_key": OPT_STR,
    "labels": (dict,),
    "batch": (int,),
    "events": (str,),
}
SPEC_FIELDS = Fields(SPEC_NAMES, SPEC_TYPES)  # what a record's spec map is read with


def check_seed(seed: Any) -> None:
    """The rule for a spec's ``seed``: None, or an integer in [0, 2**63)."""
    if seed is not None and (not _is_int(seed) or not 0 <= seed < 2**63):
        raise SpecError("seed", f"must be an integer in [0, 2**63), not {seed!r}")


def _pack_spec(spec: EpisodeSpec) -> bytes:
    try:
        return pack(spec.wire())
    except (TypeError, ValueError, OverflowError) as exc:
        raise SpecError("params", f"does not serialize: {exc}") from exc


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_str(name: str, value: object, limit: int) -> None:
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise SpecError(name, f"must be a printable string of 1-{limit} characters, not {value!r}")


def _check_optional_str(name: str, value: object, limit: int) -> None:
    if value is not None:
        _check_str(name, value, limit)


def _check_seconds(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < _as_float(value) < math.inf:
        raise SpecError(name, f"must be a positive number of seconds, not {value!r}")


def _as_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an int too big for a float (math.isfinite would raise it too)
        return math.inf


def _check_labels(labels: object) -> None:
    if not isinstance(labels, Mapping):
        raise SpecError("labels", f"must be a mapping of strings, not {type(labels).__name__}")
    if len(labels) > MAX_LABELS:
        raise SpecError("labels", f"at most {MAX_LABELS} labels, got {len(labels)}")
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY.match(key):
            raise SpecError("labels", f"bad label key {key!r}: 1-63 of letters, digits, '_', '.', '/', '-'")
        if not isinstance(value, str) or len(value) > 63 or not value.isprintable():
            raise SpecError("labels", f"label {key!r}: value must be a printable string of at most 63 characters")
