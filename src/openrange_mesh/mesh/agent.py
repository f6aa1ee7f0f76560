"""``openrange-agent``: the one process every host runs.

Threads: the main loop (claims, commits, requeues, timeouts, leadership), two watch threads
(the queue, and the control keys) that turn etcd events into work for the loop, the lease
keeper, and the worker pool's supervisor.
The loop sleeps up to ``loop_wait`` and is woken early by a watch event or a finished episode,
so claiming is watch-driven, never a busy poll. A pass is a list of named steps; each returns
a status line (or None) that the pass logs.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice

from .. import __version__
from ..config import Settings
from ..errors import ConfigError, RegistryError
from ..keys import Keys
from ..model import EpisodeRecord, HostInfo, State
from ..registry import Compare, Event, KeyValue, Put, Registry, open_registry
from .catalog import Catalog
from .follow import Follower
from .leader import Leadership
from .lease import LeaseKeeper
from .ledger import Claim, Ledger, Versioned, claim_episode_ids, finish_attempt, give_back
from .pool import WorkerPool
from .queue import QueueEntry, decode_entry
from .worker import Done, WorkItem

log = logging.getLogger(__name__)

KILL_GRACE = 5.0  # seconds past a timeout before the agent kills a worker that did not stop
# A batch's results are committed together when the batch ends, or once the oldest uncommitted
# one has waited this long: one txn per batch instead of one per finished episode.
COMMIT_LINGER = 0.05
_DONE_STATES = {"succeeded": State.SUCCEEDED, "failed": State.FAILED, "cancelled": State.CANCELLED}


@dataclass
class _Held:
    claim: Claim
    records: dict[str, EpisodeRecord]  # running records as claimed, by id
    finals: dict[str, EpisodeRecord] = field(default_factory=dict)  # finished, not yet committed
    first_final_at: float = 0.0  # monotonic time the oldest uncommitted final arrived

    def commit_due(self, now: float) -> bool:
        return bool(self.finals) and (
            len(self.finals) == len(self.records) or now - self.first_final_at >= COMMIT_LINGER
        )


@dataclass(frozen=True)
class _Orphan:
    host: str
    claim_id: str
    episode_ids: list[str]
    lease: int


_ADDRESS = socket.gethostname()  # where an operator finds this agent (no HTTP endpoint yet)


@functools.cache
def machine_id() -> str:
    """The boot id: a restarted agent on the same running machine sees the same value."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


class Agent:
    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        self.settings = settings
        self.host = settings.host_id
        self.registry = registry or open_registry(settings.registry, retry_timeout=settings.retry_timeout)
        self.keys = Keys(settings.namespace)
        self.ledger = Ledger(self.registry, self.keys)
        self.catalog = Catalog(self.registry, self.keys)
        self.lease = LeaseKeeper(self.registry, settings.ttl, interval=settings.loop_wait)
        self.pool = WorkerPool(settings.capacity, settings.store, on_change=self.wake)
        self.followers = [
            Follower(self.registry, self.keys.queue(), on_relist=self._load_queue),
            Follower(self.registry, self.keys.control(), prev_kv=True, on_relist=self._on_relist),
        ]
        self.leadership = Leadership(self)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._draining = False
        self._drain_deadline = 0.0
        self._held: dict[str, _Held] = {}
        self._owner_of: dict[str, str] = {}  # episode id -> claim id
        self._orphans: queue.SimpleQueue[_Orphan] = queue.SimpleQueue()
        self._cancels: set[str] = set()
        self._cancel_seen: set[str] = set()
        self._live_leases: dict[str, int] = {}  # host -> lease, from the hosts/ prefix
        self._queue: dict[str, KeyValue] = {}  # entry name -> entry, oldest first, fed by the watch
        self._stale_leases: list[int] = []
        self._claims_unsure = False  # a claim txn got no answer: it may hold episodes we do not know
        self._started_at = time.time()  # for the host record, which every claim and commit rewrites
        self._outage = False
        self._events_lock = threading.Lock()
        self._watch_threads = [
            threading.Thread(target=self._watch_loop, args=(f,), name=f"watch-{i}", daemon=True)
            for i, f in enumerate(self.followers)
        ]

    # --- public ------------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def drain(self, grace: float = 30.0) -> None:
        """Stop claiming; finish or hand back running episodes within ``grace``; then exit."""
        if not self._draining:
            log.info("draining: no new claims; %d episodes get %.0f s to finish", len(self._owner_of), grace)
        self._draining = True
        self._drain_deadline = time.monotonic() + grace
        self.wake()

    def stop(self) -> None:
        self._stop.set()
        self.wake()

    @property
    def running(self) -> int:
        return len(self._owner_of)

    def run(self) -> None:
        """Join the mesh and run until stopped or drained."""
        self._join()
        self.pool.start()
        for thread in self._watch_threads:
            thread.start()
        try:
            while not self._stop.is_set():
                self._pass()
                if self._draining and (not self._held or time.monotonic() >= self._drain_deadline):
                    self._hand_back()
                    break
                self._wake.wait(self._wait_time())
                self._wake.clear()
        finally:
            self._shutdown()

    def _wait_time(self) -> float:
        lingering = [h.first_final_at + COMMIT_LINGER for h in self._held.values() if h.finals]
        if not lingering:
            return self.settings.loop_wait
        return max(0.0, min(self.settings.loop_wait, min(lingering) - time.monotonic()))

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

    def _retire_predecessor(self) -> None:
        """A host key with our id under another lease is either our crashed predecessor (same
        machine, dead pid), or this process's own key under a lease it gave up for lost (etcd
        renews every lease when it restarts, so a lease can outlive our estimate): revoke it so
        peers requeue its work now; or a live twin: wait up to ttl for it to expire, then refuse
        to start."""
        deadline = time.monotonic() + self.settings.ttl + 1
        while (kv := self.registry.get(self.keys.host(self.host))[0]) is not None:
            info = _decode_host(kv.value)
            if (
                info is not None
                and info.machine == machine_id()
                and (info.pid == os.getpid() or not _pid_alive(info.pid))
            ):
                log.info("revoking lease %x of this host's previous incarnation (pid %d)", kv.lease, info.pid)
                self.registry.revoke(kv.lease)
                continue
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"host id {self.host!r} is already live in namespace {self.keys.namespace!r}"
                    f"{f' (pid {info.pid})' if info else ''}: pick another --host-id"
                )
            time.sleep(0.2)

    def _register(self) -> None:
        lease = self.lease.start()
        key = self.keys.host(self.host)
        result = self.registry.txn([Compare(key, "create", "==", 0)], [Put(key, self._host_info().to_bytes(), lease)])
        if not result.succeeded:
            self.lease.stop()
            raise ConfigError(f"host id {self.host!r} was taken while joining: pick another --host-id")

    def _host_info(self) -> HostInfo:
        return HostInfo(
            id=self.host,
            capacity=self.settings.capacity,
            running=len(self._owner_of),
            labels=dict(self.settings.labels),
            version=__version__,
            started_at=self._started_at,
            pid=os.getpid(),
            machine=machine_id(),
            address=_ADDRESS,
        )

    def _host_put(self) -> Put:
        return Put(self.keys.host(self.host), self._host_info().to_bytes(), self.lease.lease)

    # --- the loop ----------------------------------------------------------------------------

    def _pass(self) -> None:
        steps: list[Callable[[], str | None]] = [
            self._step_lease,
            self._step_results,
            self._step_orphans,
            self._step_cancels,
            self._step_timeouts,
            self._step_claim,
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
        if self.lease.is_alive:
            return None
        lost = len(self._owner_of)
        if self.lease.lease:
            self._stale_leases.append(self.lease.lease)
        if self._held or self.pool.idle() < self.pool.size:  # once: this step repeats while etcd is away
            self.pool.reset()
        self._held.clear()
        self._owner_of.clear()
        self._claims_unsure = False  # whatever that claim was, it went with the lease
        for stale in self._stale_leases:
            self.registry.revoke(stale)  # so peers requeue now, not when it expires
        self._stale_leases.clear()
        self._retire_predecessor()  # the keeper may have dropped a lease etcd still holds
        self._register()
        return f"lost lease, stopped {lost} episodes; rejoined with lease {self.lease.lease:x}"

    def _step_results(self) -> str | None:
        now = time.time()
        while True:
            try:
                done = self.pool.results.get_nowait()
            except queue.Empty:
                break
            self._record_done(done, now)
        now_m = time.monotonic()
        due = [(c, h) for c, h in self._held.items() if h.finals and (h.commit_due(now_m) or self._draining)]
        pairs = self._pairable(sum(1 for _, h in due if len(h.finals) == len(h.records)))
        committed = fenced = 0
        claimed: list[str] = []
        for claim_id, held in due:
            last = len(held.finals) == len(held.records)
            finals = list(held.finals.values())
            markers = self._cancel_seen.intersection(held.finals)
            pair = pairs.pop() if last and pairs else None
            ok, won = self._commit(held, finals, last, markers, pair)
            if ok:
                committed += len(finals)
                self._cancel_seen -= markers
                for record in finals:
                    del held.records[record.id]
                    self._owner_of.pop(record.id, None)
                held.finals.clear()
                if not held.records:
                    del self._held[claim_id]
            else:
                fenced += self._resync(claim_id, held)
            if won is not None:
                self._hold(*won)
                claimed += won[0].episode_ids
            elif pair is not None:
                self._forget([pair[0]])
        lines = [
            f"committed {committed} episodes" if committed else "",
            f"claimed {_summary(claimed)}" if claimed else "",
            f"fenced off: {fenced} results not committed (episodes were taken over)" if fenced else "",
        ]
        return "; ".join(line for line in lines if line) or None

    def _pairable(self, freed: int) -> list[tuple[QueueEntry, dict[str, Versioned]]]:
        """Entries to claim in the same txns as the commits that free ``freed`` workers: one
        round trip per episode instead of two, in the steady state of a busy mesh."""
        spare = min(freed, self.pool.idle())
        if spare == 0 or self._draining or not self.lease.is_alive:
            return []
        return self._candidates(spare)

    def _commit(
        self,
        held: _Held,
        finals: list[EpisodeRecord],
        last: bool,
        markers: set[str],
        pair: tuple[QueueEntry, dict[str, Versioned]] | None,
    ) -> tuple[bool, tuple[Claim, list[EpisodeRecord]] | None]:
        if pair is None:
            return self.ledger.commit(held.claim, finals, last=last, extra=[self._host_put()], cancelled=markers), None
        try:
            return self.ledger.commit_and_claim(
                held.claim,
                finals,
                last=last,
                cancelled=markers,
                host=self.host,
                lease=self.lease.lease,
                entry=pair[0],
                records=pair[1],
                extra=[self._host_put()],
            )
        except RegistryError:
            self._claims_unsure = True  # the claim half may have been applied: look once etcd answers
            raise

    def _record_done(self, done: Done, now: float) -> None:
        claim_id = self._owner_of.get(done.episode_id)
        held = self._held.get(claim_id) if claim_id else None
        if held is None or done.episode_id not in held.records:
            return  # a result from a claim we no longer hold
        record = held.records[done.episode_id]
        if done.attempt != record.attempt:
            return  # a cancelled earlier attempt, finishing after we claimed the episode again
        if done.kind == "released":
            final = give_back(record, now, done.error or "released")
        elif done.kind == "timeout" and record.spec.on_timeout == "retry" and record.attempt < record.spec.max_attempts:
            final = finish_attempt(record, State.PENDING, now, done.error, done.result)
        else:
            final = finish_attempt(record, _DONE_STATES.get(done.kind, State.FAILED), now, done.error, done.result)
        if not held.finals:
            held.first_final_at = time.monotonic()
        held.finals[done.episode_id] = final

    def _resync(self, claim_id: str, held: _Held) -> int:
        """A commit was fenced off. If our claim key is gone, so is the claim: drop it and stop
        its episodes (returns how many). If it still lives, nobody else can have touched its
        records (requeues need the key gone): an earlier commit of ours landed without our
        hearing back, so forget the episodes it committed and keep the rest."""
        kv, _ = self.registry.get(self.keys.claim(self.host, claim_id))
        if kv is None or kv.create_revision != held.claim.token:
            self._drop_claim(claim_id)
            return len(held.records)
        current = self.ledger.read(list(held.records))
        for episode_id in list(held.records):
            versioned = current.get(episode_id)
            if versioned is None or versioned.mod_revision != held.claim.token:
                del held.records[episode_id]
                held.finals.pop(episode_id, None)
                self._owner_of.pop(episode_id, None)
        if not held.records:  # all committed: only the claim key is left to go
            self.ledger.commit(held.claim, [], last=True)
            del self._held[claim_id]
        return 0

    def _drop_claim(self, claim_id: str) -> None:
        held = self._held.pop(claim_id, None)
        if held is None:
            return
        for episode_id in held.records:
            self._owner_of.pop(episode_id, None)
            self.pool.cancel(episode_id)

    def _step_orphans(self) -> str | None:
        requeued: list[str] = []
        while True:
            try:
                orphan = self._orphans.get_nowait()
            except queue.Empty:
                break
            if self._live_leases.get(orphan.host) == orphan.lease and orphan.host != self.host:
                continue  # the owner is alive: it committed or released this claim itself
            if orphan.host == self.host and orphan.lease == self.lease.lease:
                continue  # our own commit deleted it
            reason = f"host {orphan.host} lost its lease"
            try:
                requeued += self.ledger.requeue(orphan.host, orphan.claim_id, orphan.episode_ids, reason)
            except RegistryError:
                self._orphans.put(orphan)  # idempotent: try again next pass, or nobody would
                raise
        return f"requeued {len(requeued)} episodes of dead hosts" if requeued else None

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

    def _step_claim(self) -> str | None:
        free = self.pool.idle()
        if free == 0 or self._draining or not self.lease.is_alive:
            return None
        adopted = self._adopt_claims() if self._claims_unsure else []
        free = self.pool.idle()
        candidates = self._candidates(free) if free else []
        claimed: list[str] = []
        for entry, records in candidates:
            try:
                won = self.ledger.claim(self.host, self.lease.lease, entry, records, extra=[self._host_put()])
            except RegistryError:
                self._claims_unsure = True  # it may have been applied: look once etcd answers
                raise
            if won is None:
                self._forget([entry])  # a peer claimed it, or a cancel changed it
                continue
            self._hold(*won)
            claimed += won[0].episode_ids
        if claimed and self.pool.idle():
            self.wake()
        line = f"claimed {_summary(claimed)}" if claimed else None
        if adopted:
            line = f"adopted {_summary(adopted)} (their claim's answer was lost)" + (f"; {line}" if line else "")
        return line

    def _adopt_claims(self) -> list[str]:
        """After a claim txn that got no answer: hold the claims of ours that etcd has and we
        do not know, or their episodes would stay running (on no worker) as long as our lease.
        The pass that lost the answer left a worker idle for it."""
        prefix = self.keys.host_claims(self.host)
        adopted: list[str] = []
        for kv in self.registry.range(prefix).kvs:
            claim_id = self.keys.name_of(kv.key, prefix)
            if kv.lease != self.lease.lease or claim_id in self._held or not self.pool.idle():
                continue
            ids = claim_episode_ids(kv)
            current = self.ledger.read(ids)
            running = [current[i].record for i in ids if i in current and current[i].mod_revision == kv.create_revision]
            if ids and len(running) == len(ids):
                self._hold(Claim(self.host, claim_id, kv.create_revision, kv.lease, tuple(ids)), running)
                adopted += ids
        self._claims_unsure = False
        return adopted

    def _candidates(self, free: int) -> list[tuple[QueueEntry, dict[str, Versioned]]]:
        """Entries to claim, one per idle worker, from the queue as the watch delivered it
        (peers woken by one event pick different random entries among the oldest, so they
        rarely collide), with their records read in one round trip for the claim txns."""
        with self._events_lock:
            oldest = list(islice(self._queue.values(), 2 * free))
        entries = [e for e in (decode_entry(self.keys, kv) for kv in oldest) if e is not None]
        self._forget_corrupt(oldest, entries)
        random.shuffle(entries)
        chosen = entries[:free]
        records = self.ledger.read([i for entry in chosen for i in entry.ids])
        out: list[tuple[QueueEntry, dict[str, Versioned]]] = []
        unclaimable: list[QueueEntry] = []
        for entry in chosen:
            listed = {i: records[i] for i in entry.ids if i in records}
            if any(v.record.state is State.PENDING for v in listed.values()):
                out.append((entry, listed))
            else:
                unclaimable.append(entry)
        # Entries whose records are gone or do not decode: forget them (until the watch brings
        # a new version), or being oldest they would be chosen first on every pass and starve
        # the rest.
        self._forget(unclaimable)
        return out

    def _forget(self, entries: list[QueueEntry]) -> None:
        """Drop entries from the local queue unless the watch brought a newer version since."""
        with self._events_lock:
            for entry in entries:
                kv = self._queue.get(entry.name)
                if kv is not None and kv.mod_revision == entry.mod_revision:
                    del self._queue[entry.name]

    def _forget_corrupt(self, seen: list[KeyValue], decoded: list[QueueEntry]) -> None:
        good = {e.name for e in decoded}
        with self._events_lock:
            for kv in seen:
                name = self.keys.name_of(kv.key, self.keys.queue())
                if name not in good and self._queue.get(name) is kv:
                    del self._queue[name]

    def _hold(self, claim: Claim, running: list[EpisodeRecord]) -> None:
        self._held[claim.claim_id] = _Held(claim, {r.id: r for r in running})
        for record in running:
            self._owner_of[record.id] = claim.claim_id
        self.pool.dispatch([WorkItem(r.id, r.attempt, r.spec, r.history[-1].batch) for r in running])

    # --- leaving -----------------------------------------------------------------------------

    def _hand_back(self) -> None:
        """End of a drain: stop what still runs and put it back in the queue in one txn per claim."""
        if self._held:
            self.pool.reset()
        now = time.time()
        for held in list(self._held.values()):
            finals = [*held.finals.values()]
            finals += [
                give_back(r, now, f"released by draining host {self.host}")
                for i, r in held.records.items()
                if i not in held.finals
            ]
            try:
                self.ledger.commit(
                    held.claim, finals, last=True, cancelled=self._cancel_seen.intersection(held.records)
                )
            except RegistryError as exc:
                log.warning("could not hand back claim %s (%s); its lease expiry will", held.claim.claim_id, exc)
        log.info("drained: handed back %d claims", len(self._held))
        self._held.clear()
        self._owner_of.clear()

    def _shutdown(self) -> None:
        self._stop.set()  # the watch thread must be gone before the registry closes under it
        for thread in self._watch_threads:
            if thread.is_alive():
                thread.join(5)
        for follower in self.followers:
            follower.close()
        self.pool.close()
        self.lease.stop(revoke=True)
        self.registry.close()

    # --- the watch thread --------------------------------------------------------------------

    def _watch_loop(self, follower: Follower) -> None:
        while not self._stop.is_set():
            events = follower.poll(1.0)
            if events:
                self._on_events(events)

    def _on_events(self, events: list[Event]) -> None:
        keys = self.keys
        wake = False
        with self._events_lock:
            for event in events:
                key = event.kv.key
                if key.startswith(keys.queue()):
                    episode_id = keys.name_of(key, keys.queue())
                    if event.type == "put":
                        self._queue[episode_id] = event.kv
                        wake = True
                    else:
                        self._queue.pop(episode_id, None)
                elif key.startswith(keys.claims()) and event.type == "delete" and event.prev is not None:
                    host, _, claim_id = keys.name_of(key, keys.claims()).partition("/")
                    self._orphans.put(_Orphan(host, claim_id, claim_episode_ids(event.prev), event.prev.lease))
                    wake = True
                elif key.startswith(keys.cancels()) and event.type == "put":
                    self._cancels.add(keys.name_of(key, keys.cancels()))
                    wake = True
                elif key.startswith(keys.hosts()):
                    self._on_host_event(event)
                elif key == keys.leader():
                    wake |= self.leadership.on_event(event)
        if wake:
            self.wake()

    def _on_host_event(self, event: Event) -> None:
        host = self.keys.name_of(event.kv.key, self.keys.hosts())
        if event.type == "put":
            self._live_leases[host] = event.kv.lease
        else:
            self._live_leases.pop(host, None)

    def _on_relist(self, revision: int) -> None:
        """The control watch fell behind compaction: re-read live hosts at the revision it
        resumes from, and sweep for orphans whose claim-delete events we missed."""
        self._load_hosts(revision)
        self.leadership.sweep_due = True
        self.wake()

    def _load_hosts(self, revision: int | None) -> int:
        hosts = self.registry.range(self.keys.hosts(), revision=revision)
        with self._events_lock:
            self._live_leases = {self.keys.name_of(kv.key, self.keys.hosts()): kv.lease for kv in hosts.kvs}
        return hosts.revision if revision is None else revision

    def _load_queue(self, revision: int) -> None:
        """The queue as of ``revision`` (where its watch resumes)."""
        queue: dict[str, KeyValue] = {}
        for kv, _ in self.catalog.scan(self.keys.queue(), revision):
            queue[self.keys.name_of(kv.key, self.keys.queue())] = kv
        with self._events_lock:
            self._queue = queue
        self.wake()


def _summary(ids: list[str]) -> str:
    return ", ".join(ids) if len(ids) <= 3 else f"{len(ids)} episodes ({ids[0]} ... {ids[-1]})"


def _decode_host(data: bytes) -> HostInfo | None:
    try:
        return HostInfo.from_bytes(data)
    except Exception:
        return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
