"""Write-behind of EpisodeService's records while nobody else can read its registry.

A ``memory://`` registry the service opened itself (an unnamed store, and no dashboard reading
it from another thread) has one reader: the service. A record nobody reads need not be encoded
and written at each transition, which is most of what a service costs over a plain dict. So
while the registry is private, the records of the episodes it starts are kept here and written
in batched txns: whenever they fill one, and before any read through the service. A read sees
what writing at each transition would have shown: an episode started and not stopped reads as
running, a stopped one as its final record. The records themselves are the ledger's (its pure
transitions, ledger/records.py): only when they are written differs.

Kept episodes hold no claim key and no lease (nobody could take one over, so nothing needs
fencing); their attempts record no fencing token. Once the registry is handed out
(``share``), everything kept is written, and the service writes through the ledger again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from .keys import Keys
from .ledger.records import start_together
from .ledger.txns import put_chunks
from .model import EpisodeRecord
from .registry import MAX_TXN_OPS, Put, Registry

# Final records kept until they fill one txn: holding more saves nothing per record (the txn's
# own cost is spread already) and would make the next read pay for more at once.
FLUSH_AT = MAX_TXN_OPS


class WriteBehind:
    """Threads: any thread that calls the service. ``_lock`` guards ``_running``, ``_finished``
    and ``_private``, and is held while they are written: two writers could otherwise put an
    episode's running record after its final one."""

    def __init__(self, registry: Registry, keys: Keys, *, private: bool) -> None:
        self._registry = registry
        self._keys = keys
        self._lock = threading.Lock()
        self._private = private
        self._running: dict[str, EpisodeRecord] = {}  # started here and not written yet
        self._finished: list[Put] = []  # final records, encoded, not written yet

    def start(self, records: Sequence[EpisodeRecord], host: str) -> list[EpisodeRecord] | None:
        """Start fresh records under one claim (``start_together``), kept here: the running
        records; None when the registry is not private (the caller writes through the ledger)."""
        if not self._private:  # read unlocked: a shared registry never becomes private again
            return None
        _, running = start_together(records, host, time.time())
        with self._lock:
            if not self._private:
                return None
            for record in running:
                self._running[record.id] = record
        return running

    def finish(self, finals: Sequence[EpisodeRecord]) -> None:
        """Final records of episodes ``start`` kept. Encoded now, so that a record that does not
        encode fails the stop that made it, as a commit through the ledger would."""
        puts = [Put(self._keys.episode(r.id), r.to_bytes()) for r in finals]
        with self._lock:
            for record in finals:
                self._running.pop(record.id, None)
            self._finished += puts
            if len(self._finished) >= FLUSH_AT or not self._private:
                self._write_locked()

    def flush(self) -> None:
        """Write everything kept (the service calls this before every read)."""
        if self._running or self._finished:  # read unlocked: a caller's own writes are seen
            with self._lock:
                self._write_locked()

    def share(self) -> None:
        """The registry is being handed out: write everything kept, keep nothing from now on."""
        with self._lock:
            self._write_locked()
            self._private = False

    def _write_locked(self) -> None:
        puts = [Put(self._keys.episode(i), r.to_bytes()) for i, r in self._running.items()] + self._finished
        for chunk in put_chunks(puts):
            self._registry.txn([], chunk)
        self._running.clear()  # written as running: their final records come through finish
        self._finished = []
