"""Where a queue entry is written: the mailbox of its owner (design/queue.md, "Mailboxes").

An entry lives under ``queue/<owner>/<name>``, its owner chosen by whoever writes it (a client
submitting, an agent requeueing or retrying, the leader moving it) by weighted rendezvous
hashing over the live hosts' weights as the writer knows them (ledger/owners.py). Each agent
watches its own mailbox only, so a queue put reaches its owner and no one else (and the
leader, who moves what lands in a mailbox nobody empties: agent/mover.py). A writer whose view
is stale may pick a host that just left or stopped taking work; with no host to pick it writes
to ``UNOWNED``. Either way the leader moves the entry, so a stale view costs a move, never an
entry.

``Placement`` holds the weights an agent knows from its control watch; ``HostsPlacement`` reads
them from etcd for a client (at most once per ``max_age``) and spreads its entries instead of
hashing them (``Spread``): a client writes whole runs at once, and a run whose episodes fill
every slot a whole number of times finishes on time only if every host gets its share exactly
(hashing gave 48 equal hosts 10 to 30 of 960 entries; the tail waited a round for thieves);
dealt in runs of a host's capacity, its workers start with one claim and end with one commit.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections.abc import Callable, Collection, Mapping

from ..errors import CorruptRecord
from ..keys import Keys
from ..model import HostInfo
from ..registry import Registry
from . import owners

UNOWNED = "~"  # the mailbox of entries written while no host took work ('~' starts no host id)

Place = Callable[[str], str]  # an entry's name -> the mailbox (host id or UNOWNED) to write it to


def unowned(name: str) -> str:
    """Placement without a view of the hosts (tests, tools): the leader moves these."""
    return UNOWNED


class Placement:
    """Live hosts' weights as their records say (0: takes no work), and the owner of an entry
    among them. The control-watch thread writes weights; any thread places. ``_lock`` guards
    ``_weights``."""

    def __init__(self, host: str = "", own_weight: Callable[[], float] = lambda: 0.0) -> None:
        self.host = host  # ours, weighed by ``own_weight`` until our record is seen
        self._own_weight = own_weight
        self._lock = threading.Lock()
        self._weights: dict[str, float] = {}

    def __call__(self, name: str) -> str:
        """The mailbox for entry ``name``."""
        with self._lock:
            return owners.owner(name, self._with_us()) or UNOWNED

    def takes_work(self, host: str) -> bool:
        """Whether ``host`` is live with a weight: a mailbox someone empties."""
        with self._lock:
            return self._with_us().get(host, 0) > 0

    def anyone(self) -> bool:
        """Whether any live host takes work (else every entry is placed ``UNOWNED``)."""
        with self._lock:
            return any(weight > 0 for weight in self._with_us().values())

    def weigh(self, host: str, weight: float) -> bool:
        """A host's weight from its record. True: it is new, or its weight changed."""
        with self._lock:
            known = self._weights.get(host)
            self._weights[host] = weight
            return known != weight

    def unweigh(self, host: str) -> None:
        """A host left."""
        with self._lock:
            self._weights.pop(host, None)

    def load(self, weights: Mapping[str, float]) -> None:
        """Every live host's weight, as listed."""
        with self._lock:
            self._weights = dict(weights)

    def _with_us(self) -> Mapping[str, float]:
        if not self.host or self.host in self._weights:
            return self._weights
        return {**self._weights, self.host: self._own_weight()}


class Spread:
    """Entries dealt over hosts in proportion to their weights, in runs of a host's weight (its
    capacity: as many entries as it has workers, so that one claim starts them all and their
    results end in one commit), each run to the host furthest behind its share (stride
    scheduling: a host's pass grows by 1 per run of ``weight`` entries, the lowest pass takes
    the next run), so any n entries give each host its share within one run. Ties go in an
    order drawn per instance, so that clients start at different hosts. Not thread-safe: its
    owner locks."""

    def __init__(self) -> None:
        self._weights: dict[str, float] = {}
        self._heap: list[tuple[float, float, str]] = []  # (pass, tie, host), hosts with a weight
        self._ties: dict[str, float] = {}
        self._rng = random.Random()
        self._host = ""  # the host of the run being dealt, and the entries that run has left
        self._left = 0

    def load(self, weights: Mapping[str, float]) -> None:
        """The live hosts' weights. A host keeps its pass; a newcomer starts level with the
        lowest, so that it is not handed a backlog of the shares it missed."""
        passes = {host: done for done, _, host in self._heap}
        floor = self._heap[0][0] if self._heap else 0.0
        self._weights = {host: weight for host, weight in weights.items() if weight > 0}
        for host in self._weights:
            self._ties.setdefault(host, self._rng.random())
        self._heap = [(passes.get(h, floor), self._ties[h], h) for h in self._weights]
        heapq.heapify(self._heap)
        if self._host not in self._weights:
            self._left = 0

    def hosts(self) -> Collection[str]:
        """The hosts entries are dealt to: those with a weight."""
        return self._weights.keys()

    def __call__(self, name: str) -> str:
        if self._left > 0:
            self._left -= 1
            return self._host
        if not self._heap:
            return UNOWNED
        done, tie, host = self._heap[0]
        run = max(1, int(self._weights[host]))
        heapq.heapreplace(self._heap, (done + run / self._weights[host], tie, host))
        self._host, self._left = host, run - 1
        return host


class HostsPlacement:
    """A client's placement: its entries spread over the live hosts (``Spread``), their
    weights read from etcd again once ``max_age`` has passed (a stale view only costs the
    leader a move). Threads: any; ``_lock`` guards the view and the spread."""

    def __init__(self, registry: Registry, keys: Keys, max_age: float = 1.0) -> None:
        self.registry = registry
        self.keys = keys
        self.max_age = max_age
        self._lock = threading.Lock()
        self._spread = Spread()
        self._read_at = -max_age

    def __call__(self, name: str) -> str:
        with self._lock:
            if time.monotonic() - self._read_at >= self.max_age:
                self._spread.load(read_weights(self.registry, self.keys))
                self._read_at = time.monotonic()
            return self._spread(name)

    def missed(self, owners: Collection[str]) -> bool:
        """Whether a submission whose entries went to ``owners`` left a host that takes work
        (in our view) without a share, or wrote to ``UNOWNED``: only then do idle hosts need a
        client's queued marker to steal (agent/peers.py). A host with a share steals once its
        own mailbox runs dry, and one that joined since our view on its first pass."""
        with self._lock:
            return UNOWNED in owners or any(host not in owners for host in self._spread.hosts())


def read_weights(registry: Registry, keys: Keys) -> dict[str, float]:
    """Each live host's weight (0 for a record that does not decode: it takes no work)."""
    weights: dict[str, float] = {}
    for kv in registry.range(keys.hosts()).kvs:
        host = keys.name_of(kv.key, keys.hosts())
        try:
            weights[host] = HostInfo.from_bytes(kv.value, host).weight
        except CorruptRecord:
            weights[host] = 0
    return weights
