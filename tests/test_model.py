"""Specs, records and IDs: validation with clear errors, tolerant decoding, unique sortable IDs."""

from __future__ import annotations

import math
import threading
import zlib
from dataclasses import replace

import msgpack
import pytest

from openrange_mesh.client import snapshots
from openrange_mesh.config import Settings, parse_labels, registry_url
from openrange_mesh.errors import ConfigError, CorruptRecord, SpecError, UnknownRuntime
from openrange_mesh.ids import IdAllocator
from openrange_mesh.keys import Keys
from openrange_mesh.model import (
    GROUP_FIELD,
    MAX_SPEC_BYTES,
    SCHEMA,
    Attempt,
    EpisodeRecord,
    EpisodeSpec,
    HostInfo,
    State,
    acked_by,
    decode_finished,
    decode_in_states,
    decode_or_none,
    encode_group,
    is_live,
    pack,
    unpack,
)
from openrange_mesh.registry import Put, Registry
from openrange_mesh.specs import check_spec, check_specs
from openrange_mesh.store import open_store
from openrange_mesh.store.digest import parse_digest
from openrange_mesh.store.events import kept, read_events

CARTPOLE = {"runtime": "gymnasium", "params": {"env": "CartPole-v1"}}


def sleep_result(result: object) -> dict[str, object]:
    """A sleep spec whose ``result`` param (a free-form map) holds ``result``."""
    return {"runtime": "sleep", "params": {"result": result}}


def nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def test_check_specs_asks_the_runtime_once_per_distinct_params() -> None:
    from tests.odd_runtimes import picky

    picky.asked.clear()
    name = "tests.odd_runtimes:picky"
    specs = [{"runtime": name, "params": {"n": i % 3}, "seed": i} for i in range(30)]
    assert [s.seed for s in check_specs(specs)] == list(range(30))
    assert sorted(a["n"] for a in picky.asked) == [0, 1, 2]
    with pytest.raises(SpecError, match="picky refuses"):  # one bad params among many good ones
        check_specs([*specs, {"runtime": name, "params": {"n": 1, "refuse": True}}])
    # the same params under another runtime are that runtime's to judge
    with pytest.raises(SpecError, match="picky refuses"):
        check_specs([{"runtime": "sleep", "params": {"seconds": 2}}, {"runtime": name, "params": {"seconds": 2}}])
    # a tuple and a list reach workers alike (packed): judged once
    picky.asked.clear()
    check_specs([{"runtime": name, "params": {"xs": [1, 2]}}, {"runtime": name, "params": {"xs": (1, 2)}}])
    assert len(picky.asked) == 1


def test_specs_alike_but_for_their_seeds_are_each_still_checked() -> None:
    """check_specs checks a mapping shaped like one it checked for its seed alone: nothing
    that the full check refuses may pass that way."""
    good = [{**CARTPOLE, "seed": i} for i in range(5)]
    assert check_specs(good) == [check_spec(spec) for spec in good]
    for seed in (-1, True, 2**63, "7"):
        with pytest.raises(SpecError) as caught:
            check_specs([*good, {**CARTPOLE, "seed": seed}])
        assert caught.value.field == "seed"
    # alike to a msgpack encoding that falls back to lists, not to the check
    with pytest.raises(SpecError, match="not set"):
        check_specs([sleep_result({"a": [1, 2]}), sleep_result({"a": {1, 2}})])
    with pytest.raises(SpecError, match="not frozenset"):
        check_specs([sleep_result({"a": [1, 2]}), sleep_result({"a": frozenset({1, 2})})])
    kinds = check_specs([sleep_result({"a": 1}), sleep_result({"a": 1.0}), sleep_result({"a": True})])
    assert [type(spec.params["result"]["a"]) for spec in kinds] == [int, float, bool]
    # a spec with no room left for a seed's bytes: the one with a seed is measured again
    blob = 500_000
    overhead = len(pack(check_spec(sleep_result({"blob": "x" * blob})).wire())) - blob
    full = sleep_result({"blob": "x" * (MAX_SPEC_BYTES - 4 - overhead)})
    with pytest.raises(SpecError, match="over the"):
        check_specs([full, {**full, "seed": 2**62}])


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"runtime": "nope"}, "runtime", "unknown runtime 'nope'"),
        ({**CARTPOLE, "timeout": -1}, "timeout", "positive number"),
        ({**CARTPOLE, "timeout": math.inf}, "timeout", "positive number"),
        ({**CARTPOLE, "max_attempts": 0}, "max_attempts", "from 1"),
        ({**CARTPOLE, "seed": -3}, "seed", "[0, 2**63)"),
        ({**CARTPOLE, "labels": {"bad key!": "x"}}, "labels", "bad label key"),
        ({**CARTPOLE, "labels": {"k": 3}}, "labels", "printable string"),
        ({**CARTPOLE, "params": {"env": "CartPole-v1", "obj": object()}}, "params", "does not serialize"),
        ({**CARTPOLE, "params": {"env": "CartPole-v1", "blob": "x" * 600_000}}, "params", "over the"),
        ({**CARTPOLE, "on_timeout": "sometimes"}, "on_timeout", "'fail' or 'retry'"),
        ({**CARTPOLE, "batch": 251}, "batch", "from 1 to 250"),
        ({**CARTPOLE, "batch": 127, "idempotency_key": "k"}, "batch", "at most 126 with an idempotency_key"),
        ({**CARTPOLE, "events": "some"}, "events", "'all', 'summary', 'none'"),
        ({**CARTPOLE, "events": ["none"]}, "events", "not ['none']"),
        ({**CARTPOLE, "colour": "red"}, "colour", "unknown field"),
        ({"params": {}}, "runtime", "missing"),
        ({"runtime": "gymnasium", "params": {}}, "params.env", ""),
        ({**CARTPOLE, "timeout": 10**400}, "timeout", "positive number"),
        ({1: 2, "runtime": "sleep"}, "1", "unknown field"),
        # params must come back as they went: an int key inside would make the record corrupt
        (sleep_result({"a": {1: "x"}}), "params.result.a", "keys must be strings"),
        (sleep_result({"a": {1, 2}}), "params.result.a", "not set"),
        (sleep_result({"a": b"x"}), "params.result.a", "not bytes"),
        (sleep_result({"a": [0.5, math.nan]}), "params.result.a[1]", "finite"),
        (sleep_result(nested(70)), ("params.result" + ".a" * 63)[:79] + "…", "nested deeper than 64"),
        (sleep_result(nested(100_000)), "params", "does not serialize"),
        # one rule with the store (layout.component_problem): a ref is one name
        ({"runtime": "sleep", "snapshot": "a/b"}, "snapshot", "one name"),
        ({"runtime": "sleep", "snapshot": ".."}, "snapshot", "printable"),
        ({"runtime": "sleep", "snapshot": "a\x1b[2J"}, "snapshot", "printable"),
        ({"runtime": "sleep", "snapshot": "é" * 200}, "snapshot", "1-255 bytes"),
        ({"runtime": "sleep", "snapshot": 7}, "snapshot", "string"),
    ],
)
def test_bad_specs_name_the_field(spec: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(SpecError) as caught:
        check_spec(spec)
    assert caught.value.field == field
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_params_as_deep_as_allowed_survive_a_record() -> None:
    spec = check_spec(sleep_result(nested(62)))  # params, result and 62 maps: 64 deep
    assert EpisodeRecord.from_bytes(EpisodeRecord("e", spec).to_bytes()).spec.params == spec.params


def test_a_snapshot_ref_submit_takes_is_a_name_or_a_digest() -> None:
    for ref in ("base", "ckpt-0001.bin", "é" * 127):
        assert check_spec({"runtime": "sleep", "snapshot": ref}).snapshot == ref
        snapshots.check_name(ref)  # a name the etcd alias keys take
    digest = "sha256:" + "ab" * 32
    assert check_spec({"runtime": "sleep", "snapshot": digest}).snapshot == digest
    assert parse_digest(digest) == digest


def test_unknown_runtime_lists_known_ones() -> None:
    with pytest.raises(UnknownRuntime) as caught:
        check_spec({"runtime": "gym"})
    assert {"command", "gymnasium", "sleep"} <= set(caught.value.known)


def test_record_round_trip() -> None:
    spec = check_spec({**CARTPOLE, "seed": 3, "labels": {"team": "rl"}, "timeout": 5})
    record = EpisodeRecord(
        id="000000002a-0000-h1",
        spec=spec,
        state=State.FAILED,
        attempt=2,
        owner="h1",
        history=(
            Attempt(1, "h2", 1.0, 2.0, "retried", "host h2 lost its lease"),
            Attempt(2, "h1", 3.0, 4.0, "failed", inline_events=[{"type": "reset", "t": 3.0}]),
        ),
        result={"return": 9.0},
        error="boom",
        created_at=0.5,
    )
    assert EpisodeRecord.from_bytes(record.to_bytes()) == record


def test_a_specs_events_level_survives_a_record_and_all_is_left_off_the_wire() -> None:
    summary = check_spec({**CARTPOLE, "events": "summary"})
    assert EpisodeRecord.from_bytes(EpisodeRecord("e", summary).to_bytes()).spec.events == "summary"
    assert "events" not in check_spec(CARTPOLE).wire() and check_spec(CARTPOLE).events == "all"
    # a level this version does not know (a newer writer's) keeps every event
    events = [{"type": "reset"}, {"type": "step"}, {"type": "terminal"}]
    assert kept(events, "later") == events and kept(events, "summary") == [events[0], events[2]]
    assert kept(events, "none") == []


def test_events_a_record_holds_are_read_as_maps_only() -> None:
    """A record in etcd is input: what its ``inline_events`` holds that is not a map is no event."""
    attempt = {"n": 1, "host": "h", "started_at": 1.0, "inline_events": [{"type": "reset"}, 7, "x", {"type": "end"}]}
    raw = {"v": 1, "id": "x", "spec": {"runtime": "sleep"}, "history": [attempt]}
    record = EpisodeRecord.from_bytes(msgpack.packb(raw))
    inline = record.history[0].inline_events
    assert inline is not None and read_events(open_store("memory://"), "x", 1, inline=inline) == [
        {"type": "reset"},
        {"type": "end"},
    ]


def test_decoding_is_tolerant_of_unknown_and_missing_fields() -> None:
    raw = {"v": 1, "id": "x", "spec": {"runtime": "sleep", "future_field": 1}, "shiny_new_thing": [1, 2]}
    record = EpisodeRecord.from_bytes(msgpack.packb(raw))
    assert record.id == "x" and record.state is State.PENDING and record.spec.runtime == "sleep"


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1garbage",
        msgpack.packb([1, 2]),
        msgpack.packb({"v": 99, "id": "x"}),
        msgpack.packb({"v": 1}),
        msgpack.packb({"v": 1, "id": "x", "spec": {"runtime": "s"}, "state": "exploded"}),
        msgpack.packb({"v": 1, "id": "x", "spec": "not a map"}),
        msgpack.packb({"v": 1, "id": "x", "spec": {"runtime": "s"}, "attempt": "three"}),
        msgpack.packb({"v": 1, "id": "x", "spec": {"runtime": "s", "max_attempts": True}}),
        msgpack.packb({"v": 1, "id": "x", "spec": {"runtime": "s"}, "history": ["not an attempt"]}),
        msgpack.packb({"v": 1, "id": 7, "spec": {"runtime": "s"}}),
        msgpack.packb(
            {
                "v": 1,
                "id": "x",
                "spec": {"runtime": "s"},
                "history": [{"n": 1, "host": "h", "started_at": 1, "inline_events": "reset"}],
            }
        ),
    ],
)
def test_corrupt_records_raise_and_are_skipped(data: bytes) -> None:
    with pytest.raises(CorruptRecord):
        EpisodeRecord.from_bytes(data, "k")
    assert decode_or_none(EpisodeRecord.from_bytes, data, b"/k") is None


def test_host_info_round_trip() -> None:
    info = HostInfo(id="h1", capacity=4, running=2, labels={"gpu": "a100"}, version="0.1.0", pid=7, machine="m")
    assert HostInfo.from_bytes(info.to_bytes()) == info
    assert (info.weight, info.full) == (4, False)
    draining = replace(info, running=4, draining=True)
    assert HostInfo.from_bytes(draining.to_bytes()) == draining
    assert (draining.weight, draining.full) == (0, True)


@pytest.mark.parametrize(("field", "value"), [("draining", 1), ("capacity", True), ("running", 2.5)])
def test_host_info_fields_of_the_wrong_type_are_corrupt(field: str, value: object) -> None:
    raw = {"v": 1, "id": "h1", "capacity": 4, field: value}
    with pytest.raises(CorruptRecord):
        HostInfo.from_bytes(msgpack.packb(raw))


def test_ids_are_unique_across_allocators_and_sorted(registry: Registry) -> None:
    keys = Keys("ids")
    allocators = [IdAllocator(registry, keys, "same-host") for _ in range(4)]
    out: list[list[str]] = [[] for _ in allocators]

    def take(i: int) -> None:
        for _ in range(50):
            out[i] += allocators[i].next_ids(7)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(allocators))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for ids in out for i in ids]
    assert len(set(every)) == len(every) == 4 * 50 * 7
    for ids in out:
        assert ids == sorted(ids)  # creation order within an allocator is byte order


def test_adopting_a_later_revision_keeps_ids_sorted(registry: Registry) -> None:
    allocator = IdAllocator(registry, Keys("ids2"), "h")
    first = allocator.next_ids(3)
    allocator.adopt(registry.txn([], [Put(b"/ids2/own-write", b"")]).revision)  # as a submission does
    later = allocator.next_ids(2)
    assert later[0].endswith("-0000-h") and later[0][:10] > first[0][:10]
    assert first + later == sorted(first + later)


def test_settings_enforce_the_timing_rule() -> None:
    with pytest.raises(ConfigError, match="timing rule"):
        Settings(ttl=4, loop_wait=1, retry_timeout=2)
    with pytest.raises(ConfigError, match="at least 2"):
        Settings(ttl=1, loop_wait=0.1, retry_timeout=0.1)
    assert Settings(host_id="h").with_timing(2).ttl == 2


def test_settings_layering_env_then_flags() -> None:
    env = {"OPENRANGE_ETCD": "a:1,b:2", "OPENRANGE_CAPACITY": "3", "OPENRANGE_LABELS": "x=1"}
    settings = Settings.load({"capacity": 5, "host_id": "h"}, env=env)
    assert (settings.registry, settings.capacity, dict(settings.labels)) == ("etcd://a:1,b:2", 5, {"x": "1"})
    with pytest.raises(ConfigError, match="bad value for capacity"):
        Settings.load({"capacity": "lots", "host_id": "h"}, env={})
    with pytest.raises(ConfigError, match="bad host id"):
        Settings.load({"host_id": "no/slashes"}, env={})


def test_small_parsers() -> None:
    assert registry_url("h1:2379") == "etcd://h1:2379"
    assert registry_url("memory://x") == "memory://x"
    assert parse_labels("a=1, b = two") == {"a": "1", "b": "two"}
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_labels("novalue")
    with pytest.raises(ConfigError):
        registry_url("  ")
    assert EpisodeSpec(runtime="sleep").check().batch == 1


@pytest.mark.parametrize("state", list(State))
def test_is_live_agrees_with_decoding(state: State) -> None:
    record = EpisodeRecord(
        id="x",
        spec=EpisodeSpec(runtime="sleep", params={"note": "running"}),
        state=state,
        error="state pending",
        result={"state": "running"},
    )
    assert is_live(record.to_bytes()) is not state.is_terminal  # whatever the params/result hold
    assert not is_live(b"\x81\xa5state\xa7pending"[:4])


def test_a_group_header_says_finished_and_acked_and_readers_skip_by_it() -> None:
    spec = EpisodeSpec(runtime="sleep")
    states = [State.SUCCEEDED, State.RUNNING, State.PENDING, State.FAILED]
    members = [EpisodeRecord(id=f"m{i}", spec=spec, state=s) for i, s in enumerate(states)]
    mixed = encode_group(members)
    assert unpack(mixed)["state"] == "mixed"
    assert [r.id for r in decode_in_states(mixed, "k", frozenset({State.RUNNING}))] == ["m1"]
    live = frozenset({State.PENDING, State.RUNNING})
    assert decode_in_states(mixed, "k", live) == members[1:3]
    assert not acked_by(mixed, "k", cutoff=1e12)

    done = [m.replace(state=State.SUCCEEDED, acked_at=None) for m in members]
    finished = encode_group(done)
    assert unpack(finished)["state"] == "finished" and "acked_at" not in unpack(finished)
    assert not is_live(finished) and not acked_by(finished, "k", cutoff=1e12)
    assert decode_in_states(finished, "k", frozenset({State.SUCCEEDED})) == done
    acked = encode_group([m.replace(acked_at=100.0 + i) for i, m in enumerate(done)])
    assert unpack(acked)["acked_at"] == 103.0
    assert acked_by(acked, "k", cutoff=103.0) and not acked_by(acked, "k", cutoff=102.9)
    # the header alone rules a finished group out: its members are not even read
    only_header = pack({"state": "finished", "v": SCHEMA, GROUP_FIELD: b"not zlib"})
    assert decode_in_states(only_header, "k", frozenset({State.RUNNING})) == []
    assert not acked_by(only_header, "k", cutoff=1e12)
    with pytest.raises(CorruptRecord):
        decode_in_states(only_header, "k", frozenset({State.SUCCEEDED}))

    # a group written before headers said "finished": its members answer
    old = pack({"state": "mixed", "v": SCHEMA, GROUP_FIELD: zlib.compress(pack([m.to_wire() for m in done]))})
    assert decode_in_states(old, "k", frozenset({State.SUCCEEDED})) == done
    old_acked = [m.replace(acked_at=5.0).to_wire() for m in done]
    value = pack({"state": "mixed", "v": SCHEMA, GROUP_FIELD: zlib.compress(pack(old_acked))})
    assert acked_by(value, "k", cutoff=5.0) and not acked_by(value, "k", cutoff=4.0)


@pytest.mark.parametrize("state", list(State))
def test_a_single_record_is_decoded_only_in_the_states_asked_for(state: State) -> None:
    record = EpisodeRecord(id="x", spec=EpisodeSpec(runtime="sleep"), state=state, acked_at=7.0)
    assert decode_in_states(record.to_bytes(), "k", frozenset({state})) == [record]
    assert decode_in_states(record.to_bytes(), "k", frozenset(set(State) - {state})) == []
    assert acked_by(record.to_bytes(), "k", cutoff=7.0) is state.is_terminal
    assert not acked_by(record.replace(acked_at=None).to_bytes(), "k", cutoff=1e12)


def test_decode_finished_decodes_only_the_finished_members_asked_for() -> None:
    spec = EpisodeSpec(runtime="sleep")
    states = [State.SUCCEEDED, State.RUNNING, State.FAILED, State.CANCELLED]
    members = [EpisodeRecord(id=f"m{i}", spec=spec, state=s) for i, s in enumerate(states)]
    group = encode_group(members)
    assert [r.id for r in decode_finished(group, "k", lambda i: i != "m2")] == ["m0", "m3"]
    assert decode_finished(group, "k", lambda i: True) == [r for r in members if r.state.is_terminal]
    single = members[2].to_bytes()
    assert decode_finished(single, "k", lambda i: True) == [members[2]]
    assert decode_finished(members[1].to_bytes(), "k", lambda i: True) == []  # running: not finished
    # a corrupt member it skips is not checked; one it wants is
    bad = [{**members[0].to_wire(), "attempt": "two"}, members[2].to_wire()]
    value = pack({"state": "mixed", "v": SCHEMA, GROUP_FIELD: zlib.compress(pack(bad))})
    assert [r.id for r in decode_finished(value, "k", lambda i: i == "m2")] == ["m2"]
    with pytest.raises(CorruptRecord):
        decode_finished(value, "k", lambda i: True)
