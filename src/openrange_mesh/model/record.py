"""The registry's view of one episode (``EpisodeRecord``, its ``Attempt``s, its ``State``); the
group record that holds one batch's records under one key is group.py's."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from operator import attrgetter
from typing import Any

from ..errors import CorruptRecord
from .spec import SPEC_FIELDS, EpisodeSpec
from .wire import NUM, OPT_NUM, OPT_STR, SCHEMA, Fields, pack, unpack_map


class State(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED, State.LOST})


# Attempt and EpisodeRecord are values: never mutate one, derive a new one with replace().
# They are not frozen only because frozen dataclasses build ~7x slower, and every episode builds
# several on the single-host hot path (design/README.md, "Single-host mode").
@dataclass(slots=True)
class Attempt:
    n: int
    host: str
    started_at: float
    finished_at: float | None = None
    outcome: str | None = None  # the State it ended in, "retried", or "released" (not counted: ledger.release)
    error: str | None = None
    batch: str | None = None  # the claim id, when the attempt ran in a batch (its events are shared)
    events: str | None = None  # the shared events file of a short attempt's events (layout.shared_events_path)
    token: int | None = None  # its claim's fencing token (the claim key's create_revision), once closed
    # What it uploaded (layout.artifact_path under its token): [{"name", "size", "sha256"}, ...]
    artifacts: list[dict[str, Any]] | None = None
    # A short attempt's events themselves, when they are few enough to ride in its record
    # (worker/sinks.py INLINE_EVENTS): no file, and nothing its commit has to wait for
    inline_events: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "host": self.host,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "outcome": self.outcome,
            "error": self.error,
            "batch": self.batch,
            "events": self.events,
            "token": self.token,
            "artifacts": self.artifacts,
            "inline_events": self.inline_events,
        }

    def to_wire(self) -> dict[str, Any]:
        """``to_dict`` without its None fields, as a record's encoding holds it."""
        return {
            name: value for name, value in zip(_ATTEMPT_FIELDS, _attempt_values(self), strict=True) if value is not None
        }


@dataclass(slots=True)
class EpisodeRecord:
    """The registry's view of one episode. ``claim`` names the claim key the owner holds while
    running; the claim key's create_revision is the fencing token (design/README.md)."""

    id: str
    spec: EpisodeSpec
    state: State = State.PENDING
    attempt: int = 1
    owner: str | None = None
    claim: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    result: Mapping[str, Any] | None = None
    history: tuple[Attempt, ...] = ()
    submitter: str | None = None
    acked_at: float | None = None
    queue: str | None = None  # while pending: the name of the queue entry that lists it

    def to_bytes(self) -> bytes:
        return pack(self.to_wire(SCHEMA))

    def to_wire(self, version: int | None = None) -> dict[str, Any]:
        """The record as the map its encoding holds (a group's members carry no version)."""
        # One dict from names and values, not dataclasses.asdict: this runs once or twice per
        # episode on the hot path. None fields are left out (decoding restores them): every byte
        # crosses etcd's JSON gateway several times per episode.
        values = (
            self.state.value,
            version,
            self.id,
            self.spec.wire(),
            self.attempt,
            self.owner,
            self.claim,
            self.created_at,
            self.started_at,
            self.finished_at,
            self.error,
            self.result,
            [a.to_wire() for a in self.history],
            self.submitter,
            self.acked_at,
            self.queue,
        )
        return {name: value for name, value in zip(_WIRE_FIELDS, values, strict=True) if value is not None}

    @classmethod
    def from_bytes(cls, data: bytes, key: str = "?") -> EpisodeRecord:
        raw = unpack_map(data, key)
        if GROUP_FIELD in raw:
            raise CorruptRecord(key, "a group of records where one record was expected")
        return cls.from_wire(raw, key)

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any], key: str = "?") -> EpisodeRecord:
        try:
            spec_fields = SPEC_FIELDS.of(raw.get("spec") or {})
            spec = EpisodeSpec(**spec_fields)
            # what it decoded from is its wire form: a record is re-encoded once or twice per read
            object.__setattr__(spec, "_wire", spec_fields)
            history = tuple(Attempt(**_ATTEMPT_READ.of(a)) for a in raw.get("history") or ())
            fields = _RECORD_READ.of(raw)
            fields.update(spec=spec, history=history, state=State(raw.get("state", "pending")))
            return cls(**fields)
        except (TypeError, ValueError, AttributeError) as exc:  # wrongly typed fields, whatever the depth
            raise CorruptRecord(key, str(exc)) from exc

    def tried(self, n: int) -> Attempt | None:
        """Attempt ``n`` as its history holds it, if it was made."""
        return next((a for a in self.history if a.n == n), None)

    def replace(self, **changes: Any) -> EpisodeRecord:
        # Positional, from one attrgetter: a third cheaper than a dict of every field, and the
        # single-host hot path replaces a record twice per episode.
        values = list(_record_values(self))
        for name, value in changes.items():
            values[_RECORD_INDEX[name]] = value
        return EpisodeRecord(*values)


# A group record: the records of one batch of one submission under one etcd key (group.py,
# ledger/homes.py).
GROUP_FIELD = "group"


_ATTEMPT_FIELDS = tuple(Attempt.__dataclass_fields__)
_attempt_values = attrgetter(*_ATTEMPT_FIELDS)
_ALL_RECORD_FIELDS = tuple(EpisodeRecord.__dataclass_fields__)
_record_values = attrgetter(*_ALL_RECORD_FIELDS)
_RECORD_INDEX = {name: i for i, name in enumerate(_ALL_RECORD_FIELDS)}
# A record's encoding, in order: "state" first, where is_live() finds it at a fixed offset.
_WIRE_FIELDS = (
    "state",
    "v",
    "id",
    "spec",
    "attempt",
    "owner",
    "claim",
    "created_at",
    "started_at",
    "finished_at",
    "error",
    "result",
    "history",
    "submitter",
    "acked_at",
    "queue",
)
_RECORD_NAMES = frozenset(_ALL_RECORD_FIELDS) - {"spec", "history", "state"}
_ATTEMPT_NAMES = frozenset(_ATTEMPT_FIELDS)

ATTEMPT_TYPES: dict[str, tuple[type, ...]] = {
    "n": (int,),
    "host": (str,),
    "started_at": NUM,
    "finished_at": OPT_NUM,
    "outcome": OPT_STR,
    "error": OPT_STR,
    "batch": OPT_STR,
    "events": OPT_STR,
    "token": (int, type(None)),
    "artifacts": (list, type(None)),
    "inline_events": (list, type(None)),
}
RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "attempt": (int,),
    "owner": OPT_STR,
    "claim": OPT_STR,
    "created_at": NUM,
    "started_at": OPT_NUM,
    "finished_at": OPT_NUM,
    "error": OPT_STR,
    "result": (dict, type(None)),
    "submitter": OPT_STR,
    "acked_at": OPT_NUM,
    "queue": OPT_STR,
}
_ATTEMPT_READ = Fields(_ATTEMPT_NAMES, ATTEMPT_TYPES)
_RECORD_READ = Fields(_RECORD_NAMES, RECORD_TYPES)


_LIVE_STATES = (pack("state") + pack(State.PENDING.value), pack("state") + pack(State.RUNNING.value))


def is_live(data: bytes) -> bool:
    """True when a record encoded by ``to_bytes`` is pending or running, read off the bytes
    (``to_bytes`` writes "state" first, right after the map header of 1 or 3 bytes): ~50x
    cheaper than decoding, for watchers that only want finished records. False means
    finished, or not encoded by us: decode to know."""
    return any(data.startswith(marker, offset) for marker in _LIVE_STATES for offset in (1, 3))
