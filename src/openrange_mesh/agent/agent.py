"""``openrange-agent``: the one process every host runs.

Threads: the loop (claims, commits, requeues, timeouts, leadership, and reading its workers'
results), two watch threads (agent/watcher.py) that turn etcd events into what the parts know,
and the lease keeper. The loop sleeps up to ``loop_wait`` in one select on its workers and a
waker, and runs early on a watch event or a finished episode, so claiming is watch-driven, never
a busy poll. A pass is a list of named steps (``steps``); each returns a status line (or None)
that the pass logs.

Everything the agent knows lives in parts that own it (design/agent-parts.md): ``OwnedQueue``
(the entries it owns), ``Peers`` (their backlog signs), ``Inbox`` (cancels, dead hosts),
``Holdings`` (its claims), ``HostRecord``, ``Leadership``; ``Claimer``, ``Committer``,
``Orphans``, ``Stopper`` and ``Watcher`` act on them. ``Agent`` builds them, giving each what
it uses, and owns the loop, draining and stopping, and what a lost lease means.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from ..config import Settings
from ..dashboard.config import DashboardConfig
from ..dashboard.process import DashboardProcess
from ..errors import RegistryError
from ..keys import Keys
from ..ledger.catalog import Catalog
from ..ledger.ledger import Ledger
from ..registry import Registry, open_registry
from ..worker.pool import WorkerPool
from .claimer import Claimer
from .committer import Committer
from .health import Health
from .holdings import Holdings
from .host_record import HostRecord
from .inbox import Inbox
from .leadership import Leadership
from .lease import LeaseKeeper
from .metrics import Metrics, MetricsEndpoints
from .orphans import Orphans
from .owned import OwnedQueue
from .peers import Peers
from .selfcheck import SelfCheck
from .stopper import Stopper
from .waker import Waker
from .watcher import Watcher

log = logging.getLogger(__name__)


class Agent:
    """Its own state: whether it drains and until when, whether etcd is out, whether to stop.
    The loop thread runs it; ``drain`` and ``stop`` may come from any thread or a signal
    handler (each sets a flag and wakes the loop)."""

    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        self.settings = settings
        self.host = settings.host_id
        self.metrics = Metrics(self.host)
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
        self.pool = WorkerPool(
            settings.capacity, settings.store, waker=self._waker, on_fault=lambda reason: self.selfcheck.fault(reason)
        )
        self.dashboard = (
            DashboardProcess(DashboardConfig.of(settings), settings.dashboard_url) if settings.dashboard else None
        )
        self._endpoints = MetricsEndpoints(self.metrics, settings.metrics_port)
        self._stop = threading.Event()
        self._draining = False
        self._drain_deadline = 0.0
        self._outage = False
        self._build_parts()
        self.metrics.track(
            running=lambda: self.holdings.running,
            capacity=lambda: settings.capacity,
            is_leader=lambda: self.leadership.is_leader,
            is_sick=lambda: self.health.is_sick,
        )
        self.steps: list[Callable[[], str | None]] = [
            self._step_lease,
            self.committer.step,  # results: commit what finished, claim for the workers it frees
            self.orphans.step,
            self.stopper.step_cancels,
            self.stopper.step_timeouts,
            self.selfcheck.step,
            self.claimer.step,
            self.host_record.step,
            self.leadership.step,
        ]

    def _build_parts(self) -> None:
        settings, registry, keys = self.settings, self.registry, self.keys
        self.holdings = Holdings()
        self.inbox = Inbox()
        self.peers = Peers(self.host)
        self.owned = OwnedQueue(self.host, keys, own_weight=lambda: 0 if self._takes_no_work() else settings.capacity)
        self.host_record = HostRecord(
            settings,
            registry,
            keys,
            self.lease,
            running=lambda: self.holdings.running,
            takes_no_work=self._takes_no_work,
            reason=lambda: self.health.reason,
            url=lambda: self.dashboard_url,
        )
        self.leadership = Leadership(
            self.host,
            registry,
            keys,
            self.lease,
            self.catalog,
            self.ledger,
            self.metrics,
            ttl=settings.ttl,
            retention=settings.retention,
            draining=lambda: self._draining,
            url=lambda: self.dashboard_url,
            serving=self.dashboard.serving if self.dashboard is not None else None,
        )
        actors = (self.host, registry, keys, self.ledger, self.lease, self.pool)  # what claims and commits use
        self.claimer = Claimer(
            *actors,
            owned=self.owned,
            peers=self.peers,
            holdings=self.holdings,
            host_record=self.host_record,
            metrics=self.metrics,
            takes_no_work=self._takes_no_work,
            wake=self.wake,
        )
        self.committer = Committer(
            *actors,
            holdings=self.holdings,
            claimer=self.claimer,
            host_record=self.host_record,
            metrics=self.metrics,
            draining=lambda: self._draining,
        )
        self.orphans = Orphans(registry, keys, self.ledger, self.inbox, self.leadership, self.metrics)
        self.stopper = Stopper(self.pool, self.holdings, self.inbox)
        self.selfcheck = SelfCheck(settings.store, self.health, self.pool, self.host_record, self.metrics, self.wake)
        self.watcher = Watcher(
            registry,
            keys,
            self.catalog,
            owned=self.owned,
            peers=self.peers,
            inbox=self.inbox,
            leadership=self.leadership,
            wake=self.wake,
        )

    # --- public ------------------------------------------------------------------------------

    @property
    def running(self) -> int:
        return self.holdings.running

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
        self.host_record.changed()  # say so in the host record on the next pass: peers take our queue entries
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
            self.selfcheck.check_store()
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
        self.watcher.start()
        try:
            while not self._stop.is_set():
                self._pass()
                if self._draining and (not self.holdings.has_claims or time.monotonic() >= self._drain_deadline):
                    self.committer.hand_back()
                    self.leadership.last_report(self.selfcheck.store, self.settings.report_interval)
                    break
                self._idle(self._wait_time())
        finally:
            self._shutdown()

    # --- the loop ----------------------------------------------------------------------------

    def _join(self) -> None:
        self.host_record.retire_predecessor()
        self.host_record.register()
        self.watcher.join()
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
            if not self._outage:
                log.exception("registry trouble; episodes keep running, results wait for etcd")
                self._outage = True
            else:
                log.warning("registry still unavailable: %s", exc)
            return
        if self._outage:
            log.info("registry reachable again")
            self._outage = False

    def _idle(self, timeout: float) -> None:
        """Wait until a pass is due: a wake-up (a watch event, a signal), news from a worker that
        asks for one, or ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.pool.wait(deadline - time.monotonic()):
            if time.monotonic() >= deadline:
                return
        self._waker.clear()

    def _wait_time(self) -> float:
        """Until the next commit falls due, or a steal read may be made (with idle workers)."""
        steal_at = self.claimer.steal_at() if self.peers.steal_wanted and self.pool.idle() else None
        due = [t for t in (self.holdings.next_commit_at(), steal_at) if t is not None]
        if not due:
            return self.settings.loop_wait
        return max(0.0, min(self.settings.loop_wait, min(due) - time.monotonic()))

    def _takes_no_work(self) -> bool:
        """Draining (asked to), or sick (agent/health.py): claim nothing, own no queue entry."""
        return self._draining or self.health.is_sick

    def _step_lease(self) -> str | None:
        """Past the local estimate the lease may have expired: ask etcd, and stop our episodes
        only if it says the lease is gone (lease.py). While etcd cannot answer, ``confirm``
        raises and the pass ends there: nothing is claimed or committed, episodes keep running
        and their results wait."""
        if self.lease.is_alive or self.lease.confirm():
            return None
        lost = self.holdings.running
        if self.holdings.has_claims or self.pool.idle() < self.pool.size:  # once: a failed register repeats this
            self.pool.reset()  # their results would be fenced: etcd deleted our claim keys
        self.holdings.clear()
        self.host_record.register()
        return f"lost lease, stopped {lost} episodes; rejoined with lease {self.lease.lease:x}"

    def _renewed(self, expires_at: float) -> None:
        """From the lease keeper's thread: the dashboard may serve until then (if we lead)."""
        if self.dashboard is not None:
            self.dashboard.serving.lease_lives_until(expires_at)

    # --- leaving -----------------------------------------------------------------------------

    def _shutdown(self) -> None:
        self._stop.set()
        self.watcher.close()  # its threads must be gone before the registry closes under them
        self.pool.close()
        if self.dashboard is not None:
            self.dashboard.serving.lead(False)
            self.dashboard.stop()
        self.lease.stop(revoke=True)
        self.registry.close()
        self._endpoints.stop()
