"""Episode event logs: JSON lines, written in numbered chunks (see ``layout.events_path``)."""

from __future__ import annotations

import json
import logging
from typing import Any, TypeGuard

import orjson

from ..errors import ArtifactNotFound
from ..jsonfloats import has_odd_floats, named_floats
from . import layout
from .base import Store

log = logging.getLogger(__name__)

JsonObject = dict[str, Any]


# A running attempt's events reach the store at most this long after they were emitted (the
# workers flush their buffers this often, worker/child.py); readers that follow wait as long.
FLUSH_SECONDS = 1.0
# What an attempt's ``events`` says when its host's store refused some of its events: they are
# not coming (``logs`` says so), rather than a name of a file that was never written.
NOT_STORED = "(not stored)"
# What it says when its spec kept none (``events="none"``): there never were any to store.
NOT_KEPT = "(not kept)"
# orjson: ~0.4 us an event against json's ~3 (a CartPole episode's two events cost its worker
# ~3% with json). Keys that are not strings are written as strings, as json did; numpy's
# scalars and arrays and other floats' subclasses as their values; a float that is not finite
# as its name, "nan", "inf" or "-inf" (json wrote NaN, which no JSON parser but Python's takes;
# orjson would write null), as the CLI says them.
_LINE = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
# The events a spec's ``events="summary"`` keeps: the two every runtime emits, its start and end
SUMMARY_TYPES = frozenset({"reset", "terminal"})


def encode_events(events: list[JsonObject]) -> bytes:
    """One compact JSON object per line, each line ending in a newline. Raises TypeError
    (``orjson.JSONEncodeError``) for an event that does not encode: a type JSON has not, an
    integer past 64 bits, nesting deeper than 254."""
    return b"".join(
        orjson.dumps(named_floats(e) if has_odd_floats(e) else e, default=_as_float, option=_LINE) for e in events
    )


def _as_float(value: Any) -> float:
    """orjson's fallback: a subclass of float (which json wrote as a float) as its value."""
    if isinstance(value, float):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON data")


def kept(events: list[JsonObject], level: str) -> list[JsonObject]:
    """What a spec's ``events`` level keeps of ``events``. A level this version does not know
    (a newer writer's, a corrupt record's) keeps them all: losing events is the worse mistake."""
    if level == "summary":
        return [event for event in events if event.get("type") in SUMMARY_TYPES]
    return [] if level == "none" else events


def names_file(events: str | None) -> TypeGuard[str]:
    """Whether an attempt's ``events`` names a shared file (not None, ``NOT_STORED`` or
    ``NOT_KEPT``)."""
    return events is not None and events not in (NOT_STORED, NOT_KEPT)


def decode_events(data: bytes, source: str = "") -> list[JsonObject]:
    """The JSON objects in ``data``, one per line. A line that is not a JSON object (a torn
    write, corruption) is skipped; each call logs one warning naming how many and the first."""
    events: list[JsonObject] = []
    skipped: list[int] = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
            event = None
        if isinstance(event, dict):
            events.append(event)
        else:
            skipped.append(number)
    if skipped:
        where = source or "events"
        log.warning("skipped %d corrupt event line(s) in %s, first at %d", len(skipped), where, skipped[0])
    return events


def inline_events(inline: list[Any]) -> list[JsonObject]:
    """The events a record holds (``Attempt.inline_events``); what is not a map is not an
    event (a record in etcd is input like any other)."""
    return [event for event in inline if isinstance(event, dict)]


def tagged_for(event: JsonObject, episode_id: str, attempt: int | None) -> bool:
    """Whether an event of a shared file (a batch's, or a worker's short episodes') is this
    episode's, of this attempt (None: of any)."""
    return event.get("episode") == episode_id and (attempt is None or event.get("attempt") == attempt)


def read_events(
    store: Store,
    episode_id: str,
    attempt: int | None = None,
    *,
    batch: str | None = None,
    shared: str | None = None,
    inline: list[Any] | None = None,
) -> list[JsonObject]:
    """Every event of ``attempt`` (default: the latest attempt with events), chunks in order.
    ``batch`` names the claim when the attempt ran in a batch (``Attempt.batch``): its events
    are in the batch's shared chunks, tagged with the episode and attempt. ``shared`` names the
    file a short attempt's events went to (``Attempt.events``), tagged alike: written before the
    attempt's record names it (``NOT_STORED``: refused by the store; ``NOT_KEPT``: its spec
    kept none; no events either way). ``inline``:
    the events its record holds (``Attempt.inline_events``), where the store has none."""
    if inline is not None:
        return inline_events(inline)
    if shared in (NOT_STORED, NOT_KEPT):
        return []
    if shared is not None:
        path = layout.shared_events_path(shared)
        try:
            data = store.get_bytes(path)
        except ArtifactNotFound:
            return []
        return [e for e in decode_events(data, source=store.location(path)) if tagged_for(e, episode_id, attempt)]
    if batch is not None:
        return [
            event
            for path in sorted(store.list(layout.batch_prefix(batch)))
            if path.endswith(".jsonl")
            for event in decode_events(store.get_bytes(path), source=store.location(path))
            if tagged_for(event, episode_id, attempt)
        ]
    prefix = layout.episode_prefix(episode_id) if attempt is None else layout.attempt_prefix(episode_id, attempt)
    chunks = sorted(
        (parsed[1], parsed[2], path)
        for path in store.list(prefix)
        if (parsed := layout.parse_events_path(path)) is not None and parsed[0] == episode_id
    )
    if chunks and attempt is None:
        latest = chunks[-1][0]
        chunks = [c for c in chunks if c[0] == latest]
    events: list[JsonObject] = []
    for _, _, path in chunks:
        events.extend(decode_events(store.get_bytes(path), source=store.location(path)))
    return events
