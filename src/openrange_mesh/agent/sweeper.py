"""The sweep: running episodes whose claim key is gone are put back, the net under the heirs'
requeues (agent/orphans.py); and, with it, retention (ledger/retention.py).

Both read every value of the namespace, which holds every record kept (a week by default): ~1 s
of the loop at 100,000 single records, and more as history grows. The leader's periodic cycle
therefore reads a slice of ``SLICE_KEYS`` values per pass, at most every ``SLICE_EVERY``
seconds, so a pass waits ~10 ms for it, never the whole namespace, and the leader's CPU for it
is bounded (a cycle over N values takes about N / SLICE_KEYS x SLICE_EVERY seconds). A cycle
reads the claims and the live hosts once, at its start, and every slice at that revision: a
record running under a claim absent from that view is an orphan, and ``Ledger.requeue`` checks
it again against etcd's present (claim absent, record unchanged), so a view that aged during
the cycle nominates at worst episodes that are left alone. A revision compacted meanwhile
starts a new view where the cycle was. A sweep that must be whole at once (an agent that joined
or was elected, a watch that missed events) runs all slices in one call (``sweep``).

A value retention cannot collect (etcd refuses its deletes: ``_refused``) is logged once a cycle
and left for the next; the slice's requeues and the cycle go on. Its slice raised before it
moved on, so every later one read the same page and raised again, and since a cycle starts only
when none runs, the periodic sweep never requeued an orphan again. An outage still ends the
pass (``Agent._pass``), and the next pass goes on with the same slice.

Threads: the loop only (``Leadership.step``), so no lock.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import partial

from ..errors import Compacted, RegistryError, TooLarge
from ..keys import Keys
from ..ledger.ledger import Ledger
from ..ledger.retention import collect
from ..model import State, decode_in_states, decode_or_none
from ..registry import KeyValue, Registry

log = logging.getLogger(__name__)

SLICE_KEYS = 1000  # values a periodic cycle reads per pass (~10 ms of a 2-core VM's CPU)
SLICE_EVERY = 0.2  # seconds between two slices of a periodic cycle: at most ~5% of a core
_RUNNING = frozenset({State.RUNNING})


@dataclass(frozen=True)
class _View:
    """What a cycle judges its slices against: the claims and the live hosts at ``revision``."""

    revision: int
    claims: frozenset[str]  # "<host>/<claim id>"
    live: frozenset[str]


@dataclass(frozen=True)
class Swept:
    requeued: int = 0
    removed: int = 0  # records retention deleted


class Sweeper:
    def __init__(self, registry: Registry, keys: Keys, ledger: Ledger, *, slice_keys: int = SLICE_KEYS) -> None:
        self.registry = registry
        self.keys = keys
        self.ledger = ledger
        self.slice_keys = slice_keys
        self._view: _View | None = None  # None: no cycle running
        self._start: bytes | None = None  # the key the cycle's next slice starts at
        self._cutoff: float | None = None  # while the cycle collects: acked before this go
        self._refusals = 0  # values the cycle could not collect
        self._next_slice = 0.0  # monotonic

    @property
    def running(self) -> bool:
        return self._view is not None

    def next_slice_at(self) -> float | None:
        """When the running cycle's next slice is due (monotonic); None without a cycle."""
        return self._next_slice if self._view is not None else None

    def start(self, cutoff: float | None = None) -> None:
        """Begin a cycle from the namespace's first record; ``cutoff``: it also collects records
        acked at or before that time (``time.time()`` clock)."""
        self._view, self._start, self._cutoff = self._read_view(), None, cutoff
        self._refusals = 0
        self._next_slice = 0.0

    def stop(self) -> None:
        """No longer leading: the cycle ends where it is (a new leader sweeps whole)."""
        self._view = None

    def finish(self) -> Swept:
        """The running cycle's remaining slices, at once."""
        requeued = removed = 0
        while self._view is not None:
            swept = self._slice()
            requeued, removed = requeued + swept.requeued, removed + swept.removed
        return Swept(requeued, removed)

    def step(self, now: float | None = None) -> Swept:
        """The running cycle's next slice, if one is due."""
        now = time.monotonic() if now is None else now
        if self._view is None or now < self._next_slice:
            return Swept()
        self._next_slice = now + SLICE_EVERY
        return self._slice()

    def _slice(self) -> Swept:
        assert self._view is not None
        prefix = self.keys.episodes()
        try:
            page = self.registry.range(prefix, start=self._start, revision=self._view.revision, limit=self.slice_keys)
        except Compacted:  # the view's revision is gone: a new one, from where the cycle was
            self._view = self._read_view()
            page = self.registry.range(prefix, start=self._start, revision=self._view.revision, limit=self.slice_keys)
        swept = Swept(self._requeue(self._view, page.kvs), self._collect(page.kvs))
        if page.more and page.kvs:
            self._start = page.kvs[-1].key + b"\0"
        else:
            self._view = None
        return swept

    def _read_view(self) -> _View:
        claims = self.registry.range(self.keys.claims())
        hosts = self.registry.range(self.keys.hosts(), revision=claims.revision)
        return _View(
            claims.revision,
            frozenset(self.keys.name_of(kv.key, self.keys.claims()) for kv in claims.kvs),
            frozenset(self.keys.name_of(kv.key, self.keys.hosts()) for kv in hosts.kvs),
        )

    def _requeue(self, view: _View, kvs: list[KeyValue]) -> int:
        orphans: dict[tuple[str, str], list[str]] = defaultdict(list)
        running = partial(decode_in_states, states=_RUNNING)
        for kv in kvs:
            for record in decode_or_none(running, kv.value, kv.key) or ():
                if record.owner and record.claim and f"{record.owner}/{record.claim}" not in view.claims:
                    orphans[(record.owner, record.claim)].append(record.id)
        requeued = 0
        for (host, claim_id), ids in orphans.items():
            # what the orphans step would have said when the owner's key is gone too: a new
            # leader's first sweep often comes before the dead host's heir gets to it
            reason = f"claim of host {host} vanished" if host in view.live else f"host {host} lost its lease"
            requeued += len(self.ledger.requeue(host, claim_id, ids, reason))
        return requeued

    def _collect(self, kvs: list[KeyValue]) -> int:
        if self._cutoff is None or not kvs:
            return 0
        try:
            return collect(self.registry, self.keys, kvs, self._cutoff)
        except RegistryError as exc:
            if not _refused(exc):
                raise
        # one value at a time, so that one etcd refuses holds back none of the rest (those a
        # txn of several deleted already fail their compares now, at a txn each)
        removed = 0
        for kv in kvs:
            try:
                removed += collect(self.registry, self.keys, [kv], self._cutoff)
            except RegistryError as exc:
                if not _refused(exc):
                    raise
                self._refusals += 1
                if self._refusals == 1:
                    log.warning("retention could not collect %r (%s): left for the next cycle", kv.key, exc)
        return removed


def _refused(exc: RegistryError) -> bool:
    """Whether etcd refused a request for what it holds (too large; a bare ``RegistryError`` is
    a refusal, errors.py: too many ops ...), which it will refuse again, and other requests
    need not meet; not an outage, a full etcd or a lost lease, which every request meets."""
    return type(exc) is RegistryError or isinstance(exc, TooLarge)


def sweep(registry: Registry, keys: Keys, ledger: Ledger) -> int:
    """A whole sweep at once (no retention): how many episodes it requeued."""
    sweeper = Sweeper(registry, keys, ledger)
    sweeper.start()
    return sweeper.finish().requeued
