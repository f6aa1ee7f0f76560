"""The group record: one batch's records under one key (design/batching.md, "Group records").

Its header says what readers that skip most values need (``state``, ``acked_at``); its members
are zlib-compressed columns (columns.py): the record fields every member holds alike once, the
others as lists, the specs and the attempts as tables of their own. A group written before
columns holds a list of member maps instead; both are read.

    {"n": members, "rec": {...}, "spec": {...}, "tried": {...}}

"rec" holds each record's fields but its spec (its "state" packs as the string it is) and, as
"history", how many attempts it has; "tried" holds every member's attempts in member order.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import MISSING, fields
from itertools import accumulate
from operator import attrgetter
from typing import Any

from ..errors import CorruptRecord
from .columns import NO_DEFAULT, Fresh, Reader, split
from .record import ATTEMPT_TYPES, GROUP_FIELD, RECORD_TYPES, Attempt, EpisodeRecord, State
from .spec import SPEC_TYPES, EpisodeSpec
from .wire import NUM, SCHEMA, pack, unpack, unpack_map

log = logging.getLogger(__name__)

# A group's header "state" once every member finished; "mixed" while some have and some not.
FINISHED_GROUP = "finished"
MAX_MEMBERS = 1024  # a columns value claiming more is corrupt (ids.py blocks hold at most 255)
# Nor more attempts in all: a group of maps that held as many would be far past etcd's 1.5 MiB,
# and a count is a list's length once its fields are read
MAX_TRIED = 65536

Select = Callable[[str, str], bool]  # (id, state) -> whether to build the member's record


def encode_group(records: Sequence[EpisodeRecord]) -> bytes:
    """One value for a batch's records. Its header says what readers that skip most values
    need without the members: "state" (first, like a record's, for ``is_live``) is "pending"
    or "running" while no member has finished, "finished" once all have, else "mixed"; a
    finished group whose members were all acked holds the latest "acked_at" (retention.py)."""
    states = {r.state for r in records}
    if all(s.is_terminal for s in states):
        state = FINISHED_GROUP
    elif any(s.is_terminal for s in states):
        state = "mixed"
    else:
        state = State.PENDING.value if states == {State.PENDING} else State.RUNNING.value
    # Columns hold a batch's shared spec, owner and attempt fields once; zlib takes what is
    # left to a fraction, and etcd's JSON gateway costs ~0.04 us per byte every time the value
    # is written, read or watched. (Level 1: ~0.1 ms per 50 members; the gateway saves more.)
    members = zlib.compress(pack(_columns(records)), 1)
    header: dict[str, Any] = {"state": state, "v": SCHEMA, GROUP_FIELD: members}
    acked = [r.acked_at for r in records]
    if state == FINISHED_GROUP and acked and None not in acked:
        header["acked_at"] = max(a for a in acked if a is not None)
    return pack(header)


def _columns(records: Sequence[EpisodeRecord]) -> dict[str, Any]:
    if not records:
        return {"n": 0, "rec": {}, "spec": {}, "tried": {}}
    rows: list[Sequence[Any]] = list(zip(*map(_record_values, records), strict=True))
    specs = rows.pop(_SPEC_AT)  # now in _REC_NAMES order
    histories = rows[_HISTORY_AT]
    rows[_HISTORY_AT] = list(map(len, histories))
    attempts = [a for history in histories for a in history]
    return {
        "n": len(records),
        "rec": split(_REC_NAMES, rows),
        "spec": split(_SPEC_NAMES, list(zip(*map(_spec_values, specs), strict=True))),
        "tried": split(_ATTEMPT_NAMES, list(zip(*map(_attempt_values, attempts), strict=True))) if attempts else {},
    }


def decode_records(data: bytes, key: str = "?") -> list[EpisodeRecord]:
    """The records a value holds: one record, or a group's members. A group member that does
    not decode makes the whole value corrupt (its members are written together)."""
    return decode_value(data, key)[0]


def decode_value(data: bytes, key: str = "?") -> tuple[list[EpisodeRecord], bool]:
    """``decode_records``, and whether the value is a group record."""
    raw = unpack_map(data, key)
    if GROUP_FIELD not in raw:
        return [EpisodeRecord.from_wire(raw, key)], False
    members = _members(raw, key)
    if isinstance(members, dict):
        return _from_columns(members, key), True
    return [EpisodeRecord.from_wire(m, key) for m in members], True


def decode_finished(data: bytes, key: str, wanted: Callable[[str], bool]) -> list[EpisodeRecord]:
    """The finished records in a value whose ids ``wanted`` accepts; only those are built. A
    group record is rewritten each time some of its members finish, and a watcher has had the
    others: building records is most of the cost of reading a group. (Of a group of member
    maps, only those are checked; a group of columns is checked whole.)"""
    raw = unpack_map(data, key)
    members = _members(raw, key) if GROUP_FIELD in raw else [raw]
    if isinstance(members, dict):
        return _from_columns(members, key, lambda i, state: state in _FINISHED and wanted(i))
    return [
        EpisodeRecord.from_wire(m, key)
        for m in members
        if m.get("state") in _FINISHED and isinstance(i := m.get("id"), str) and wanted(i)
    ]


def decode_in_states(data: bytes, key: str, states: frozenset[State]) -> list[EpisodeRecord]:
    """The records in a value whose state is one of ``states``; only those are built. A
    group's header rules out a finished group without its members, and a member's own state
    the rest: the leader's sweep reads every value for the few running ones, and building
    records is most of the cost of reading one."""
    wanted = {s.value for s in states}
    raw = unpack_map(data, key)
    if GROUP_FIELD not in raw:
        return [EpisodeRecord.from_wire(raw, key)] if raw.get("state", "pending") in wanted else []
    if raw.get("state") == FINISHED_GROUP and wanted.isdisjoint(_FINISHED):
        return []
    members = _members(raw, key)
    if isinstance(members, dict):
        return _from_columns(members, key, lambda i, state: state in wanted)
    return [EpisodeRecord.from_wire(m, key) for m in members if m.get("state", "pending") in wanted]


def acked_by(data: bytes, key: str, cutoff: float) -> bool:
    """Whether every record in a value finished and was acked at or before ``cutoff`` (a
    retention check, confirmed on the decoded records before anything is deleted). A group's
    header answers for it; the members are read only where the header cannot: a "mixed"
    group, which groups written before headers said "finished" may be."""
    raw = unpack_map(data, key)
    if GROUP_FIELD in raw:
        if raw.get("state") == FINISHED_GROUP:
            return _stamp(raw.get("acked_at")) <= cutoff
        if raw.get("state") != "mixed":
            return False
        members = _members(raw, key)
        if isinstance(members, dict):
            return all(r.state.is_terminal and _stamp(r.acked_at) <= cutoff for r in _from_columns(members, key))
        maps = members
    else:
        maps = [raw]
    return all(m.get("state") in _FINISHED and _stamp(m.get("acked_at")) <= cutoff for m in maps)


def _stamp(value: Any) -> float:
    """A time read off the wire; anything else is later than every cutoff."""
    return float(value) if type(value) in NUM else math.inf


def finished_among(data: bytes, key: str, wanted: Container[str]) -> tuple[list[str], list[EpisodeRecord]]:
    """The ``wanted`` ids a value holds, and the records of those that finished, only those
    built: a watcher's first read of thousands of running episodes builds none of theirs. A
    finished member map that does not decode is in neither (logged); a group of columns is
    checked whole."""
    raw = unpack_map(data, key)
    members = _members(raw, key) if GROUP_FIELD in raw else [raw]
    present: list[str] = []
    if isinstance(members, dict):

        def select(episode_id: str, state: str) -> bool:
            if episode_id not in wanted:
                return False
            present.append(episode_id)
            return state in _FINISHED

        return present, _from_columns(members, key, select)
    done: list[EpisodeRecord] = []
    for member in members:
        episode_id = member.get("id")
        if not isinstance(episode_id, str) or episode_id not in wanted:
            continue
        if member.get("state") in _FINISHED:
            try:
                done.append(EpisodeRecord.from_wire(member, key))
            except CorruptRecord as exc:
                log.warning("skipping %s", exc)
                continue
        present.append(episode_id)
    return present, done


def _members(raw: Mapping[str, Any], key: str) -> list[dict[str, Any]] | dict[str, Any]:
    """A group's members: columns (a map), or an older writer's list of member maps."""
    packed = raw.get(GROUP_FIELD)
    try:
        members = unpack(zlib.decompress(packed), key) if isinstance(packed, bytes) else None
    except zlib.error as exc:
        raise CorruptRecord(key, f"a group's members do not decompress ({exc})") from exc
    if isinstance(members, dict):
        return members
    if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
        raise CorruptRecord(key, "a group's members must be columns or a list of maps")
    return members


def _from_columns(payload: dict[str, Any], key: str, select: Select | None = None) -> list[EpisodeRecord]:
    """The members' records (those ``select`` accepts), every column checked."""
    n = payload.get("n")
    if type(n) is not int or not 0 <= n <= MAX_MEMBERS:
        raise CorruptRecord(key, f"a group's member count must be an integer from 0 to {MAX_MEMBERS}, not {n!r}")
    rec = _RECORDS.columns(payload.get("rec", {}), n, key)
    counts = rec[_HISTORY_AT]
    total = sum(counts)
    if any(c < 0 for c in counts) or total > MAX_TRIED:
        raise CorruptRecord(key, f"a group's counts of attempts must be from 0 to {MAX_TRIED} in all")
    tried = _ATTEMPTS.columns(payload.get("tried", {}), total, key)
    specs = _SPECS.columns(payload.get("spec", {}), n, key)
    try:
        rec[_STATE_AT] = list(map(State, rec[_STATE_AT]))
    except ValueError as exc:
        raise CorruptRecord(key, str(exc)) from exc
    attempts = [Attempt(*row) for row in zip(*tried, strict=True)]
    ends = list(accumulate(counts))
    rec[_HISTORY_AT] = [tuple(attempts[end - c : end]) for c, end in zip(counts, ends, strict=True)]
    ids, states = rec[_ID_AT], rec[_STATE_AT]
    rec.insert(_SPEC_AT, [EpisodeSpec(*row) for row in zip(*specs, strict=True)])  # the constructor's order
    rows = zip(*rec, strict=True)
    if select is None:
        return [EpisodeRecord(*row) for row in rows]
    return [EpisodeRecord(*row) for i, row in enumerate(rows) if select(ids[i], states[i].value)]


def _defaults(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = Fresh(f.default_factory)
        else:
            out[f.name] = NO_DEFAULT
    return out


_RECORD_FIELDS = tuple(f.name for f in fields(EpisodeRecord))  # its constructor's order
_record_values = attrgetter(*_RECORD_FIELDS)
_SPEC_AT = _RECORD_FIELDS.index("spec")
_REC_NAMES = tuple(name for name in _RECORD_FIELDS if name != "spec")  # "rec" columns, in order
_ID_AT, _STATE_AT, _HISTORY_AT = (_REC_NAMES.index(name) for name in ("id", "state", "history"))
_SPEC_NAMES = tuple(f.name for f in fields(EpisodeSpec) if f.init)
_spec_values = attrgetter(*_SPEC_NAMES)
_ATTEMPT_NAMES = tuple(f.name for f in fields(Attempt))
_attempt_values = attrgetter(*_ATTEMPT_NAMES)

_RECORDS = Reader(
    _REC_NAMES,
    {**RECORD_TYPES, "state": (str,), "history": (int,)},
    {**_defaults(EpisodeRecord), "state": State.PENDING.value, "history": 0},
)
_SPECS = Reader(_SPEC_NAMES, SPEC_TYPES, _defaults(EpisodeSpec))
_ATTEMPTS = Reader(_ATTEMPT_NAMES, ATTEMPT_TYPES, _defaults(Attempt))
_FINISHED = frozenset(s.value for s in State if s.is_terminal)
