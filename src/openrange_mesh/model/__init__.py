"""The mesh's values and their wire form: specs, records and host records (design/README.md, "Keyspace").

``spec``, ``record`` and ``host`` hold the values, each with its to_bytes/from_bytes; ``group``
holds a batch's records as one value, in columns (``columns``);
``wire`` holds the msgpack codec they share. Import the names from here.
"""

from __future__ import annotations

from .group import (
    acked_by,
    decode_finished,
    decode_in_states,
    decode_records,
    decode_value,
    encode_group,
    finished_among,
)
from .host import HostInfo
from .record import GROUP_FIELD, Attempt, EpisodeRecord, State, is_live
from .spec import EVENT_LEVELS, MAX_ATTEMPTS, MAX_BATCH, MAX_LABELS, MAX_SPEC_BYTES, EpisodeSpec
from .wire import SCHEMA, decode_or_none, pack, unpack

__all__ = [
    "EVENT_LEVELS",
    "GROUP_FIELD",
    "MAX_ATTEMPTS",
    "MAX_BATCH",
    "MAX_LABELS",
    "MAX_SPEC_BYTES",
    "SCHEMA",
    "Attempt",
    "EpisodeRecord",
    "EpisodeSpec",
    "HostInfo",
    "State",
    "acked_by",
    "decode_finished",
    "decode_in_states",
    "decode_or_none",
    "decode_records",
    "decode_value",
    "encode_group",
    "finished_among",
    "is_live",
    "pack",
    "unpack",
]
