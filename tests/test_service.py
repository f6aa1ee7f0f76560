"""EpisodeService: the single-host service, on memory:// and on a real etcd."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from openrange_mesh.errors import EpisodeNotFound, SpecError
from openrange_mesh.ledger.catalog import Catalog
from openrange_mesh.model import State
from openrange_mesh.registry import Registry
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
