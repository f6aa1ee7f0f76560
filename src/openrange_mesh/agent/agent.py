"""``openrange-agent``: the one process every host runs.

Threads: the loop (claims, commits, requeues, timeouts, leadership, and reading its workers'
results), two watch threads (agent/watcher.py) that turn etcd events into what the parts know,
and the lease keeper. The loop sleeps up to ``loop_wait`` in one select on its workers and a
waker, and runs early on a watch event or a finished episode, so claiming is watch-driven, never
a busy poll. A pass is a list of named steps (``steps``); each returns a status line (or None)
that the pass logs.

Everything the agent knows lives in parts that own it (agent/parts.py, design/agent-parts.md):
``OwnedQueue`` (the entries it owns), ``Peers`` (their backlog signs), ``Inbox`` (cancels, dead
hosts), ``Holdings`` (its claims), ``HostRecord``, ``Leadership``; ``Claimer``, ``Committer``,
``Orphans``, ``Stopper``, ``SelfCheck`` and ``Watcher`` act on them. ``Agent`` owns the loop and
its steps, draining and stopping, and what a lost lease means.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from .. import meshstore
from ..config import Settings
from ..dashboard.config import DashboardConfig
from ..dashboard.process import DashboardProcess
from ..errors import RegistryError
from ..keys import Keys
from ..registry import Registry, open_registry
from ..worker.pool import Pool, WorkerPool
from .collector import Collector
from .health import Health
from .lease import LeaseKeeper
from .metrics import Metrics, MetricsEndpoints
from .parts import assemble
from .waker import Waker

log = logging.getLogger(__name__)

BACKOFF_MIN = 0.05  # seconds before the pass after a failed one; doubling up to loop_wait
OUTAGE_LOG_EVERY = 10.0  # seconds between "still unavailable" lines while etcd keeps refusing

# Builds an agent's pool from its settings, its loop's waker (the pool's ``wait`` returns when
# it is set) and where infrastructure faults go.
MakePool = Callable[[Settings, Waker, Callable[[str], None]], Pool]


def worker_pool(settings: Settings, waker: Waker, on_fault: Callable[[str], None]) -> Pool:
    """The agent's own: ``settings.capacity`` worker processes."""
    cache = (settings.cache_dir, settings.cache_size)
    return WorkerPool(settings.capacity, settings.store, waker=waker, on_fault=on_fault, cache=cache)


class Agent:
    """Its own state: whether it drains and until when, whether etcd is out, whether to stop.
    The loop thread runs it; ``drain`` and ``stop`` may come from any thread or a signal
    handler (each sets a flag and wakes the loop)."""

    def __init__(self, settings: Settings, registry: Registry | None = None, make_pool: MakePool = worker_pool) -> None:
        self.host = settings.host_id
        self.metrics = Metrics(self.host)
        self.registry = registry or open_registry(settings.registry, retry_timeout=settings.retry_timeout)
        if self.registry.observer is None:
            self.registry.observer = self.metrics.observe_request
        self.keys = Keys(settings.namespace)
        # One store per mesh (meshstore.py): given none, the mesh's; checked in run()
        settings = replace(settings, store=settings.store or meshstore.recorded_url(self.registry, self.keys))
        self.settings = settings
        self.lease = LeaseKeeper(
            self.registry, settings.ttl, interval=settings.loop_wait, on_renewed=self._renewed, metrics=self.metrics
        )
        self._waker = Waker()
        self.health = Health()
        self.pool = make_pool(settings, self._waker, lambda why: self.parts.selfcheck.fault(why))
        self.dashboard = (
            DashboardProcess(DashboardConfig.of(settings), settings.dashboard_url, self.registry.share_answers())
            if settings.dashboard
            else None
        )
        self._endpoints = MetricsEndpoints(self.metrics, settings.metrics_port)
        self._stop = threading.Event()
        self._draining = False
        self._drain_deadline = 0.0
        self._outage: float | None = None  # monotonic time a pass first met a registry error
        self._backoff = 0.0  # seconds the loop waits at least before the pass after a failed one
        self._said_at = -OUTAGE_LOG_EVERY  # monotonic time "still unavailable" was last logged
        self.parts = assemble(
            settings,
            self.registry,
            lease=self.lease,
            pool=self.pool,
            health=self.health,
            metrics=self.metrics,
            draining=lambda: self._draining,
            wake=self.wake,
            url=lambda: self.dashboard_url,
            serving=self.dashboard.serving if self.dashboard is not None else None,
        )
        self.leadership = self.parts.leadership
        self.metrics.track(
            running=lambda: self.running,
            capacity=lambda: settings.capacity,
            is_leader=lambda: self.leadership.is_leader,
            is_sick=lambda: self.health.is_sick,
        )
        parts = self.parts
        self.steps: list[Callable[[], str | None]] = [
            self._step_lease,
            parts.committer.step,  # results: commit what finished, claim for the workers it frees
            parts.orphans.step,
            parts.stopper.step_cancels,
            parts.stopper.step_timeouts,
            parts.selfcheck.step,
            parts.claimer.step,
            parts.host_record.step,
            parts.leadership.step,
            parts.mover.step,
        ]

    # --- public ------------------------------------------------------------------------------

    @property
    def running(self) -> int:
        return self.parts.holdings.running

    @property
    def metrics_port(self) -> int | None:
        """``/metrics`` on 127.0.0.1, for the dashboard child (once ``run`` started serving)."""
        return self._endpoints.port

    @property
    def dashboard_url(self) -> str:
        """Its dashboard's URL once started; "" without one."""
        return self.dashboard.url if self.dashboard is not None else ""

    def wake(self) -> None:
        self._waker.set()

    def drain(self, grace: float = 30.0) -> None:
        """Stop claiming; finish or hand back running episodes within ``grace``; then exit."""
        if not self._draining:
            log.info("draining: no new claims; %d episodes get %.0f s to finish", self.running, grace)
        self._draining = True
        self._drain_deadline = time.monotonic() + grace
        self.parts.host_record.changed()  # say so in the host record on the next pass: peers take our queue entries
        self.wake()

    def stop(self) -> None:
        self._stop.set()
        self.wake()

    def run(self) -> None:
        """Serve metrics, check the store, start the dashboard child, join the mesh and run until
        stopped or drained. A store that fails its check, or a port taken, raises before anything
        is joined."""
        try:
            self._endpoints.start()
            self.parts.selfcheck.check_store()
            meshstore.join(self.registry, self.keys, self.parts.selfcheck.store)  # the mesh's one store, or refused
            if self.dashboard is not None:  # it proxies /metrics to our loopback port
                self.dashboard.config = replace(self.dashboard.config, metrics_port=self.metrics_port)
                self.dashboard.start()  # before joining: records and the leader key name its URL
            self._join()
        except BaseException:
            self._endpoints.stop()
            if self.dashboard is not None:  # dies with this process anyway; an embedder's lives on
                self.dashboard.stop()
            raise
        self.pool.start()
        self.parts.watcher.start()
        self.parts.mover.start()
        collector = self._collector()
        collector.start()
        try:
            while not self._stop.is_set():
                self._pass()
                if self._draining and (not self._holds_anything() or time.monotonic() >= self._drain_deadline):
                    self.parts.committer.hand_back()
                    self.leadership.last_report(self.parts.selfcheck.store, self.settings.report_interval)
                    break
                self._idle(self._wait_time(), self._backoff)
        finally:
            collector.stop()
            self._shutdown()

    # --- the loop ----------------------------------------------------------------------------

    def _join(self) -> None:
        self.parts.host_record.retire_predecessor()
        self.parts.host_record.register()
        self.parts.watcher.join()
        log.info(
            "joined namespace %s as %s (lease %x, capacity %d)",
            self.keys.namespace,
            self.host,
            self.lease.lease,
            self.settings.capacity,
        )

    def _pass(self) -> None:
        try:
            for step in self.steps:
                line = step()
                if line:
                    log.info("%s", line)
        except RegistryError as exc:
            # Not asked again at once: a refusal comes back in a millisecond (a full etcd), and a
            # pass a millisecond later, woken by the results it could not commit, asked again
            self._backoff = min(max(2 * self._backoff, BACKOFF_MIN), self.settings.loop_wait)
            now = time.monotonic()
            if self._outage is None:
                # One line: an outage is the weather, not a bug (its traceback at --log-level debug)
                log.warning("registry unavailable: %s; episodes keep running, results wait for etcd", exc)
                log.debug("the registry error", exc_info=True)
                self._outage = self._said_at = now
            elif now - self._said_at >= OUTAGE_LOG_EVERY:
                log.warning("registry still unavailable: %s", exc)
                self._said_at = now
            return
        self._backoff = 0.0
        # A pass that asked etcd nothing proves nothing: the outage ends once etcd has answered
        # a lease refresh sent after it began (an idle pass used to end it, and the next
        # failure logged its traceback again)
        if self._outage is not None and self.lease.expires_at - self.settings.ttl > self._outage:
            log.info("registry reachable again")
            self._outage = None

    def _idle(self, timeout: float, floor: float = 0.0) -> None:
        """Wait until a pass is due: a wake-up (a watch event, a signal), news from a worker that
        asks for one, or ``timeout``; but not before ``floor`` seconds unless stopping (workers'
        news is still read meanwhile: what it asked for, the next pass does)."""
        now = time.monotonic()
        earliest, deadline = now + floor, now + max(timeout, floor)
        while True:
            woken = self.pool.wait(deadline - time.monotonic())
            now = time.monotonic()
            if woken and (now >= earliest or self._stop.is_set()):
                break
            if now >= deadline:
                return
            if woken:
                self._waker.clear()
        self._waker.clear()

    def _holds_anything(self) -> bool:
        """Claims held, or maybe held: a claim txn's answer was lost, and until the claim step
        has looked (and released what it found), etcd may hold claims of ours we do not know."""
        holdings = self.parts.holdings
        return holdings.has_claims or holdings.claims_unsure

    def _wait_time(self) -> float:
        """Until the next commit falls due, a steal read may be made (with idle workers), or the
        leader's sweep has its next slice due."""
        steal_at = self.parts.claimer.steal_at() if self.parts.peers.steal_wanted and self.pool.idle() else None
        slice_at = self.parts.leadership.next_slice_at()
        due = [t for t in (self.parts.holdings.next_commit_at(), steal_at, slice_at) if t is not None]
        if not due:
            return self.settings.loop_wait
        return max(0.0, min(self.settings.loop_wait, min(due) - time.monotonic()))

    def _step_lease(self) -> str | None:
        """Past the local estimate the lease may have expired: ask etcd, and stop our episodes
        only if it says the lease is gone (lease.py). While etcd cannot answer, ``confirm``
        raises and the pass ends there: nothing is claimed or committed, episodes keep running
        and their results wait. A rejoin whose host record did not land (its txn raised) is
        tried again before anything else: until peers see our key, nothing is claimed."""
        host_record = self.parts.host_record
        if self.lease.is_alive or self.lease.confirm():
            if host_record.is_registered:
                return None
            host_record.create()
            return f"rejoined with lease {self.lease.lease:x}"
        lost = self.running
        if self.parts.holdings.has_claims or self.pool.idle() < self.pool.size:  # once: a failed grant repeats this
            self.pool.reset()  # their results would be fenced: etcd deleted our claim keys
        self.parts.holdings.clear()
        host_record.register()
        return f"lost lease, stopped {lost} episodes; rejoined with lease {self.lease.lease:x}"

    def _collector(self) -> Collector:
        """The leader's store collection (while this agent leads, every store_gc_interval)."""
        settings = self.settings
        leading = lambda: self.leadership.is_leader  # noqa: E731 - read by the collector's thread
        store = self.parts.selfcheck.store
        return Collector(self.registry, self.keys, store, leading, settings.store_gc_interval, settings.store_grace)

    def _renewed(self, expires_at: float) -> None:
        """From the lease keeper's thread: the dashboard may serve until then (if we lead)."""
        if self.dashboard is not None:
            self.dashboard.serving.lease_lives_until(expires_at)

    # --- leaving -----------------------------------------------------------------------------

    def _shutdown(self) -> None:
        self._stop.set()
        self.parts.watcher.close()  # its threads must be gone before the registry closes under them
        self.parts.mover.close()
        self.pool.close()
        if self.dashboard is not None:
            self.dashboard.serving.lead(False)
            self.dashboard.stop()
        self.lease.stop(revoke=True)
        self.registry.close()
        self._endpoints.stop()
