"""A group record's members as columns (model/group.py, model/columns.py): every record comes
back as it went in, to the type of each value, and a bad column makes the value corrupt."""

from __future__ import annotations

import math
import zlib
from typing import Any

import msgpack
import pytest

from openrange_mesh.errors import CorruptRecord
from openrange_mesh.model import (
    GROUP_FIELD,
    SCHEMA,
    Attempt,
    EpisodeRecord,
    EpisodeSpec,
    State,
    decode_finished,
    decode_in_states,
    decode_or_none,
    decode_records,
    encode_group,
    finished_among,
    pack,
    unpack,
)


def _batch(n: int = 4) -> list[EpisodeRecord]:
    """A batch as a claim leaves it: one spec but for the seed, one owner and claim."""
    spec = {"runtime": "gymnasium", "params": {"env": "CartPole-v1"}, "batch": n, "labels": {"team": "rl"}}
    return [
        EpisodeRecord(
            id=f"g-{i}",
            spec=EpisodeSpec(**spec, seed=i),  # type: ignore[arg-type]
            state=State.RUNNING,
            owner="h1",
            claim="claims/h1/7",
            created_at=10.0,
            started_at=11.0 + i,
            history=(Attempt(1, "h1", 11.0 + i, batch="c7"),),
            submitter="trainer",
        )
        for i in range(n)
    ]


def _exact(records: list[EpisodeRecord]) -> list[bytes]:
    """What each record encodes to alone: tells 1 from 1.0 and True, and 0.0 from -0.0."""
    return [r.to_bytes() for r in records]


def _columns_of(value: bytes) -> dict[str, Any]:
    members = unpack(zlib.decompress(unpack(value)[GROUP_FIELD]))
    assert isinstance(members, dict)
    return members


def test_a_batch_keeps_what_its_members_share_once() -> None:
    records = _batch()
    value = encode_group(records)
    assert decode_records(value) == records and _exact(decode_records(value)) == _exact(records)
    columns = _columns_of(value)
    assert columns["n"] == 4
    assert set(columns["rec"]["same"]) >= {"state", "owner", "claim", "created_at", "submitter", "history"}
    assert set(columns["rec"]["each"]) == {"id", "started_at"}
    assert columns["spec"]["same"]["params"] == {"env": "CartPole-v1"} and set(columns["spec"]["each"]) == {"seed"}
    assert set(columns["tried"]["each"]) == {"started_at"}


def test_every_record_comes_back_as_it_went_in_to_the_type_of_each_value() -> None:
    base = _batch(6)
    odd = [
        base[0].replace(spec=EpisodeSpec(runtime="gymnasium", params={"x": 1}, seed=0)),
        base[1].replace(spec=EpisodeSpec(runtime="gymnasium", params={"x": 1.0}, seed=1)),
        base[2].replace(spec=EpisodeSpec(runtime="gymnasium", params={"x": True}, seed=2), state=State.SUCCEEDED),
        base[3].replace(history=(), state=State.PENDING, owner=None, claim=None, started_at=None),
        base[4].replace(
            state=State.FAILED,
            attempt=3,
            error="boom",
            result={"return": -0.0},
            acked_at=5.0,
            history=(
                Attempt(1, "h2", 1.0, 2.0, "retried", "lost its lease", token=4),
                Attempt(2, "h1", 3.0, 4.0, "released", artifacts=[{"name": "a", "size": 1, "sha256": "0" * 64}]),
                Attempt(3, "h1", 5.0, 6.0, "failed", inline_events=[{"type": "reset", "t": 5.0}]),
            ),
        ),
        base[5].replace(state=State.SUCCEEDED, result={"return": 0.0}, finished_at=math.nan),
    ]
    value = encode_group(odd)
    decoded = decode_records(value)
    assert _exact(decoded) == _exact(odd)
    assert [type(r.spec.params["x"]) for r in decoded[:3]] == [int, float, bool]
    assert [len(r.history) for r in decoded] == [1, 1, 1, 0, 3, 1]
    assert math.copysign(1.0, decoded[4].result["return"]) == -1.0  # type: ignore[index]
    assert _exact(decode_records(encode_group(decoded))) == _exact(odd)  # decoded, then written again


def test_readers_pick_members_from_the_columns() -> None:
    records = _batch(5)
    done = [records[0].replace(state=State.SUCCEEDED), records[1], records[2].replace(state=State.CANCELLED)]
    value = encode_group(done + records[3:])
    assert [r.id for r in decode_finished(value, "k", lambda i: True)] == ["g-0", "g-2"]
    assert [r.id for r in decode_finished(value, "k", lambda i: i != "g-0")] == ["g-2"]
    assert [r.id for r in decode_in_states(value, "k", frozenset({State.RUNNING}))] == ["g-1", "g-3", "g-4"]
    present, done = finished_among(value, "k", {"g-0", "g-1", "g-9"})
    assert present == ["g-0", "g-1"] and done == decode_records(value)[:1]  # g-1 runs: not built


def test_a_group_of_member_maps_is_read_member_by_member() -> None:
    """An older writer's group: a finished member that does not decode is left out alone."""
    records = [r.replace(state=State.SUCCEEDED) for r in _batch(3)]
    maps = [r.to_wire() for r in records]
    maps[1]["attempt"] = "two"
    value = pack({"state": "finished", "v": SCHEMA, GROUP_FIELD: zlib.compress(pack(maps))})
    assert finished_among(value, "k", {"g-0", "g-1", "g-2"}) == (["g-0", "g-2"], [records[0], records[2]])


def test_an_empty_group_is_empty() -> None:
    assert decode_records(encode_group([])) == []


def _with(columns: dict[str, Any]) -> bytes:
    return pack({"state": "running", "v": SCHEMA, GROUP_FIELD: zlib.compress(msgpack.packb(columns))})


def _good() -> dict[str, Any]:
    return _columns_of(encode_group(_batch(3)))


def _spoiled(change: str) -> dict[str, Any]:
    columns = _good()
    rec, spec, tried = columns["rec"], columns["spec"], columns["tried"]
    if change == "count not an int":
        columns["n"] = "3"
    elif change == "count a bool":
        columns["n"] = True
    elif change == "count too big":
        columns["n"] = 10**6
    elif change == "short column":
        rec["each"]["id"] = rec["each"]["id"][:2]
    elif change == "column not a list":
        rec["each"]["id"] = "g-0"
    elif change == "bool where an int belongs":
        rec["same"]["attempt"] = True
    elif change == "wrong type in a list":
        spec["each"]["seed"] = [0, "one", 2]
    elif change == "no ids":
        del rec["each"]["id"]
    elif change == "no runtime":
        del spec["same"]["runtime"]
    elif change == "unknown state":
        rec["same"]["state"] = "exploded"
    elif change == "more attempts than listed":
        rec["same"]["history"] = 2
    elif change == "negative attempts":
        rec["each"]["history"] = [2, 2, -1]
    elif change == "a trillion attempts":  # all alike: no list says how many there are
        rec["same"]["history"] = 10**12
        tried["same"].update((name, values[0]) for name, values in tried.pop("each").items())
    elif change == "table not a map":
        columns["tried"] = ["not", "a", "table"]
    elif change == "same not a map":
        tried["same"] = [1]
    return columns


CHANGES = [
    "count not an int",
    "count a bool",
    "count too big",
    "short column",
    "column not a list",
    "bool where an int belongs",
    "wrong type in a list",
    "no ids",
    "no runtime",
    "unknown state",
    "more attempts than listed",
    "negative attempts",
    "a trillion attempts",
    "table not a map",
    "same not a map",
]


@pytest.mark.parametrize("change", CHANGES)
def test_a_bad_column_makes_the_whole_value_corrupt(change: str) -> None:
    value = _with(_spoiled(change))
    with pytest.raises(CorruptRecord):
        decode_records(value, "k")
    with pytest.raises(CorruptRecord):  # whichever members a reader wants: they were written together
        decode_finished(value, "k", lambda i: False)
    with pytest.raises(CorruptRecord):
        finished_among(value, "k", set())
    assert decode_or_none(decode_records, value, b"/k") is None


def test_columns_a_reader_does_not_know_are_ignored() -> None:
    columns = _good()
    columns["rec"]["same"]["shiny_new_field"] = 1
    columns["spec"]["each"]["future"] = [1, 2, 3]
    columns["later_table"] = {"same": {}}
    assert decode_records(_with(columns)) == _batch(3)


def test_the_good_columns_the_corruption_tests_start_from_decode() -> None:
    assert decode_records(_with(_good())) == _batch(3)


def test_a_mapping_a_writer_left_out_is_each_members_own() -> None:
    """A default mapping (a writer that leaves defaults out) is built for each member, as a
    member map's is: no two records, of one group or of two, share it."""
    columns = _good()
    del columns["spec"]["same"]["labels"], columns["spec"]["same"]["params"]
    decoded = decode_records(_with(columns)) + decode_records(_with(columns))
    maps = [r.spec.labels for r in decoded] + [r.spec.params for r in decoded]
    assert all(m == {} for m in maps) and len({id(m) for m in maps}) == len(maps)
