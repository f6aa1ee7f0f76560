"""An agent's Prometheus metrics: every metric object, in a registry of the agent's own.

One ``CollectorRegistry`` per agent, not prometheus-client's global one, so a process (a test)
can hold several agents, each with its own counts. Parts of the agent are handed this object
and count on it; they never make metrics of their own. Labels come only from small fixed sets
(outcome, result, operation, kind), each child bound once here: ``.labels()`` costs a dict
lookup under a lock, and an id in a label would make a series per episode.

Per-episode cost on the agent's loop: an attempt that starts, ends and is committed costs two
counter increments and two histogram observations here, ~4 us (design/dashboard.md, "Metrics").

Threads: the loop thread counts episodes, claims and commits; the lease keeper its refreshes;
every thread that calls the registry its requests (``observe_request``); the HTTP server's
thread reads. prometheus-client's metrics take a lock of their own per update.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from http.server import HTTPServer
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from .. import __version__
from ..errors import ConfigError
from ..model import EpisodeRecord
from ..registry import ERROR_KINDS, OPERATIONS

# From a no-op episode (a millisecond) to a long rollout (a day), each bucket ~2.5 times the last:
# 21 buckets, so an observation scans few of them (prometheus-client looks for its bucket in order).
DURATION_BUCKETS = (
    0.001, 0.0025, 0.006, 0.015, 0.04, 0.1, 0.25, 0.6, 1.5, 4.0, 10.0,
    25.0, 60.0, 150.0, 400.0, 1000.0, 2500.0, 6000.0, 15000.0, 40000.0, 86400.0,
)  # fmt: skip
# A request to etcd: from a fast loopback answer (~0.2 ms) to a retry_timeout spent on an outage.
REQUEST_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

# An attempt's outcome as its record closes it (ledger.finish_attempt, release, give_back).
OUTCOMES = ("succeeded", "failed", "cancelled", "lost", "retried", "released")
# What a worker reported of an attempt (worker.Done.kind); anything else counts as failed, as the
# agent commits it.
RESULTS = ("succeeded", "failed", "cancelled", "timeout", "released")
CLAIM_RESULTS = ("won", "stolen", "lost")


class Metrics:
    def __init__(self, host: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Info("openrange_build", "The agent's version, Python and host id.", registry=r).info(
            {"version": __version__, "python": platform.python_version(), "host": host}
        )
        self.started = Counter("openrange_episodes_started_total", "Attempts this host started.", registry=r)
        finished = Counter(
            "openrange_episodes_finished_total",
            "Attempts of this host committed, by the outcome their record closed them with.",
            ["outcome"],
            registry=r,
        )
        self.finished = {o: finished.labels(o) for o in OUTCOMES}
        attempts = Counter(
            "openrange_attempts_total", "Attempts' ends as this host's workers reported them.", ["result"], registry=r
        )
        self.attempts = {x: attempts.labels(x) for x in RESULTS}
        self.duration = Histogram(
            "openrange_episode_duration_seconds",
            "An attempt's time from its claim to its result, for attempts of this host committed.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "openrange_episode_queue_wait_seconds",
            "An attempt's wait for this host's claim: since its episode was created, or its last attempt ended.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._mesh_counters(r)
        self._lease_and_etcd(r)

    def _mesh_counters(self, r: CollectorRegistry) -> None:
        claims = Counter(
            "openrange_claims_total",
            "Queue entries this host tried to claim: won (its own), stolen (won from a busy peer) or "
            "lost (a peer or a cancel got there first).",
            ["result"],
            registry=r,
        )
        self.claims = {x: claims.labels(x) for x in CLAIM_RESULTS}
        self.commits = Counter(
            "openrange_commits_total", "Fenced commits of a claim's results that etcd applied.", registry=r
        )
        self.stale_commits = Counter(
            "openrange_stale_commits_total",
            "Commits etcd refused by their fencing compare: the claim had expired or its episodes were taken over.",
            registry=r,
        )
        self.requeues = Counter(
            "openrange_requeues_total", "Episodes of dead hosts' claims this host put back.", registry=r
        )
        self.moves = Counter(
            "openrange_queue_moves_total",
            "Queue entries this host (as the leader) moved out of mailboxes nobody empties.",
            registry=r,
        )
        self.faults = Counter(
            "openrange_infrastructure_faults_total",
            "Infrastructure failures of this host: a worker that could not start, a store that failed.",
            registry=r,
        )
        self.leader_changes = Counter(
            "openrange_leader_changes_total", "Times this host saw the mesh's leader change.", registry=r
        )
        self._running = Gauge("openrange_episodes_running", "Episodes this host holds now.", registry=r)
        self._capacity = Gauge("openrange_capacity", "Worker processes of this host.", registry=r)
        self._is_leader = Gauge("openrange_is_leader", "1 while this host is the mesh's leader.", registry=r)
        self._is_sick = Gauge(
            "openrange_host_sick", "1 while this host drains itself after infrastructure failures.", registry=r
        )

    def _lease_and_etcd(self, r: CollectorRegistry) -> None:
        self.lease_refresh = Histogram(
            "openrange_lease_refresh_duration_seconds",
            "Refreshes of this host's lease that etcd answered, retries included.",
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.keepalive_delay = Histogram(
            "openrange_lease_keepalive_delay_seconds",
            "How late the lease keeper sent each scheduled refresh of this host's lease: from when it "
            "was due to when its thread ran (a busy process's threads wait for the GIL).",
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.lease_refresh_failures = Counter(
            "openrange_lease_refresh_failures_total", "Refreshes of this host's lease etcd did not answer.", registry=r
        )
        self.leases_lost = Counter(
            "openrange_leases_lost_total", "Times etcd said this host's lease had expired.", registry=r
        )
        requests = Histogram(
            "openrange_etcd_request_duration_seconds",
            "Requests to etcd (each attempt of a retried call), answered or not, by operation.",
            ["operation"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self._requests = {op: requests.labels(op) for op in OPERATIONS if op != "watch"}
        errors = Counter(
            "openrange_etcd_errors_total",
            "Requests to etcd that failed, by operation and kind.",
            ["operation", "kind"],
            registry=r,
        )
        self._errors = {(op, kind): errors.labels(op, kind) for op in OPERATIONS for kind in ERROR_KINDS}
        self._reconnects = Counter(
            "openrange_etcd_watch_reconnects_total", "Times a watch stream broke and was opened again.", registry=r
        )

    # --- what parts of the agent call -------------------------------------------------------

    def track(
        self,
        *,
        running: Callable[[], float],
        capacity: Callable[[], float],
        is_leader: Callable[[], float],
        is_sick: Callable[[], float],
    ) -> None:
        """Gauges read at scrape time from the parts that own the facts: nothing to update."""
        self._running.set_function(running)
        self._capacity.set_function(capacity)
        self._is_leader.set_function(is_leader)
        self._is_sick.set_function(is_sick)

    def attempt_started(self, record: EpisodeRecord) -> None:
        """A running record this host just claimed."""
        self.started.inc()
        history = record.history
        since = history[-2].finished_at if len(history) > 1 else record.created_at
        if record.started_at is not None and since:
            self.queue_wait.observe(max(record.started_at - since, 0.0))

    def attempt_committed(self, record: EpisodeRecord) -> None:
        """A record whose attempt of this host etcd took (its commit landed)."""
        attempt = record.history[-1] if record.history else None
        if attempt is None:
            return
        counter = self.finished.get(attempt.outcome or "")
        if counter is not None:
            counter.inc()
        if attempt.finished_at is not None:
            self.duration.observe(max(attempt.finished_at - attempt.started_at, 0.0))

    def attempt_reported(self, kind: str) -> None:
        counter = self.attempts.get(kind)
        (counter if counter is not None else self.attempts["failed"]).inc()

    def observe_request(self, operation: str, seconds: float, kind: str | None) -> None:
        """The registry's observer (registry/base.py)."""
        if operation == "watch":
            self._reconnects.inc()
        else:
            histogram = self._requests.get(operation)
            if histogram is not None:
                histogram.observe(seconds)
        if kind is not None:
            counter = self._errors.get((operation, kind))
            if counter is not None:
                counter.inc()

    def serve(self, port: int, address: str) -> WSGIServer:
        """``/metrics`` over HTTP on ``address:port`` (0: a free port; ``server_port`` says which)
        from a daemon thread: it costs nothing until scraped. Raises ``OSError``."""
        server, _ = start_http_server(port, addr=address, registry=self.registry)
        return server


def stop_serving(server: HTTPServer) -> None:
    server.shutdown()
    server.server_close()


class MetricsEndpoints:
    """``/metrics`` on a free loopback port for the dashboard child to proxy (``port``), and on
    ``public_port`` on every interface if set, for scrapers that come without the dashboard.
    Threads: the agent's loop starts and stops them; each server has a daemon thread."""

    def __init__(self, metrics: Metrics, public_port: int | None) -> None:
        self.metrics = metrics
        self.public_port = public_port
        self.port: int | None = None  # the loopback one, once started
        self._servers: list[WSGIServer] = []

    def start(self) -> None:
        """Raises ``ConfigError`` when ``public_port`` is taken."""
        self._servers.append(self.metrics.serve(0, "127.0.0.1"))
        self.port = self._servers[0].server_port
        if self.public_port is None:
            return
        try:
            self._servers.append(self.metrics.serve(self.public_port, "0.0.0.0"))
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on port {self.public_port}: {exc.strerror or exc}") from exc

    def stop(self) -> None:
        for server in self._servers:
            stop_serving(server)
        self._servers.clear()
