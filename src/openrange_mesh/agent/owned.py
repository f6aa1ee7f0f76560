"""The queue entries this host owns, oldest first: ``OwnedQueue``.

Every queue entry has one owner among the live hosts, by weighted rendezvous hashing of its name
over the weights their records give (ledger/owners.py), which every agent computes alone and
alike. Each agent keeps only the entries it owns, fed by its queue watch (puts only), so owners
never race for an entry and no agent needs delete events. An entry leaves when its owner's claim
of it is answered (won, or lost to a thief or a cancel), or when its records prove unclaimable.

The owner in a set of hosts stays the owner in every subset that holds it: a host joining only
takes entries (peers drop those it owns now), while one leaving or changing its weight can give
some to us: the caller re-lists the queue then (``weigh`` says when).

Threads: the queue-watch thread offers entries and replaces them all on a re-list; the
control-watch thread changes weights; the loop takes candidates and is done with them
(agent/watcher.py, agent/claimer.py). ``_lock`` guards ``_entries`` and ``_weights`` together:
an entry is judged and kept under the same lock under which a newcomer's weight drops the
entries it owns, so a put and a join never cross.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from itertools import islice

from ..keys import Keys
from ..ledger import owners
from ..ledger.queue import QueueEntry, decode_entry
from ..registry import KeyValue


class OwnedQueue:
    def __init__(self, host: str, keys: Keys, own_weight: Callable[[], float]) -> None:
        self.host = host
        self.keys = keys
        self._own_weight = own_weight  # ours until our record is seen (0 while we take no work)
        self._lock = threading.Lock()
        self._entries: dict[str, QueueEntry] = {}  # name -> entry, oldest first
        self._weights: dict[str, float] = {}  # host -> its weight as its record says

    # --- from the watches ----------------------------------------------------------------

    def offer(self, puts: Iterable[tuple[str, KeyValue]]) -> tuple[bool, list[tuple[str, int]]]:
        """Queue puts (name, kv): keep the entries we own (decoded once here, not on each pass
        that looks at them; a corrupt one is logged and dropped). Returns whether one was
        kept, and (owner, mod_revision) of each that a peer owns."""
        kept = False
        theirs: list[tuple[str, int]] = []
        with self._lock:
            for name, kv in puts:
                owner = owners.owner(name, self._with_us())
                entry = decode_entry(self.keys, kv) if owner == self.host else None
                if entry is None:
                    self._entries.pop(name, None)
                    if owner is not None and owner != self.host:
                        theirs.append((owner, kv.mod_revision))
                    continue
                self._entries[name] = entry
                kept = True
        return kept, theirs

    def owns(self, name: str) -> bool:
        with self._lock:
            return owners.owner(name, self._with_us()) == self.host

    def replace(self, entries: Mapping[str, QueueEntry]) -> None:
        """The entries we own as a re-list found them (the queue watch resumes from there)."""
        with self._lock:
            self._entries = dict(entries)

    def weigh(self, host: str, weight: float) -> bool:
        """A host's weight, from its record. A newcomer only takes entries: drop those it owns
        now. True when a known host's weight changed: it may have given us entries, re-list."""
        with self._lock:
            known = self._weights.get(host)
            self._weights[host] = weight
            if known is None:
                if weight and host != self.host:
                    weights = self._with_us()
                    self._entries = {n: e for n, e in self._entries.items() if owners.owner(n, weights) == self.host}
                return False
            return known != weight

    def unweigh(self, host: str) -> None:
        """A host left: the entries it owned are ours or a peer's now (the caller re-lists)."""
        with self._lock:
            self._weights.pop(host, None)

    def load_weights(self, weights: Mapping[str, float]) -> None:
        """Every live host's weight, as listed (a queue re-list follows)."""
        with self._lock:
            self._weights = dict(weights)

    # --- from the loop -------------------------------------------------------------------

    def head(self, count: int) -> list[QueueEntry]:
        """The oldest ``count`` entries we own."""
        with self._lock:
            return list(islice(self._entries.values(), count))

    def done_with(self, entries: Iterable[QueueEntry]) -> set[str]:
        """Drop entries a claim was answered for, or found unclaimable, unless the watch brought
        a newer version since. Returns the names of those we held (the rest were stolen)."""
        held: set[str] = set()
        with self._lock:
            for entry in entries:
                queued = self._entries.get(entry.name)
                if queued is None:
                    continue
                held.add(entry.name)
                if queued.mod_revision == entry.mod_revision:
                    del self._entries[entry.name]
        return held

    def queued(self, names: Iterable[str]) -> set[str]:
        """Which of ``names`` are in the queue we own."""
        with self._lock:
            return {n for n in names if n in self._entries}

    def _with_us(self) -> Mapping[str, float]:
        """Hosts' weights as their records say; ours until our record is seen."""
        if self.host in self._weights:
            return self._weights
        return {**self._weights, self.host: self._own_weight()}
