"""EpisodeService: run episodes on this host, over any registry.

On ``memory://`` (the default) this is the single-host service users have always had: running
episodes live in a local dict of handles, and their records live in an in-process registry with
etcd's semantics. On ``etcd://`` the same service publishes its episodes to the cluster: every
record is visible to ``openrange-mesh ls``, and its claims are fenced like an agent's.

Handles are process-local by nature (a live environment, a subprocess), so the dict stays; what
moved behind the registry seam is the record of each episode: state, attempts, owner, result.
While nobody but this service can read its registry (a ``memory://`` it opened, no dashboard),
records are written behind (writebehind.py): a plain dict's speed, the same records on read.
"""

from __future__ import annotations

import builtins
import json
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from .client import snapshots
from .config import DEFAULT_CACHE_SIZE, default_cache_dir, default_host_id
from .errors import ConfigError, EpisodeNotFound, SpecError
from .keys import Keys
from .ledger.catalog import Catalog, EpisodeFilter
from .ledger.homes import MAX_OWN_KEYS
from .ledger.ledger import Ledger
from .model import EpisodeRecord, EpisodeSpec, State
from .registry import Registry, open_registry
from .registry.memory import MemoryRegistry
from .runtimes import Handle, load_runtime
from .service_records import Batch, ServiceRecords
from .specs import check_spec, check_specs
from .store import Store, open_store
from .store.cache import SnapshotCache
from .store.events import encode_events, kept
from .store.layout import events_path, result_path
from .writebehind import Kept

if TYPE_CHECKING:
    from .dashboard.inprocess import InProcessDashboard

SpecLike = EpisodeSpec | Mapping[str, Any]


class EpisodeReport:
    """What ``stop`` and ``run`` return: the committed record plus what the handle produced.
    A record kept behind (writebehind.py) is built when ``record`` is first read."""

    __slots__ = ("_final", "committed", "events")

    def __init__(self, final: EpisodeRecord | Kept, events: list[dict[str, Any]], committed: bool) -> None:
        self._final = final
        self.events = events
        self.committed = committed  # False if a peer had already taken the episode over (fenced)

    @property
    def record(self) -> EpisodeRecord:
        return self._final.record() if isinstance(self._final, Kept) else self._final

    @property
    def id(self) -> str:
        return self._final.id

    @property
    def state(self) -> State:
        return self._final.state

    @property
    def result(self) -> Mapping[str, Any] | None:
        return self._final.result

    def __repr__(self) -> str:
        return f"EpisodeReport({self.id!r}, {self.state.value}, committed={self.committed})"


@dataclass(slots=True, eq=False)
class _RunningEpisode:
    """A live episode. Its handle and ``events`` are used under ``lock``: the thread driving
    it and callers of advance, observe and stop may differ."""

    id: str
    spec: EpisodeSpec
    index: int  # its place among the episodes started with it
    batch: Batch  # what they started under
    handle: Handle
    started: float
    events: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class EpisodeService:
    """Threads: any number of callers, and ``run_many``'s pool when ``parallel`` > 1. ``_lock``
    guards ``_running`` (the live episodes by id); each episode's own lock its handle; the
    records keep their own locks (service_records.py, writebehind.py)."""

    def __init__(
        self,
        registry: Registry | str = "memory://",
        *,
        namespace: str = "default",
        host_id: str | None = None,
        store: Store | str | None = None,
        ttl: int = 10,
        dashboard: bool | str = False,
    ) -> None:
        """``dashboard``: serve the dashboard for these episodes (True: on 127.0.0.1, a free
        port; or "host:port"); its URL is ``dashboard_url``."""
        self._registry = open_registry(registry) if isinstance(registry, str) else registry
        self._owns_registry = isinstance(registry, str)
        self.host_id = host_id or default_host_id()
        self.keys = Keys(namespace)
        self._catalog = Catalog(self._registry, self.keys)
        # Private: an unnamed memory:// store this service opened (a named one, or a registry
        # handed in, others may hold) that no dashboard of ours reads from its own thread.
        private = (
            self._owns_registry
            and not dashboard
            and isinstance(self._registry, MemoryRegistry)
            and self._registry.is_private
        )
        self._records = ServiceRecords(self._registry, self.keys, self.host_id, ttl, private=private)
        self.ids = self._records.ids
        self.store = open_store(store) if isinstance(store, str) else store
        self._cache: SnapshotCache | None = None  # the host's snapshot cache, on first use
        self._running: dict[str, _RunningEpisode] = {}
        self._lock = threading.Lock()
        self._dashboard: InProcessDashboard | None = None
        self.dashboard_url = ""
        if dashboard:
            from .dashboard.inprocess import InProcessDashboard  # its server stack only when asked

            bind = dashboard if isinstance(dashboard, str) else "127.0.0.1:0"
            self._dashboard = InProcessDashboard(self._registry, namespace, self.host_id, self.store, bind)
            self.dashboard_url = self._dashboard.start()

    # Handing out the registry, or what reads it, ends write-behind: its holder may read it any
    # time, not only through this service.

    @property
    def registry(self) -> Registry:
        self._records.share()
        return self._registry

    @property
    def ledger(self) -> Ledger:
        self._records.share()
        return self._records.ledger

    @property
    def catalog(self) -> Catalog:
        self._records.share()
        return self._catalog

    # --- lifecycle of episodes ----------------------------------------------------------------

    def start(self, spec: SpecLike) -> str:
        """Realise and reset an episode; return its id. The record is ``running`` from here."""
        return self._start([check_spec(spec)])[0].id

    def start_many(self, specs: Sequence[SpecLike]) -> builtins.list[str]:
        """Realise and reset up to ``MAX_OWN_KEYS`` episodes, recorded as running in one txn."""
        return [running.id for running in self._start(check_specs(specs))]

    def _start(self, checked: Sequence[EpisodeSpec]) -> builtins.list[_RunningEpisode]:
        if len(checked) > MAX_OWN_KEYS:
            raise SpecError("specs", f"start at most {MAX_OWN_KEYS} episodes at once (run_many takes any number)")
        handles: builtins.list[Handle] = []
        try:
            for spec in checked:
                snapshot = self._snapshot(spec) if spec.snapshot is not None else None
                handle = load_runtime(spec.runtime).realize(spec.params, seed=spec.seed, snapshot=snapshot)
                handles.append(handle)
                handle.reset()
            ids, batch = self._records.start(checked, time.time())
        except BaseException:
            for handle in handles:
                handle.stop()
            raise
        started = time.monotonic()
        episodes: builtins.list[_RunningEpisode] = []
        with self._lock:
            for index, (episode_id, spec, handle) in enumerate(zip(ids, checked, handles, strict=True)):
                episodes.append(_RunningEpisode(episode_id, spec, index, batch, handle, started))
                self._running[episode_id] = episodes[-1]
        return episodes

    def surface(self, episode_id: str) -> dict[str, Any]:
        """The IO surface a harness connects to (spaces, a pid, an address...)."""
        return self._get(episode_id).handle.surface()

    def advance(self, episode_id: str, max_seconds: float = 0.1) -> builtins.list[dict[str, Any]]:
        """Let the episode make progress for up to ``max_seconds``; return its new events."""
        running = self._get(episode_id)
        with running.lock:
            running.handle.advance(max_seconds)
            return self._drain_events(running)

    def observe(self, episode_id: str) -> builtins.list[dict[str, Any]]:
        """New events since the last observe/advance, without advancing."""
        running = self._get(episode_id)
        with running.lock:
            return self._drain_events(running)

    def is_terminal(self, episode_id: str) -> bool:
        return self._get(episode_id).handle.terminal() is not None

    def stop(self, episode_id: str, *, error: str | None = None) -> EpisodeReport:
        """Stop the episode and commit its outcome: the runtime's verdict if it reached a
        terminal state, else ``cancelled`` (or ``failed`` when ``error`` is given)."""
        with self._lock:
            running = self._running.pop(episode_id, None)
        if running is None:
            raise EpisodeNotFound(episode_id)
        return self._stop_one(running, error)

    def _stop_one(self, running: _RunningEpisode, error: str | None) -> EpisodeReport:
        """``stop_many``'s work for one episode taken from ``_running``, without the containers
        a batch needs: ``run`` pays this per episode, and those containers cost ~2% of a
        CartPole episode (bench_single_host.py)."""
        with running.lock:
            final = self._final(running, error)
        fenced = self._records.commit([(running.batch, final)])
        return EpisodeReport(final, running.events, id(running.batch) not in fenced)

    def stop_many(self, errors: Mapping[str, str | None]) -> builtins.list[EpisodeReport]:
        """Stop episodes and commit their outcomes, one txn per claim they share."""
        with self._lock:
            if not errors.keys() <= self._running.keys():
                raise EpisodeNotFound(next(i for i in errors if i not in self._running))
            stopping = list(map(self._running.pop, errors))
        ended: builtins.list[tuple[Batch, EpisodeRecord | Kept]] = []
        for running, error in zip(stopping, errors.values(), strict=True):
            with running.lock:
                ended.append((running.batch, self._final(running, error)))
        fenced = self._records.commit(ended)
        reports: builtins.list[EpisodeReport] = []
        for running, (batch, final) in zip(stopping, ended, strict=True):
            reports.append(EpisodeReport(final, running.events, id(batch) not in fenced))
        return reports

    # --- whole runs ------------------------------------------------------------------------

    def run(self, spec: SpecLike, *, slice_seconds: float = 0.5) -> EpisodeReport:
        """Run one autonomous episode to its terminal state (or its spec's timeout)."""
        (running,) = self._start([check_spec(spec)])
        error = self._drive(running, slice_seconds)
        with self._lock:
            if self._running.pop(running.id, None) is None:  # another thread stopped it
                raise EpisodeNotFound(running.id)
        return self._stop_one(running, error)

    def run_many(
        self,
        specs: Iterable[SpecLike],
        *,
        parallel: int = 1,
        slice_seconds: float = 0.5,
    ) -> builtins.list[EpisodeReport]:
        """Run episodes to terminal, ``parallel`` at a time; reports in input order. Episodes
        are started and committed in batches of up to MAX_OWN_KEYS (one txn each way), the same
        batching rule as the mesh, so short episodes pay little for their records."""
        checked = check_specs(specs)  # reject a bad spec before running any
        reports: builtins.list[EpisodeReport] = []
        pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="episode") if parallel > 1 else None
        try:
            for first in range(0, len(checked), MAX_OWN_KEYS):
                reports += self._run_batch(checked[first : first + MAX_OWN_KEYS], pool, slice_seconds)
        finally:
            if pool is not None:
                pool.shutdown()
        return reports

    def _run_batch(
        self, checked: Sequence[EpisodeSpec], pool: ThreadPoolExecutor | None, slice_seconds: float
    ) -> builtins.list[EpisodeReport]:
        """Start up to MAX_OWN_KEYS episodes, drive them to terminal (on ``pool``, if any), stop them."""
        started = self._start(checked)
        if pool is None:
            errors = [self._drive(running, slice_seconds) for running in started]
        else:
            errors = list(pool.map(partial(self._drive, slice_seconds=slice_seconds), started))
        return self.stop_many({running.id: error for running, error in zip(started, errors, strict=True)})

    def _drive(self, running: _RunningEpisode, slice_seconds: float) -> str | None:
        """Advance to terminal; the error that ends it early (a timeout), else None."""
        timeout = running.spec.timeout
        handle = running.handle
        while handle.terminal() is None:
            if timeout is not None and time.monotonic() - running.started > timeout:
                return f"timed out after {timeout:g} s"
            with running.lock:
                handle.advance(slice_seconds)
        return None

    # --- reading ---------------------------------------------------------------------------

    def get(self, episode_id: str) -> EpisodeRecord:
        self._records.flush()
        return self._catalog.get(episode_id)

    def list(self, state: State | str | None = None, **filters: Any) -> builtins.list[EpisodeRecord]:
        where = EpisodeFilter(states=frozenset({State(state)}) if state else frozenset(), **filters)
        self._records.flush()
        return [record for record, _ in self._catalog.episodes(where)]

    def running_ids(self) -> builtins.list[str]:
        with self._lock:
            return list(self._running)

    def close(self) -> None:
        """Stop every running episode (committed as cancelled) and release the lease."""
        with self._lock:
            ids = list(self._running)
        if ids:
            self.stop_many(dict.fromkeys(ids))
        self._records.close()
        if self._dashboard is not None:
            self._dashboard.stop()
        if self._owns_registry:
            self._registry.close()

    def __enter__(self) -> EpisodeService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals -------------------------------------------------------------------------

    def _get(self, episode_id: str) -> _RunningEpisode:
        running = self._running.get(episode_id)
        if running is None:
            raise EpisodeNotFound(episode_id)
        return running

    def _drain_events(self, running: _RunningEpisode) -> builtins.list[dict[str, Any]]:
        new = running.handle.poll_events()
        running.events += kept(new, running.spec.events)  # what its report and the store keep
        return new

    def _final(self, running: _RunningEpisode, error: str | None) -> EpisodeRecord | Kept:
        """Its final record (built when first read, if kept behind), its events stored."""
        handle = running.handle
        try:
            outcome = handle.terminal()
            result = handle.collect()
            running.events += kept(handle.poll_events(), running.spec.events)
        finally:
            handle.stop()
        if error is not None:
            state = State.FAILED
        elif outcome is None:
            state, error = State.CANCELLED, "stopped before reaching a terminal state"
        else:
            state, error = (State.SUCCEEDED, None) if outcome.succeeded else (State.FAILED, outcome.error)
        final = self._records.end(running.batch, running.index, state, time.time(), error, dict(result))
        if self.store is not None:
            self._save_artifacts(final.record() if isinstance(final, Kept) else final, running.events)
        return final

    def _save_artifacts(self, record: EpisodeRecord, events: Sequence[dict[str, Any]]) -> None:
        assert self.store is not None
        if record.spec.events != "none":
            self.store.put_bytes(events_path(record.id, record.attempt, 0), encode_events(list(events)))
        self.store.put_bytes(result_path(record.id, record.attempt), json.dumps(dict(record.result or {})).encode())

    def _snapshot(self, spec: EpisodeSpec) -> bytes:
        """The spec's snapshot (a name or a digest) through this host's cache: a service is a
        runtime that takes bytes; the mesh's workers hand runtimes a path (worker/files.py)."""
        assert spec.snapshot is not None
        if self.store is None:
            raise ConfigError(f"spec references snapshot {spec.snapshot!r} but the service has no store")
        digest = snapshots.resolve(self._registry, self.keys, self.store, spec.snapshot)
        if self._cache is None:
            self._cache = SnapshotCache(self.store, default_cache_dir(), DEFAULT_CACHE_SIZE)
        return self._cache.get_bytes(digest)
