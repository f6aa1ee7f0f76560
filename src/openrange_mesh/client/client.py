"""MeshClient: what a trainer uses to fan episodes out across the mesh and consume results.

    client = MeshClient("etcd://10.0.0.5:2379", consumer="ppo-run-7")
    ids = client.submit([{"runtime": "gymnasium", "params": {"env": "CartPole-v1"}, "seed": s}
                         for s in range(1000)], batch=32)
    for record in client.as_completed(ids):
        learn(record.result)
        client.ack([record.id])

Results are in etcd, not in the client: a restarted trainer with the same ``consumer`` name gets
every committed-but-unacked result again from ``as_completed()``, and nothing it acked is re-run
(idempotency keys) or re-delivered. The client holds no lease: it can die at any time.
"""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

from .. import meshstore
from ..config import default_host_id
from ..errors import ConfigError, CorruptRecord, EpisodeNotFound
from ..ids import IdAllocator, home_id
from ..keys import Keys
from ..ledger import homes
from ..ledger.catalog import Catalog, EpisodeFilter
from ..ledger.homes import Versioned
from ..ledger.ledger import Ledger
from ..ledger.placement import HostsPlacement
from ..ledger.queue import QueuedMarker, batch_runs
from ..ledger.retention import collect_garbage
from ..model import EpisodeRecord, EpisodeSpec, State, decode_finished, decode_or_none, decode_records, is_live
from ..registry import MAX_TXN_OPS, Registry, open_registry
from ..registry.follow import Follower
from ..specs import check_specs
from ..store import Store, open_store
from ..store.cas import Snapshot
from ..store.digest import Reader
from . import artifacts, snapshots
from .artifacts import Artifact
from .submission import as_list, one_per_key, pin_snapshots, with_batch

SpecLike = EpisodeSpec | Mapping[str, Any]
REPLAY_WINDOW = 10.0  # seconds: as_completed watches episodes submitted this recently from their submission


class MeshClient:
    def __init__(
        self,
        registry: Registry | str,
        *,
        namespace: str = "default",
        consumer: str | None = None,
        max_in_flight: int = 100_000,
        retry_timeout: float = 10.0,
        store: Store | str | None = None,
    ) -> None:
        self.registry = open_registry(registry, retry_timeout=retry_timeout) if isinstance(registry, str) else registry
        self._owns_registry = isinstance(registry, str)
        self.keys = Keys(namespace)
        self.consumer = consumer or default_host_id()
        self._placement = HostsPlacement(self.registry, self.keys)
        self.ledger = Ledger(self.registry, self.keys, place=self._placement)
        self.catalog = Catalog(self.registry, self.keys)
        self.ids = IdAllocator(self.registry, self.keys, default_host_id())
        self.max_in_flight = max_in_flight
        self._store = open_store(store) if isinstance(store, str) else store  # else the mesh's (meshstore.py)
        # episodes submitted here and not yet seen finished: id -> (revision before its
        # record was written, monotonic time of the submission)
        self._in_flight: dict[str, tuple[int, float]] = {}
        self._marker = QueuedMarker(self.keys, self.consumer)  # for idle hosts a submission gave no share

    # --- submitting ----------------------------------------------------------------------

    def submit(self, specs: SpecLike | Iterable[SpecLike], *, batch: int | None = None) -> list[str]:
        """Submit specs; return their ids in order. A spec whose idempotency key was already
        used returns the existing episode's id and submits nothing, and so does a spec whose
        key an earlier spec of the same submission has: one episode per key. Blocks while this
        client has ``max_in_flight`` unfinished episodes (backpressure). Every spec is checked
        before any is submitted, so one bad spec submits nothing."""
        items = as_list(specs)
        if batch is not None:  # before the check, so that each spec is checked once
            items = [with_batch(s, batch) for s in items]
        unique, stands_for = one_per_key(check_specs(items))
        if any(s.snapshot is not None for s in unique):
            unique = pin_snapshots(unique, lambda ref: snapshots.resolve(self.registry, self.keys, self.store, ref))
        out: list[str] = []
        step = max(1, min(self.max_in_flight, 4096))
        for start in range(0, len(unique), step):
            chunk = unique[start : start + step]
            self._wait_for_room(len(chunk))
            out += self._submit_chunk(chunk)
        return [out[i] for i in stands_for]

    def _submit_chunk(self, specs: Sequence[EpisodeSpec]) -> list[str]:
        now = time.time()
        runs = self._new_ids(specs)
        # each record names the queue entry the ledger will list it in (queue.named), in the
        # mailbox of its owner, so that the ledger need not copy every record to say so
        paths = [f"{self.ledger.place(name)}/{name}" for name in (f"{run[0]}.1" for run in runs)]
        named = [(i, path) for run, path in zip(runs, paths, strict=True) for i in run]
        records = [
            EpisodeRecord(id=i, spec=s, created_at=now, submitter=self.consumer, queue=q)
            for (i, q), s in zip(named, specs, strict=True)
        ]
        missed = self._placement.missed({path.split("/", 1)[0] for path in paths})
        existing, first, last = self.ledger.submit(records, after=self._marker.ops() if missed else [])
        if last:
            self.ids.adopt(last)
        ids = [existing.get(r.spec.idempotency_key or "", r.id) for r in records]
        written = (first - 1, time.monotonic())
        self._in_flight.update((i, written) for i, r in zip(ids, records, strict=True) if i == r.id)
        return ids

    def _new_ids(self, specs: Sequence[EpisodeSpec]) -> list[list[str]]:
        """Ids for the specs, in the groups the queue will form of them: each batch takes one id
        block, so its records share one group record (ledger/homes.py)."""
        runs: list[list[str]] = []
        singles = 0  # consecutive single episodes: their ids are allocated together
        for size in batch_runs([s.batch for s in specs]):
            if size == 1:
                singles += 1
                continue
            runs += [[i] for i in self.ids.next_ids(singles)]
            singles = 0
            runs.append(self.ids.next_group(size)[1])
        runs += [[i] for i in self.ids.next_ids(singles)]
        return runs

    def _wait_for_room(self, wanted: int) -> None:
        """Block until ``wanted`` more episodes fit under ``max_in_flight``: one read of what is
        in flight, then completions streamed from a watch (no polling). An episode whose record
        is gone (finished, acked and collected while nobody here waited for it) frees its room."""

        def fits() -> bool:
            return len(self._in_flight) + wanted <= self.max_in_flight

        if not fits():
            for _ in self._completions(sorted(self._in_flight), None, until=fits):
                if fits():
                    return

    # --- reading -------------------------------------------------------------------------

    def get(self, episode_id: str) -> EpisodeRecord:
        """The episode's record: EpisodeNotFound if there is none, CorruptRecord if the value
        it lives in does not decode."""
        return get_record(self.catalog, episode_id)

    def list(self, where: EpisodeFilter | None = None, *, page_size: int = 500) -> Iterator[EpisodeRecord]:
        """Every matching record, paged, all at one revision."""
        for record, _ in self.catalog.episodes(where, page_size=page_size):
            yield record

    def as_completed(
        self,
        episode_ids: Iterable[str] | None = None,
        *,
        timeout: float | None = None,
    ) -> Iterator[EpisodeRecord]:
        """Yield records as their episodes finish, each once.

        With ids: every one of them (acked or not) until all have been yielded; an unknown id
        raises EpisodeNotFound. Without ids (the restart-safe consumer): every finished, unacked
        episode this consumer submitted, starting with those that finished while it was away,
        then new ones as they finish, until ``timeout`` (forever if None). Streams from a watch
        that resumes from its last revision after a reconnect; if that revision was compacted
        meanwhile, what finished in the gap is read again."""
        yield from self._completions(episode_ids, timeout)

    def _completions(
        self, episode_ids: Iterable[str] | None, timeout: float | None, until: Callable[[], bool] | None = None
    ) -> Iterator[EpisodeRecord]:
        """``as_completed``; with ``until``, an id with no record is forgotten (collected: it
        finished), not an error, and the stream ends as soon as ``until()`` says."""
        deadline = None if timeout is None else time.monotonic() + timeout
        wanted = None if episode_ids is None else set(episode_ids)
        unseen, accept = self._accepts(wanted)

        def gone(episode_id: str) -> None:
            if until is None:
                raise EpisodeNotFound(episode_id)
            if wanted is not None:
                wanted.discard(episode_id)
            self._in_flight.pop(episode_id, None)

        def fresh(records: Iterable[EpisodeRecord]) -> Iterator[EpisodeRecord]:
            for record in records:
                if accept(record):
                    if wanted is not None:
                        wanted.discard(record.id)
                    self._in_flight.pop(record.id, None)
                    yield record

        since, recent = self._replayable(wanted)
        if wanted is not None and recent and recent >= wanted:
            revision = since  # all just submitted here: the watch brings everything since
        else:
            revision = self._revision_now()
            yield from fresh(self._initial(None if wanted is None else wanted - recent, revision, gone))
            if recent:
                revision = since  # the rest were read at a later revision: repeats are skipped
        if (wanted is not None and not wanted) or (until is not None and until()):
            return  # all finished already: no watch to open
        relisted: list[int] = []  # revisions the watch started again from, after compaction
        follower = Follower(self.registry, self.keys.episodes(), on_relist=relisted.append)
        follower.start(revision)
        try:
            while wanted is None or wanted:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return
                events = follower.poll(1.0 if remaining is None else min(1.0, remaining))
                if relisted:  # the events of the gap are gone: read what they would have brought
                    yield from fresh(self._initial(wanted, relisted.pop(), gone))
                    relisted.clear()
                for event in events:
                    if event.type != "put" or is_live(event.kv.value):
                        continue
                    finals = decode_or_none(partial(decode_finished, wanted=unseen), event.kv.value, event.kv.key)
                    yield from fresh(finals or ())
        finally:
            follower.close()

    def _accepts(self, wanted: set[str] | None) -> tuple[Callable[[str], bool], Callable[[EpisodeRecord], bool]]:
        """Which finished records ``as_completed`` yields (each once: acking rewrites a record
        but a yielded id leaves ``wanted``; in consumer mode acked records are skipped): a test
        of the id, for records not yet decoded, and one of the record."""
        if wanted is not None:
            return wanted.__contains__, lambda r: r.id in wanted and r.state.is_terminal
        # a group record is rewritten as more of its members finish: yield each member once
        yielded: set[str] = set()

        def fresh(record: EpisodeRecord) -> bool:
            if not record.state.is_terminal or record.acked_at is not None or record.submitter != self.consumer:
                return False
            if record.id in yielded:
                return False
            yielded.add(record.id)
            return True

        return (lambda episode_id: episode_id not in yielded), fresh

    def wait(self, episode_ids: Iterable[str], *, timeout: float | None = None) -> builtins.list[EpisodeRecord]:
        """Block until every episode is finished (acked or not); their records in input order."""
        ids = list(episode_ids)
        done: dict[str, EpisodeRecord] = {}
        for record in self.as_completed(ids, timeout=timeout):  # those already finished first
            done[record.id] = record
        done.update({r.id: r for r in self._terminal([i for i in ids if i not in done])})
        missing = [i for i in ids if i not in done]
        if missing:
            raise TimeoutError(f"{len(missing)} episodes not finished after {timeout} s (first: {missing[0]})")
        return [done[i] for i in ids]

    # --- acting on episodes --------------------------------------------------------------

    def cancel(self, episode_ids: Iterable[str]) -> dict[str, str]:
        """Cancel episodes. Returns id -> "cancelled" (was pending), "requested" (running:
        its owner stops it and commits ``cancelled``), or its terminal state (too late)."""
        out: dict[str, str] = {}
        for episode_id in episode_ids:
            out[episode_id] = self._cancel_one(episode_id)
        return out

    def _cancel_one(self, episode_id: str) -> str:
        while True:
            versioned = self._read([episode_id]).get(episode_id)
            if versioned is None:
                raise EpisodeNotFound(episode_id)
            state = versioned.record.state
            if state.is_terminal:
                return state.value
            if state is State.RUNNING:
                self.ledger.request_cancel(episode_id)
                return "requested"
            if self.ledger.cancel_pending(versioned):
                return "cancelled"

    def ack(self, episode_ids: Iterable[str]) -> int:
        """Mark finished results consumed: they are not delivered again and may be collected
        after the retention period. Returns how many were newly acked."""
        acked = 0
        ids = list(episode_ids)
        for start in range(0, len(ids), MAX_TXN_OPS // 2):
            acked += self._ack_batch(ids[start : start + MAX_TXN_OPS // 2])
        return acked

    def _ack_batch(self, ids: Sequence[str]) -> int:
        while True:
            todo = [v for v in self._read(ids).values() if v.record.state.is_terminal and v.record.acked_at is None]
            if not todo:
                return 0
            now = time.time()
            result = self.registry.txn(
                homes.compares(self.keys, todo),
                homes.rewrite(self.keys, [(v.record.replace(acked_at=now), v.home) for v in todo]).ops,
            )
            if result.succeeded:
                return len(todo)

    def collect(self, retention: float) -> int:
        """Delete acked finished records older than ``retention`` seconds now (the leader
        agent does this every sweep with its ``--retention``). Returns how many went."""
        return collect_garbage(self.registry, self.keys, retention)

    # --- snapshots and artifacts (the mesh's store, found through etcd unless given) ----------

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = meshstore.find(self.registry, self.keys, None)
        if self._store is None:
            raise ConfigError("the mesh has no store yet (no agent with --store joined): pass MeshClient(store=...)")
        return self._store

    def put_snapshot(self, source: str | os.PathLike[str] | Reader, name: str | None = None) -> Snapshot:
        """Store a file, a directory or a binary file object by content (uploaded once) and,
        with ``name``, point that name at it. Specs name it by ``.digest`` or by the name."""
        return snapshots.put(self.registry, self.keys, self.store, source, name)

    def snapshots(self) -> builtins.list[snapshots.Named]:
        return snapshots.names(self.registry, self.keys)

    def remove_snapshot(self, name: str) -> bool:
        """Forget a name (its blob goes once nothing refers to it); False if there was none."""
        return snapshots.remove(self.registry, self.keys, name)

    def artifacts(self, episode_id: str) -> builtins.list[Artifact]:
        """What the attempt that ended the episode uploaded (none before it ended)."""
        return artifacts.listed(self.get(episode_id))

    def open_artifact(self, episode_id: str, name: str) -> AbstractContextManager[Reader]:
        """A streaming reader of one artifact: ``with client.open_artifact(id, "video.mp4") as f``."""
        return artifacts.open_artifact(self.store, self.get(episode_id), name)

    def close(self) -> None:
        if self._owns_registry:
            self.registry.close()

    def __enter__(self) -> MeshClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals -----------------------------------------------------------------------

    def _read(self, ids: Sequence[str]) -> dict[str, Versioned]:
        return self.ledger.read(ids)

    def _initial(self, wanted: set[str] | None, revision: int, gone: Callable[[str], None]) -> Iterator[EpisodeRecord]:
        """The records to start from, as of ``revision``: with ids, those of them that finished
        (``gone`` is told of each that has no record); without, this consumer's."""
        if wanted is None:
            for record, _ in self.catalog.episodes(EpisodeFilter(submitter=self.consumer), revision=revision):
                yield record
            return
        present, finished = homes.read_finished(self.registry, self.keys, sorted(wanted))
        for episode_id in sorted(wanted - present):
            gone(episode_id)
        yield from finished.values()

    def _replayable(self, wanted: set[str] | None) -> tuple[int, set[str]]:
        """Of ``wanted``, the episodes submitted here in the last ``REPLAY_WINDOW`` seconds,
        and the revision before the first of their records was written: a watch from there
        brings all that happened to them, so they need not be read first (the read was ~50 us
        of etcd's CPU and ~15 us of ours per episode, for records that mostly had not started).
        Older ones are read: a watch from long ago would replay all the namespace did since."""
        if wanted is None:
            return 0, set()
        now = time.monotonic()
        recent = {i: s[0] for i in wanted if (s := self._in_flight.get(i)) is not None and now - s[1] < REPLAY_WINDOW}
        return (min(recent.values()), set(recent)) if recent else (0, set())

    def _revision_now(self) -> int:
        return self.registry.get(self.keys.root)[1]

    def _terminal(self, ids: Sequence[str]) -> builtins.list[EpisodeRecord]:
        return [v.record for v in self._read(ids).values() if v.record.state.is_terminal]


def get_record(catalog: Catalog, episode_id: str) -> EpisodeRecord:
    """``catalog.get``, except that when a value the episode would live in (its own key, its
    group record) does not decode and the record is nowhere else, it raises CorruptRecord: one
    asked-for record is not a listing, where a bad value is skipped, and "no episode" would
    send its owner looking for a typo."""
    home = home_id(episode_id)
    where = [catalog.keys.episode(episode_id)]
    if home is not None:
        where.insert(0, catalog.keys.episode(home))
    readable, corrupt = [], None
    for kv in homes.get_many(catalog.registry, where):
        try:
            decode_records(kv.value, kv.key.decode(errors="replace"))
        except CorruptRecord as exc:
            corrupt = exc
            continue
        readable.append(kv)
    found = homes.found_in(catalog.keys, readable, {episode_id}).get(episode_id)
    if found is not None:
        return found.record
    raise corrupt or EpisodeNotFound(episode_id)
