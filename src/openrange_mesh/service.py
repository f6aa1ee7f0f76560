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
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from .agent.lease import LeaseKeeper
from .client import snapshots
from .config import DEFAULT_CACHE_SIZE, default_cache_dir, default_host_id
from .errors import ConfigError, EpisodeNotFound, SpecError
from .ids import IdAllocator
from .keys import Keys
from .ledger.catalog import Catalog, EpisodeFilter
from .ledger.claims import Claim
from .ledger.homes import MAX_OWN_KEYS
from .ledger.ledger import Ledger
from .ledger.records import finish_attempt
from .model import EpisodeRecord, EpisodeSpec, State
from .registry import Registry, open_registry
from .registry.memory import MemoryRegistry
from .runtimes import Handle, load_runtime
from .specs import check_spec
from .store import Store, open_store
from .store.cache import SnapshotCache
from .store.events import encode_events
from .store.layout import events_path, result_path
from .writebehind import WriteBehind

if TYPE_CHECKING:
    from .dashboard.inprocess import InProcessDashboard

log = logging.getLogger(__name__)

SpecLike = EpisodeSpec | Mapping[str, Any]


@dataclass(frozen=True)
class EpisodeReport:
    """What ``stop`` and ``run`` return: the committed record plus what the handle produced."""

    record: EpisodeRecord
    events: list[dict[str, Any]]
    committed: bool  # False if a peer had already taken the episode over (fenced)

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def state(self) -> State:
        return self.record.state

    @property
    def result(self) -> Mapping[str, Any] | None:
        return self.record.result


@dataclass(slots=True)
class _ClaimState:
    """One claim shared by the episodes started together; the last commit releases it. None:
    they were started while the registry was private, under no claim key (writebehind.py)."""

    claim: Claim | None
    open: set[str]

    @property
    def token(self) -> int | None:
        return self.claim.token if self.claim is not None else None


@dataclass(slots=True)
class _RunningEpisode:
    record: EpisodeRecord
    claim: _ClaimState
    handle: Handle
    started: float
    events: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class EpisodeService:
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
        self._ledger = Ledger(self._registry, self.keys)
        self._catalog = Catalog(self._registry, self.keys)
        self.ids = IdAllocator(self._registry, self.keys, self.host_id)
        # Private: an unnamed memory:// store this service opened (a named one, or a registry
        # handed in, others may hold) that no dashboard of ours reads from its own thread.
        private = (
            self._owns_registry
            and not dashboard
            and isinstance(self._registry, MemoryRegistry)
            and self._registry.is_private
        )
        self._behind = WriteBehind(self._registry, self.keys, private=private)
        self.store = open_store(store) if isinstance(store, str) else store
        self._cache: SnapshotCache | None = None  # the host's snapshot cache, on first use
        self._lease = LeaseKeeper(self._registry, ttl)
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
        self._behind.share()
        return self._registry

    @property
    def ledger(self) -> Ledger:
        self._behind.share()
        return self._ledger

    @property
    def catalog(self) -> Catalog:
        self._behind.share()
        return self._catalog

    # --- lifecycle of episodes ----------------------------------------------------------------

    def start(self, spec: SpecLike) -> str:
        """Realise and reset an episode; return its id. The record is ``running`` from here."""
        return self.start_many([spec])[0]

    def start_many(self, specs: Sequence[SpecLike]) -> builtins.list[str]:
        """Realise and reset up to ``MAX_OWN_KEYS`` episodes, recorded as running in one txn."""
        return self._start_checked([check_spec(s) for s in specs])

    def _start_checked(self, checked: Sequence[EpisodeSpec]) -> builtins.list[str]:
        if len(checked) > MAX_OWN_KEYS:
            raise SpecError("specs", f"start at most {MAX_OWN_KEYS} episodes at once (run_many takes any number)")
        handles: builtins.list[Handle] = []
        try:
            for spec in checked:
                handle = load_runtime(spec.runtime).realize(spec.params, seed=spec.seed, snapshot=self._snapshot(spec))
                handles.append(handle)
                handle.reset()
            ids = self.ids.next_ids(len(checked))
            now = time.time()
            records = [
                EpisodeRecord(id=i, spec=s, created_at=now, submitter=self.host_id)
                for i, s in zip(ids, checked, strict=True)
            ]
            claim, running = self._start_records(records)
        except BaseException:
            for handle in handles:
                handle.stop()
            raise
        shared = _ClaimState(claim, set(ids))
        started = time.monotonic()
        with self._lock:
            for record, handle in zip(running, handles, strict=True):
                self._running[record.id] = _RunningEpisode(record, shared, handle, started)
        return ids

    def _start_records(self, records: Sequence[EpisodeRecord]) -> tuple[Claim | None, builtins.list[EpisodeRecord]]:
        """Running records of fresh ones: kept behind while the registry is private, else
        written through the ledger under a claim of ours."""
        kept = self._behind.start(records, self.host_id)
        if kept is not None:
            return None, kept
        return self._ledger.start(self.host_id, self._lease.ensure(), records)

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
        return self.stop_many({episode_id: error})[0]

    def stop_many(self, errors: Mapping[str, str | None]) -> builtins.list[EpisodeReport]:
        """Stop episodes and commit their outcomes, one txn per claim they share."""
        with self._lock:
            if not errors.keys() <= self._running.keys():
                raise EpisodeNotFound(next(i for i in errors if i not in self._running))
            stopping = [self._running.pop(i) for i in errors]
        finals: builtins.list[EpisodeRecord] = []
        for running, error in zip(stopping, errors.values(), strict=True):
            with running.lock:
                finals.append(self._final(running, error))
        fenced = self._commit(stopping, finals)
        return [
            EpisodeReport(final, r.events, id(r.claim) not in fenced) for r, final in zip(stopping, finals, strict=True)
        ]

    # --- whole runs ------------------------------------------------------------------------

    def run(self, spec: SpecLike, *, slice_seconds: float = 0.5) -> EpisodeReport:
        """Run one autonomous episode to its terminal state (or its spec's timeout)."""
        return self._run_batch([check_spec(spec)], None, slice_seconds)[0]

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
        checked = [check_spec(s) for s in specs]  # reject a bad spec before running any
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
        ids = self._start_checked(checked)
        if pool is None:
            errors = [self._drive(i, slice_seconds) for i in ids]
        else:
            errors = list(pool.map(partial(self._drive, slice_seconds=slice_seconds), ids))
        return self.stop_many(dict(zip(ids, errors, strict=True)))

    def _drive(self, episode_id: str, slice_seconds: float) -> str | None:
        """Advance to terminal; the error that ends it early (a timeout), else None."""
        running = self._get(episode_id)
        timeout = running.record.spec.timeout
        handle = running.handle
        while handle.terminal() is None:
            if timeout is not None and time.monotonic() - running.started > timeout:
                return f"timed out after {timeout:g} s"
            with running.lock:
                handle.advance(slice_seconds)
        return None

    # --- reading ---------------------------------------------------------------------------

    def get(self, episode_id: str) -> EpisodeRecord:
        self._behind.flush()
        return self._catalog.get(episode_id)

    def list(self, state: State | str | None = None, **filters: Any) -> builtins.list[EpisodeRecord]:
        where = EpisodeFilter(states=frozenset({State(state)}) if state else frozenset(), **filters)
        self._behind.flush()
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
        self._behind.flush()
        self._lease.stop()
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
        running.events.extend(new)
        return new

    def _final(self, running: _RunningEpisode, error: str | None) -> EpisodeRecord:
        handle = running.handle
        try:
            outcome = handle.terminal()
            result = handle.collect()
            self._drain_events(running)
        finally:
            handle.stop()
        if error is not None:
            state = State.FAILED
        elif outcome is None:
            state, error = State.CANCELLED, "stopped before reaching a terminal state"
        else:
            state, error = (State.SUCCEEDED, None) if outcome.succeeded else (State.FAILED, outcome.error)
        final = finish_attempt(running.record, state, time.time(), error, dict(result), token=running.claim.token)
        self._save_artifacts(final, running.events)
        return final

    def _commit(self, stopping: Sequence[_RunningEpisode], finals: Sequence[EpisodeRecord]) -> set[int]:
        """Commit finals, one txn per claim they share; the claims (``id()`` of their state)
        whose commit was fenced off."""
        by_claim: dict[int, tuple[_ClaimState, builtins.list[EpisodeRecord]]] = {}
        for running, final in zip(stopping, finals, strict=True):
            by_claim.setdefault(id(running.claim), (running.claim, []))[1].append(final)
        fenced: set[int] = set()
        for key, (shared, records) in by_claim.items():
            if shared.claim is None:  # kept behind: nobody could have taken them over
                self._behind.finish(records)
                continue
            ids = {r.id for r in records}
            with self._lock:
                last = shared.open <= ids
                shared.open -= ids
            if not self._ledger.commit(shared.claim, records, last=last):
                log.warning("%d episodes were taken over before they finished here; not committed", len(ids))
                fenced.add(key)
        return fenced

    def _save_artifacts(self, record: EpisodeRecord, events: Sequence[dict[str, Any]]) -> None:
        if self.store is None:
            return
        self.store.put_bytes(events_path(record.id, record.attempt, 0), encode_events(list(events)))
        self.store.put_bytes(result_path(record.id, record.attempt), json.dumps(dict(record.result or {})).encode())

    def _snapshot(self, spec: EpisodeSpec) -> bytes | None:
        """The spec's snapshot (a name or a digest) through this host's cache: a service is a
        runtime that takes bytes; the mesh's workers hand runtimes a path (worker/files.py)."""
        if spec.snapshot is None:
            return None
        if self.store is None:
            raise ConfigError(f"spec references snapshot {spec.snapshot!r} but the service has no store")
        digest = snapshots.resolve(self._registry, self.keys, self.store, spec.snapshot)
        if self._cache is None:
            self._cache = SnapshotCache(self.store, default_cache_dir(), DEFAULT_CACHE_SIZE)
        return self._cache.get_bytes(digest)
