"""``openrange-agent``: the one process every host runs.

Threads: the main loop (claims, commits, requeues, timeouts, leadership, and reading its
workers' results), two watch threads (the queue, and the control keys) that turn etcd events
into work for the loop, and the lease keeper. The loop sleeps up to ``loop_wait`` in one select
on its workers and a waker, and runs early on a watch event or a finished episode, so claiming
is watch-driven, never a busy poll. A pass is a list of named steps; each returns
a status line (or None) that the pass logs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from wsgiref.simple_server import WSGIServer

from ..config import Settings
from ..dashboard.config import DashboardConfig
from ..dashboard.process import DashboardProcess
from ..errors import Compacted, ConfigError, MeshError, RegistryError, StoreError
from ..keys import Keys
from ..ledger.catalog import Catalog
from ..ledger.homes import Versioned
from ..ledger.ledger import Ledger
from ..ledger.queue import QueueEntry
from ..ledger.records import claim_episode_ids
from ..model import EpisodeRecord
from ..registry import Registry, open_registry
from ..registry.follow import Follower
from ..store import Store, open_store
from ..store.probe import probe
from ..worker.pool import WorkerPool
from .health import Health
from .leadership import Leadership
from .lease import LeaseKeeper
from .metrics import Metrics, stop_serving
from .state import DeadHost, Held, Waker
from .watching import Watching

log = logging.getLogger(__name__)

KILL_GRACE = 5.0  # seconds past a timeout before the agent kills a worker that did not stop


class Agent(Watching):
    """The agent: joining (agent/joining.py), claiming (claiming.py), committing (committing.py)
    and watching (watching.py) are mixins over the shared state in agent_state.py; this class
    owns the loop, the lease step, requeues of dead hosts' work, cancels and timeouts."""

    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        self.settings = settings
        self.host = settings.host_id
        self.metrics = Metrics(self.host)
        self.metrics_port: int | None = None  # /metrics on 127.0.0.1, for the dashboard child (set by run())
        self._metrics_servers: list[WSGIServer] = []
        self.registry = registry or open_registry(settings.registry, retry_timeout=settings.retry_timeout)
        if self.registry.observer is None:
            self.registry.observer = self.metrics.observe_request
        self.keys = Keys(settings.namespace)
        self.ledger = Ledger(self.registry, self.keys)
        self.catalog = Catalog(self.registry, self.keys)
        self.lease = LeaseKeeper(
            self.registry, settings.ttl, interval=settings.loop_wait, on_renewed=self._renewed, metrics=self.metrics
        )
        self._waker = Waker()
        self.health = Health()
        self.pool = WorkerPool(settings.capacity, settings.store, waker=self._waker, on_fault=self._on_fault)
        self._store: Store | None = None  # opened by run(), for the store checks
        self.dashboard = (
            DashboardProcess(DashboardConfig.of(settings), settings.dashboard_url) if settings.dashboard else None
        )
        self.dashboard_url = ""
        self.queue_follower = Follower(self.registry, self.keys.queue(), puts_only=True, on_relist=self._load_queue)
        self.followers = [
            self.queue_follower,
            Follower(self.registry, self.keys.control(), prev_kv=True, on_relist=self._on_relist),
        ]
        self.leadership = Leadership(self)
        self._stop = threading.Event()
        self._draining = False
        self._drain_deadline = 0.0
        self._held: dict[str, Held] = {}
        self._owner_of: dict[str, str] = {}  # episode id -> claim id
        self._dead_hosts: queue.SimpleQueue[DeadHost] = queue.SimpleQueue()
        self._cancels: set[str] = set()
        self._cancel_seen: set[str] = set()
        self._live_leases: dict[str, int] = {}  # host -> lease, from the hosts/ prefix
        self._weights: dict[str, float] = {}
        self._free: dict[str, int] = {}
        self._arrivals: dict[str, int] = {}
        self._queue: dict[str, QueueEntry] = {}  # the entries we own, oldest first, fed by the watch
        self._queue_relist = False
        self._others_at = 0
        self._looked_at = 0
        self._steal_wanted = False
        self._stolen_at = 0.0
        self._unclaimable: dict[bytes, int] = {}
        self._carried: dict[str, tuple[int, dict[str, Versioned] | None]] = {}  # see Claiming._embedded
        self._claims_unsure = False  # a claim txn got no answer: it may hold episodes we do not know
        self._started_at = time.time()  # for the host record
        self._host_written = (0, 0.0)
        self._outage = False
        self._events_lock = threading.Lock()
        self._watch_threads = [
            threading.Thread(target=self._watch_loop, args=(f,), name=f"watch-{i}", daemon=True)
            for i, f in enumerate(self.followers)
        ]
        self.metrics.track(
            running=lambda: len(self._owner_of),
            capacity=lambda: settings.capacity,
            is_leader=lambda: self.leadership.is_leader,
            is_sick=lambda: self.health.is_sick,
        )

    # --- public ------------------------------------------------------------------------------

    def drain(self, grace: float = 30.0) -> None:
        """Stop claiming; finish or hand back running episodes within ``grace``; then exit."""
        if not self._draining:
            log.info("draining: no new claims; %d episodes get %.0f s to finish", len(self._owner_of), grace)
        self._draining = True
        self._drain_deadline = time.monotonic() + grace
        self._host_written = (-1, 0.0)  # say so in the host record on the next pass: peers take our queue entries
        self.wake()

    def stop(self) -> None:
        self._stop.set()
        self.wake()

    @property
    def running(self) -> int:
        return len(self._owner_of)

    def run(self) -> None:
        """Serve metrics, check the store, start the dashboard child, join the mesh and run until
        stopped or drained. A store that fails its check, or a port taken, raises before anything
        is joined."""
        try:
            self._serve_metrics()
            self._check_store()
            if self.dashboard is not None:  # it proxies /metrics to our loopback port
                self.dashboard.config = replace(self.dashboard.config, metrics_port=self.metrics_port)
                self.dashboard_url = self.dashboard.start()  # before joining: records and the leader key name it
            self._join()
        except BaseException:
            self._stop_metrics()
            if self.dashboard is not None:  # dies with this process anyway; an embedder's lives on
                self.dashboard.stop()
            raise
        self.pool.start()
        for thread in self._watch_threads:
            thread.start()
        try:
            while not self._stop.is_set():
                self._pass()
                if self._draining and (not self._held or time.monotonic() >= self._drain_deadline):
                    self._hand_back()
                    self._last_report()
                    break
                self._idle(self._wait_time())
        finally:
            self._shutdown()

    def _idle(self, timeout: float) -> None:
        """Wait until a pass is due: a wake-up (a watch event, a signal), news from a worker that
        asks for one, or ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.pool.wait(deadline - time.monotonic()):
            if time.monotonic() >= deadline:
                return
        self._waker.clear()

    # --- joining -----------------------------------------------------------------------------

    def _join(self) -> None:
        self._retire_predecessor()
        self._register()
        revision = self._load_hosts(None)
        self._load_queue(revision)
        for follower in self.followers:
            follower.start(revision)
        log.info(
            "joined namespace %s as %s (lease %x, capacity %d)",
            self.keys.namespace,
            self.host,
            self.lease.lease,
            self.settings.capacity,
        )

    # --- the loop ----------------------------------------------------------------------------

    def _pass(self) -> None:
        steps: list[Callable[[], str | None]] = [
            self._step_lease,
            self._step_results,
            self._step_orphans,
            self._step_cancels,
            self._step_timeouts,
            self._step_health,
            self._step_claim,
            self._step_host,
            self.leadership.step,
        ]
        try:
            for step in steps:
                line = step()
                if line:
                    log.info("%s", line)
        except RegistryError as exc:
            if not self._outage:
                log.exception("registry trouble; episodes keep running, results wait for etcd")
                self._outage = True
            else:
                log.warning("registry still unavailable: %s", exc)
            return
        if self._outage:
            log.info("registry reachable again")
            self._outage = False

    def _step_lease(self) -> str | None:
        """Past the local estimate the lease may have expired: ask etcd, and stop our episodes
        only if it says the lease is gone (lease.py). While etcd cannot answer, ``confirm``
        raises and the pass ends there: nothing is claimed or committed, episodes keep running
        and their results wait."""
        if self.lease.is_alive or self.lease.confirm():
            return None
        lost = len(self._owner_of)
        if self._held or self.pool.idle() < self.pool.size:  # once: a failed _register repeats this step
            self.pool.reset()  # their results would be fenced: etcd deleted our claim keys
        self._held.clear()
        self._owner_of.clear()
        self._claims_unsure = False  # whatever that claim was, it went with the lease
        self._register()
        return f"lost lease, stopped {lost} episodes; rejoined with lease {self.lease.lease:x}"

    def _last_report(self) -> None:
        """A draining leader leaves the run report in the store (dashboard/report.py), as its
        server does every ``report_interval`` while it leads."""
        if not (self.leadership.is_leader and self._store is not None and self.settings.report_interval):
            return
        from ..dashboard.report import write_report  # the report's modules: only now

        try:
            write_report(self.registry, self.keys, self._store)
        except MeshError as exc:
            log.warning("could not write the run report at the drain: %s", exc)

    def _renewed(self, expires_at: float) -> None:
        """From the lease keeper's thread: the dashboard may serve until then (if we lead)."""
        if self.dashboard is not None:
            self.dashboard.serving.lease_lives_until(expires_at)

    def _serve_metrics(self) -> None:
        """``/metrics`` on a free loopback port for the dashboard child to proxy
        (``metrics_port``), and on ``settings.metrics_port`` on every interface if set, for
        scrapers that come without the dashboard."""
        self._metrics_servers.append(self.metrics.serve(0, "127.0.0.1"))
        self.metrics_port = self._metrics_servers[0].server_port
        port = self.settings.metrics_port
        if port is None:
            return
        try:
            self._metrics_servers.append(self.metrics.serve(port, "0.0.0.0"))
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on port {port}: {exc.strerror or exc}") from exc

    def _stop_metrics(self) -> None:
        for server in self._metrics_servers:
            stop_serving(server)
        self._metrics_servers.clear()

    def _check_store(self) -> None:
        """Write, read back and delete a probe (store/probe.py): a store that cannot be opened
        or written is found here, once, not by every worker at every episode."""
        if not self.settings.store:
            return
        try:
            self._store = self._store or open_store(self.settings.store)
            probe(self._store)
        except StoreError as exc:
            raise StoreError(f"store check failed: {exc}") from exc

    def _on_fault(self, reason: str) -> None:
        """An infrastructure failure, from the pool (loop thread)."""
        self.metrics.faults.inc()
        if self.health.fault(reason):
            log.warning("draining itself: %s; claims again once its checks pass", reason)
            self._host_written = (-1, 0.0)  # say so in the host record now: peers take our entries
            self.wake()

    def _step_health(self) -> str | None:
        """A sick host rechecks itself now and then: its store, and a worker that starts."""
        if not self.health.recheck_due():
            return None
        try:
            self._check_store()
            problem = None if self.pool.started() else "no worker could start"
        except StoreError as exc:
            problem = str(exc)
        if not self.health.rechecked(problem):
            return f"still draining itself: {problem}"
        self._host_written = (-1, 0.0)  # our weight is back: peers give us our share again
        return "checks pass again: claiming"

    def _step_orphans(self) -> str | None:
        requeued: list[str] = []
        while True:
            try:
                dead = self._dead_hosts.get_nowait()
            except queue.Empty:
                break
            try:
                requeued += self._requeue_claims_of(dead)
            except RegistryError:
                self._dead_hosts.put(dead)  # idempotent: try again next pass, or nobody would
                raise
        self.metrics.requeues.inc(len(requeued))
        return f"requeued {len(requeued)} episodes of dead hosts" if requeued else None

    def _requeue_claims_of(self, dead: DeadHost) -> list[str]:
        """Put back the episodes of a dead host's claims: its lease took its host key and its
        claim keys in one revision, so they are read at the one before. Every peer does this;
        the first requeue wins, the others' compares fail."""
        try:
            claims = self.registry.range(self.keys.host_claims(dead.host), revision=dead.revision - 1)
        except Compacted:
            self.leadership.sweep_due = True  # that revision is gone: the sweep finds them
            return []
        requeued: list[str] = []
        for kv in claims.kvs:
            if kv.lease == dead.lease:
                claim_id = self.keys.name_of(kv.key, self.keys.host_claims(dead.host))
                reason = f"host {dead.host} lost its lease"
                requeued += self.ledger.requeue(dead.host, claim_id, claim_episode_ids(kv), reason, kv.create_revision)
        return requeued

    def _step_cancels(self) -> str | None:
        with self._events_lock:
            cancels, self._cancels = self._cancels, set()
        hit = [episode_id for episode_id in cancels if episode_id in self._owner_of and self.pool.cancel(episode_id)]
        self._cancel_seen.update(hit)  # their commit deletes the marker
        return f"cancelling {len(hit)} episodes" if hit else None

    def _step_timeouts(self) -> str | None:
        now = time.monotonic()
        killed = []
        for activity in self.pool.running().values():
            record = self._record_of(activity.episode_id)
            if record is None:
                continue
            spec = record.spec
            if spec.timeout is not None and now - activity.started_at > spec.timeout + KILL_GRACE:
                reason = f"timed out after {spec.timeout:g} s (runtime did not stop; worker killed)"
            elif spec.progress_timeout is not None and now - activity.progress_at > spec.progress_timeout + KILL_GRACE:
                reason = f"no progress for {spec.progress_timeout:g} s (worker killed)"
            else:
                continue
            if self.pool.kill(activity.episode_id, reason):
                killed.append(activity.episode_id)
        return f"killed stuck workers of {', '.join(killed)}" if killed else None

    def _record_of(self, episode_id: str) -> EpisodeRecord | None:
        claim_id = self._owner_of.get(episode_id)
        held = self._held.get(claim_id) if claim_id else None
        return held.records.get(episode_id) if held else None

    # --- leaving -----------------------------------------------------------------------------

    def _shutdown(self) -> None:
        self._stop.set()  # the watch thread must be gone before the registry closes under it
        for thread in self._watch_threads:
            if thread.is_alive():
                thread.join(5)
        for follower in self.followers:
            follower.close()
        self.pool.close()
        if self.dashboard is not None:
            self.dashboard.serving.lead(False)
            self.dashboard.stop()
        self.lease.stop(revoke=True)
        self.registry.close()
        self._stop_metrics()

    # --- the watch thread --------------------------------------------------------------------
