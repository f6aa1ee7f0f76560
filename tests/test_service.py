"""EpisodeService: the single-host service, on memory:// and on a real etcd."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openrange_mesh.errors import EpisodeNotFound, SpecError
from openrange_mesh.ledger.catalog import Catalog
from openrange_mesh.ledger.homes import MAX_OWN_KEYS
from openrange_mesh.model import EpisodeRecord, State
from openrange_mesh.registry import MAX_TXN_OPS, Registry, open_registry
from openrange_mesh.service import EpisodeService
from openrange_mesh.store import open_store
from openrange_mesh.store.events import read_events

from .helpers import wait_until

CARTPOLE = {"runtime": "gymnasium", "params": {"env": "CartPole-v1"}}


@pytest.fixture
def service(registry: Registry) -> Iterator[EpisodeService]:
    svc = EpisodeService(registry, namespace=f"s{uuid.uuid4().hex[:10]}", host_id="h1", ttl=2)
    yield svc
    svc.close()


def test_run_to_terminal_is_deterministic_and_recorded(service: EpisodeService) -> None:
    a = service.run({**CARTPOLE, "seed": 7})
    b = service.run({**CARTPOLE, "seed": 7})
    assert a.state is State.SUCCEEDED and a.committed
    assert a.result == b.result and a.result is not None and a.result["steps"] > 0
    assert next(e["type"] for e in a.events) == "reset" and a.events[-1]["type"] == "terminal"
    stored = service.get(a.id)
    assert stored.state is State.SUCCEEDED and stored.owner == "h1" and stored.history[0].outcome == "succeeded"
    assert a.id != b.id and a.id < b.id


def test_start_advance_observe_stop(service: EpisodeService) -> None:
    episode_id = service.start({"runtime": "sleep", "params": {"seconds": 30, "events": 100}})
    assert [r.id for r in service.list(State.RUNNING)] == [episode_id]
    events = service.advance(episode_id, 0.5)
    assert events and events[0]["type"] == "reset"
    assert not service.is_terminal(episode_id)
    report = service.stop(episode_id)
    assert report.state is State.CANCELLED and "before reaching a terminal" in (report.record.error or "")
    assert service.list(State.RUNNING) == []
    with pytest.raises(EpisodeNotFound):
        service.stop(episode_id)


def test_failures_and_timeouts_are_reported(service: EpisodeService) -> None:
    failed = service.run({"runtime": "sleep", "params": {"seconds": 0, "mode": "fail"}})
    assert failed.state is State.FAILED and "asked to fail" in (failed.record.error or "")
    hung = service.run({"runtime": "sleep", "params": {"mode": "hang"}, "timeout": 0.3}, slice_seconds=0.05)
    assert hung.state is State.FAILED and "timed out after 0.3 s" in (hung.record.error or "")


def test_run_many_in_parallel_keeps_input_order(service: EpisodeService) -> None:
    specs = [{"runtime": "sleep", "params": {"seconds": 0.2, "result": {"i": i}}} for i in range(8)]
    reports = service.run_many(specs, parallel=8)
    assert [r.result for r in reports] == [{"i": i} for i in range(8)]
    assert len(service.list(State.SUCCEEDED)) == 8


def test_bad_spec_runs_nothing(service: EpisodeService) -> None:
    with pytest.raises(SpecError, match=r"params\.env"):
        service.run_many([CARTPOLE, {"runtime": "gymnasium", "params": {}}])
    assert service.list() == []


def test_events_and_results_go_to_the_store(registry: Registry, tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    with EpisodeService(registry, namespace=f"s{uuid.uuid4().hex[:10]}", store=store) as svc:
        report = svc.run({**CARTPOLE, "seed": 1})
    events = read_events(store, report.id, 1)
    assert [e["type"] for e in events] == [e["type"] for e in report.events]


def test_the_events_a_service_keeps_are_those_its_spec_asks(registry: Registry, tmp_path: Path) -> None:
    """The report and the store hold what ``events`` keeps; ``advance`` hands back every event."""
    store = open_store(str(tmp_path / "store"))
    ticking = {"runtime": "sleep", "params": {"seconds": 0, "events": 3}}
    with EpisodeService(registry, namespace=f"s{uuid.uuid4().hex[:10]}", store=store) as svc:
        summary, nothing = svc.run_many([{**ticking, "events": "summary"}, {**ticking, "events": "none"}])
        driven = svc.start({**ticking, "events": "none"})
        seen = svc.advance(driven, 0.1)
        quiet = svc.stop(driven)
    assert [e["type"] for e in summary.events] == ["reset", "terminal"]
    assert [e["type"] for e in read_events(store, summary.id, 1)] == ["reset", "terminal"]
    assert nothing.events == [] == quiet.events and read_events(store, nothing.id, 1) == []
    assert [e["type"] for e in seen] == ["reset", "tick", "tick", "tick", "terminal"]
    assert store.list(f"episodes/{nothing.id}/attempt-1/") == [f"episodes/{nothing.id}/attempt-1/result.json"]


def test_close_cancels_what_still_runs(registry: Registry) -> None:
    svc = EpisodeService(registry, namespace=f"s{uuid.uuid4().hex[:10]}")
    episode_id = svc.start({"runtime": "sleep", "params": {"seconds": 60}})
    svc.close()
    assert Catalog(registry, svc.keys).get(episode_id).state is State.CANCELLED


def test_a_service_serves_the_dashboard_of_its_own_episodes() -> None:
    """Single-host mode can show its episodes as the mesh's leader does (design/dashboard.md), from its
    memory:// registry, which no other process could read."""
    import httpx

    with EpisodeService(dashboard=True) as service:
        url = service.dashboard_url
        report = service.run({"runtime": "sleep", "params": {"seconds": 0}})
        assert httpx.get(f"{url}/api/leader", timeout=10).json()["url"] == url

        def listed() -> list[str]:
            return [e["id"] for e in httpx.get(f"{url}/api/episodes", timeout=10).json()["episodes"]]

        assert wait_until(lambda: listed() == [report.id], 10, what="the episode listed")
        record = httpx.get(f"{url}/api/episodes/{report.id}", timeout=10).json()["record"]
        assert record["state"] == "succeeded"


# -- a registry only this service reads: records written behind (writebehind.py)

SLEEPER = {"runtime": "sleep", "params": {"seconds": 60}}


@pytest.fixture
def private() -> Iterator[EpisodeService]:
    """A service on a memory:// registry it opened itself: nobody else can read it."""
    svc = EpisodeService("memory://", host_id="h1")
    yield svc
    svc.close()


def shape(record: EpisodeRecord) -> dict[str, Any]:
    """A record without what differs between two runs of the same specs: ids and claim names,
    times, and fencing tokens (a private registry has no claim keys to take them from)."""
    wire = record.to_wire()
    for name in ("id", "claim", "created_at", "started_at", "finished_at"):
        wire[name] = name in wire
    wire["history"] = [
        {**a, "started_at": True, "finished_at": "finished_at" in a, "batch": "batch" in a, "token": None}
        for a in wire.get("history", [])
    ]
    return wire


def test_a_private_service_reads_running_then_final(private: EpisodeService) -> None:
    episode_id = private.start(SLEEPER)
    running = private.get(episode_id)
    assert running.state is State.RUNNING and running.owner == "h1" and running.attempt == 1
    assert running.claim == f"{episode_id}.1" and running.started_at is not None
    assert [(a.n, a.host, a.finished_at) for a in running.history] == [(1, "h1", None)]
    assert private.list(State.RUNNING) == [running]
    report = private.stop(episode_id)
    assert report.committed and report.state is State.CANCELLED
    assert private.get(episode_id) == report.record and report.record.claim is None
    assert private.list(State.RUNNING) == [] and private.list(State.CANCELLED) == [report.record]
    ran = private.run({**CARTPOLE, "seed": 3})
    record = ran.record  # built by the report first, this time
    assert ran.state is State.SUCCEEDED and ran.result == record.result and private.get(ran.id) == record
    assert record.history[0].token is None  # no claim key, no fencing token


def test_a_private_service_records_failures(private: EpisodeService) -> None:
    failed = private.run({"runtime": "sleep", "params": {"mode": "fail"}})
    hung = private.run({"runtime": "sleep", "params": {"mode": "hang"}, "timeout": 0.2}, slice_seconds=0.05)
    assert private.get(failed.id) == failed.record and failed.state is State.FAILED
    assert private.get(hung.id) == hung.record and "timed out" in (hung.record.error or "")
    assert {r.id for r in private.list(State.FAILED)} == {failed.id, hung.id}


def test_a_private_service_reads_as_one_that_writes_through(private: EpisodeService) -> None:
    """More episodes than one start or one written txn holds, some failing, labelled: every
    read shows what the same service writing at each transition shows."""
    count = MAX_TXN_OPS + 9
    specs = [
        {
            "runtime": "sleep",
            "params": {"mode": "fail" if i % 7 == 0 else "ok", "result": {"i": i}},
            "labels": {"odd": str(i % 2)},
        }
        for i in range(count)
    ]
    with EpisodeService(f"memory://{uuid.uuid4().hex}", host_id="h1") as through:  # named: others may read it
        expected = through.run_many(specs)
        seen = [shape(r) for r in through.list()]
        odd = [shape(r) for r in through.list(labels={"odd": "1"})]
    reports = private.run_many(specs)
    assert [shape(r.record) for r in reports] == [shape(r.record) for r in expected]
    assert [shape(r) for r in private.list()] == seen
    assert [shape(r) for r in private.list(labels={"odd": "1"})] == odd
    assert len(private.list(State.FAILED, hosts=frozenset({"h1"}))) == len(range(0, count, 7))
    assert [private.get(r.id) for r in reports] == [r.record for r in reports]
    batches = {r.record.history[0].batch for r in reports}
    assert len(batches) == -(-count // MAX_OWN_KEYS)  # one claim per start of up to MAX_OWN_KEYS


@pytest.mark.parametrize("result", ["fine", "intkey", "deep", "surrogate"])
def test_an_odd_result_fares_as_it_would_written_through(private: EpisodeService, result: str) -> None:
    """What a runtime gives is encoded as its episode stops, though its record waits for a
    read: an int key is stored and skipped by readers as corrupt, a result too deep for msgpack
    or a str UTF-8 cannot hold fails the stop, on both paths alike; and reads go on."""
    spec = {"runtime": "tests.odd_runtimes:odd", "params": {"result": result}}

    def fate(svc: EpisodeService) -> tuple[str, str]:
        episode_id = svc.start(spec)
        svc.advance(episode_id)
        try:
            stopped = svc.stop(episode_id).state.value
        except ValueError as exc:
            stopped = f"raised {exc}"
        try:
            read = svc.get(episode_id).state.value
        except EpisodeNotFound:
            read = "not found"
        assert svc.get(svc.run(SLEEPER | {"params": {}}).id).state is State.SUCCEEDED
        return stopped, read

    with EpisodeService(f"memory://{uuid.uuid4().hex}", host_id="h1") as through:
        assert fate(private) == fate(through)


def test_a_reader_never_sees_an_episode_go_back(private: EpisodeService) -> None:
    """A thread reading while others run episodes sees each running, then final, never the
    reverse (whoever writes what is kept holds its lock while writing)."""
    seen: dict[str, list[State]] = {}
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            for record in private.list():
                states = seen.setdefault(record.id, [])
                if not states or states[-1] is not record.state:
                    states.append(record.state)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        reports = private.run_many([{"runtime": "sleep", "params": {"seconds": 0.005}}] * 130, parallel=4)
    finally:
        done.set()
        reader.join()
    assert [r.state for r in reports] == [State.SUCCEEDED] * 130
    assert seen and all(
        states in ([State.RUNNING, State.SUCCEEDED], [State.SUCCEEDED], [State.RUNNING]) for states in seen.values()
    )


def test_a_private_service_records_what_close_cancelled() -> None:
    svc = EpisodeService("memory://")
    stopped, left = svc.start(SLEEPER), svc.start(SLEEPER)
    svc.stop(stopped)
    svc.close()
    assert svc.get(left).state is State.CANCELLED and "before reaching a terminal" in (svc.get(left).error or "")
    assert svc.get(stopped).state is State.CANCELLED


def test_a_service_on_a_registry_others_hold_writes_at_once(registry: Registry) -> None:
    """Given a registry object, or a memory:// name another opener shares, every record is
    visible to a second reader at once, as it always was."""
    name = f"memory://{uuid.uuid4().hex}"
    given = EpisodeService(registry, namespace=f"s{uuid.uuid4().hex[:10]}", host_id="h1", ttl=2)
    named = EpisodeService(name, host_id="h1")
    second = open_registry(name)
    try:
        for reader, svc in [(registry, given), (second, named)]:
            episode_id = svc.start(SLEEPER)
            assert Catalog(reader, svc.keys).get(episode_id).state is State.RUNNING
            report = svc.stop(episode_id)
            assert Catalog(reader, svc.keys).get(episode_id) == report.record
            assert report.record.history[0].token is not None  # fenced under a claim key
    finally:
        given.close()
        named.close()
        second.close()


def test_handing_out_the_registry_ends_write_behind(private: EpisodeService) -> None:
    kept = private.start(SLEEPER)
    catalog = Catalog(private.registry, private.keys)
    assert catalog.get(kept).state is State.RUNNING
    later = private.start(SLEEPER)
    assert catalog.get(later).state is State.RUNNING  # no read through the service needed
    assert private.stop(kept).record == catalog.get(kept)
    assert private.stop(later).record == catalog.get(later)
