"""The agent's metrics in-process: the metrics object on made-up records, the registry observer
and the lease keeper on the memory backend, and /metrics served over HTTP. No agent, no etcd:
milliseconds, but for the keeper held up for a second on purpose."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from openrange_mesh import __version__
from openrange_mesh.agent.lease import LeaseKeeper
from openrange_mesh.agent.metrics import Metrics, stop_serving
from openrange_mesh.config import Settings
from openrange_mesh.errors import Compacted, ConfigError, LeaseLost, RegistryError, TlsError, Unavailable
from openrange_mesh.model import Attempt, EpisodeRecord, EpisodeSpec, State
from openrange_mesh.registry import open_registry
from openrange_mesh.registry.base import error_kind

from .helpers import wait_until


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    assert found is not None, f"no sample {name} {labels}"
    return found


def record(history: tuple[Attempt, ...], *, started_at: float | None = None) -> EpisodeRecord:
    """A record of episode e1 created at t=100."""
    spec = EpisodeSpec(runtime="sleep")
    return EpisodeRecord("e1", spec, State.RUNNING, len(history), "h1", "e1.1", 100.0, started_at, history=history)


def test_each_agent_has_a_registry_of_its_own() -> None:
    one, two = Metrics("h1"), Metrics("h2")  # the global registry would refuse the second
    one.started.inc()
    assert value(one, "openrange_episodes_started_total") == 1
    assert value(two, "openrange_episodes_started_total") == 0
    build = {"version": __version__, "python": platform.python_version(), "host": "h2"}
    assert value(two, "openrange_build_info", **build) == 1


def test_attempts_started_and_committed() -> None:
    metrics = Metrics("h1")
    first = record((Attempt(1, "h1", 103.0),), started_at=103.0)
    metrics.attempt_started(first)  # waited from its creation at 100
    retry = record((Attempt(1, "h2", 103.0, 110.0, "retried"), Attempt(2, "h1", 110.5)), started_at=110.5)
    metrics.attempt_started(retry)  # waited from its first attempt's end at 110
    assert value(metrics, "openrange_episodes_started_total") == 2
    assert value(metrics, "openrange_episode_queue_wait_seconds_count") == 2
    assert value(metrics, "openrange_episode_queue_wait_seconds_sum") == pytest.approx(3.5)

    done = record((Attempt(1, "h1", 103.0, 105.5, "succeeded"),))
    metrics.attempt_committed(done)
    metrics.attempt_committed(record((Attempt(1, "h1", 103.0, 104.0, "released"),)))
    assert value(metrics, "openrange_episodes_finished_total", outcome="succeeded") == 1
    assert value(metrics, "openrange_episodes_finished_total", outcome="released") == 1
    assert value(metrics, "openrange_episodes_finished_total", outcome="failed") == 0
    assert value(metrics, "openrange_episode_duration_seconds_sum") == pytest.approx(3.5)
    assert value(metrics, "openrange_episode_duration_seconds_bucket", le="4.0") == 2

    metrics.attempt_reported("timeout")
    metrics.attempt_reported("something new")  # counted as the agent commits it: failed
    assert value(metrics, "openrange_attempts_total", result="timeout") == 1
    assert value(metrics, "openrange_attempts_total", result="failed") == 1


def test_gauges_are_read_when_scraped() -> None:
    metrics = Metrics("h1")
    running = [3]
    metrics.track(running=lambda: running[0], capacity=lambda: 4, is_leader=lambda: True, is_sick=lambda: False)
    assert value(metrics, "openrange_episodes_running") == 3
    running[0] = 0
    assert value(metrics, "openrange_episodes_running") == 0
    assert value(metrics, "openrange_is_leader") == 1
    assert value(metrics, "openrange_host_sick") == 0
    assert value(metrics, "openrange_capacity") == 4


def test_error_kinds() -> None:
    assert error_kind(Unavailable("e:2379", "refused")) == "unavailable"
    assert error_kind(Unavailable("e:2379", "e:2379 did not answer within 2 s", timed_out=True)) == "timeout"
    assert error_kind(TlsError("e:2379", "certificate verify failed")) == "tls"
    assert error_kind(RegistryError("etcd refused a txn")) == "other"
    assert error_kind(LeaseLost(7)) is None  # answers about the data, not failures
    assert error_kind(Compacted(3, 9)) is None


def test_the_registry_tells_its_observer_of_each_request() -> None:
    metrics = Metrics("h1")
    registry = open_registry("memory://", observer=metrics.observe_request)
    lease = registry.grant(5)
    registry.refresh(lease)
    registry.txn([], [])
    registry.get(b"/k")
    registry.range(b"/")
    with pytest.raises(LeaseLost):
        registry.refresh(lease + 1)
    with pytest.raises(RegistryError):
        registry.grant(0)
    registry.revoke(lease)
    requests = "openrange_etcd_request_duration_seconds_count"
    for operation, count in [
        ("lease_grant", 2), ("lease_refresh", 2), ("txn", 1), ("get", 1), ("range", 1), ("lease_revoke", 1)
    ]:  # fmt: skip
        assert value(metrics, requests, operation=operation) == count, operation
    errors = "openrange_etcd_errors_total"
    assert value(metrics, errors, operation="lease_grant", kind="other") == 1
    assert value(metrics, errors, operation="lease_refresh", kind="other") == 0  # a lost lease is an answer
    metrics.observe_request("watch", 12.0, "unavailable")
    assert value(metrics, "openrange_etcd_watch_reconnects_total") == 1
    assert value(metrics, errors, operation="watch", kind="unavailable") == 1
    registry.close()


def test_a_refresh_held_up_by_a_busy_process_is_counted_late() -> None:
    """The keeper's thread wakes on time but must wait for the GIL: here behind a pure-Python
    loop that keeps it up to 0.3 s at a time once asked (the switch interval), as GIL-heavy work
    in a busy agent does for 5 ms at a time, again and again. Its delay is observed."""
    metrics = Metrics("h1")
    registry = open_registry("memory://")
    keeper = LeaseKeeper(registry, 5, interval=0.02, metrics=metrics)
    keeper.start()
    count, on_time = "openrange_lease_keepalive_delay_seconds_count", "openrange_lease_keepalive_delay_seconds_bucket"
    try:
        wait_until(lambda: value(metrics, count) >= 2, 5, interval=0.01, what="two refreshes")
        switch = sys.getswitchinterval()
        sys.setswitchinterval(0.3)
        try:
            busy_until = time.monotonic() + 0.7
            while time.monotonic() < busy_until:  # holds the GIL: no call here releases it
                pass
        finally:
            sys.setswitchinterval(switch)
        seen = value(metrics, count)
        wait_until(lambda: value(metrics, count) > seen, 5, interval=0.01, what="a refresh after the busy loop")
        late = value(metrics, count) - value(metrics, on_time, le="0.1")
        assert late >= 1, "no refresh was seen late behind the busy loop"
        assert value(metrics, "openrange_leases_lost_total") == 0
    finally:
        keeper.stop()
        registry.close()


def test_served_over_http() -> None:
    metrics = Metrics("h1")
    metrics.started.inc(2)
    server = metrics.serve(0, "127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    finally:
        stop_serving(server)
    assert "openrange_episodes_started_total 2.0" in text
    assert 'openrange_build_info{host="h1"' in text


def test_metrics_port_from_the_environment() -> None:
    assert Settings.load({}, env={"OPENRANGE_METRICS_PORT": "9464"}).metrics_port == 9464
    assert Settings.load({"metrics_port": 9465}, env={"OPENRANGE_METRICS_PORT": "9464"}).metrics_port == 9465
    assert Settings.load({}, env={}).metrics_port is None
    with pytest.raises(ConfigError):
        Settings(metrics_port=70000)


def test_a_metrics_port_taken_is_one_line_before_joining(tmp_path: Path) -> None:
    taken = socket.create_server(("0.0.0.0", 0))
    port = taken.getsockname()[1]
    try:
        argv = ["--etcd", "memory://", "--store", str(tmp_path), "--metrics-port", str(port), "--no-dashboard"]
        done = subprocess.run(
            [sys.executable, "-c", "from openrange_mesh.cli.agent import main; main()", *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        taken.close()
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"openrange-agent: cannot serve metrics on port {port}: "), done.stderr
    assert "Traceback" not in done.stderr and "joined" not in done.stderr
