"""The queue entries in this host's mailbox, in the order they arrived: ``OwnedQueue``.

Every queue entry is written to its owner's mailbox, ``queue/<host>/`` (ledger/placement.py),
and each agent's queue watch follows its own (puts only), so an entry reaches its owner and no
other agent: owners never race for an entry, and no agent needs delete events. An entry
leaves when its owner's claim of it is answered (won, or lost to a thief, a cancel or the
leader's move of it), or when its records prove unclaimable. Entries that land in a mailbox
nobody empties (a host gone, draining or sick) are the leader's to move (agent/mover.py).

Threads: the queue-watch thread offers entries and replaces them all on a re-list; the loop
takes candidates and is done with them (agent/watcher.py, agent/claimer.py). ``_lock`` guards
``_entries``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from itertools import islice

from ..keys import Keys
from ..ledger.queue import QueueEntry, decode_entry, owner_and_name
from ..registry import KeyValue


class OwnedQueue:
    def __init__(self, host: str, keys: Keys) -> None:
        self.host = host  # whose mailbox: ours
        self.keys = keys
        self._lock = threading.Lock()
        # name -> entry, as they arrived: oldest first, but for entries the leader moved in
        self._entries: dict[str, QueueEntry] = {}

    # --- from the queue watch ------------------------------------------------------------

    def offer(self, puts: Iterable[KeyValue]) -> bool:
        """Queue puts in our mailbox: keep each entry (decoded once here, not on each pass that
        looks at it; a corrupt one is logged and dropped). Returns whether one was kept."""
        kept = False
        with self._lock:
            for kv in puts:
                entry = decode_entry(self.keys, kv)
                if entry is None:
                    self._entries.pop(owner_and_name(self.keys, kv.key)[1], None)
                    continue
                self._entries[entry.name] = entry
                kept = True
        return kept

    def replace(self, entries: Mapping[str, QueueEntry]) -> None:
        """The entries of our mailbox as a re-list found them (the watch resumes from there)."""
        with self._lock:
            self._entries = dict(entries)

    # --- from the loop -------------------------------------------------------------------

    def head(self, count: int) -> list[QueueEntry]:
        """The first ``count`` entries we own (the oldest, mostly: see ``_entries``)."""
        with self._lock:
            return list(islice(self._entries.values(), count))

    def done_with(self, entries: Iterable[QueueEntry]) -> set[str]:
        """Drop entries a claim was answered for, or found unclaimable, unless the watch brought
        a newer version since. Returns the names of those we held (the rest were stolen)."""
        held: set[str] = set()
        with self._lock:
            for entry in entries:
                queued = self._entries.get(entry.name)
                if queued is None or queued.owner != entry.owner:
                    continue
                held.add(entry.name)
                if queued.mod_revision == entry.mod_revision:
                    del self._entries[entry.name]
        return held

    def queued(self, names: Iterable[str]) -> set[str]:
        """Which of ``names`` are in the queue we own."""
        with self._lock:
            return {n for n in names if n in self._entries}

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
