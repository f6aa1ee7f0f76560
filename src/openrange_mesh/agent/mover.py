"""The leader's move of queue entries out of mailboxes nobody empties: ``Mover``.

Entries are written to their owner's mailbox as the writer sees the hosts
(ledger/placement.py). The mailbox of a host that left, drains or is sick, the ``~`` mailbox of
entries written while no host took work, and the flat entries of older agents are emptied by
nobody: the leader moves each to the owner it sees now (``Ledger.move``: one txn, fenced by
the entry's and its records' revisions like a claim). So a departure costs one agent reads and
writes in proportion to the departed host's share, and no peer looks at the queue.

How the leader finds them (each step after the event that makes a mailbox one nobody empties,
so nothing falls between them):
* on taking office, one listing of the whole queue (what the last leader left);
* a host leaving or ceasing to take work (the control watch, ``orphaned``): a listing of its
  mailbox;
* every queue put after either (its own watch of ``queue/``, puts only, while it leads): an
  entry written to such a mailbox by a writer whose view was stale.
Thieves may take such entries first (agent/claimer.py): a move that finds an entry gone or
changed leaves it to whoever changed it.

Threads: its watch thread (follows ``queue/`` while we lead), the control-watch thread
(``orphaned``, ``look_again``) and the loop (``step``, which lists and moves). ``_lock`` guards
``_found``, ``_mailboxes`` and ``_everything``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from ..errors import RegistryError
from ..keys import Keys
from ..ledger.catalog import Catalog
from ..ledger.ledger import Ledger
from ..ledger.placement import Placement
from ..ledger.queue import QueueEntry, decode_entry, owner_and_name
from ..registry import KeyValue, Registry
from ..registry.follow import Follower
from .leadership import Leadership

log = logging.getLogger(__name__)

MOVES_PER_PASS = 64  # entries moved in one pass of the loop (each one txn); the rest on the next
JOIN_TIMEOUT = 5.0


class Mover:
    def __init__(
        self,
        registry: Registry,
        keys: Keys,
        catalog: Catalog,
        ledger: Ledger,
        placement: Placement,
        leadership: Leadership,
        *,
        wake: Callable[[], None],
        on_moved: Callable[[int], None] = lambda count: None,
    ) -> None:
        self.registry = registry
        self.keys = keys
        self.catalog = catalog
        self.ledger = ledger
        self.placement = placement
        self.leadership = leadership
        self._wake = wake
        self._on_moved = on_moved
        self._lock = threading.Lock()
        self._found: dict[bytes, QueueEntry] = {}  # key -> an entry in a mailbox nobody empties
        self._mailboxes: set[str] = set()  # hosts whose mailboxes to list
        self._everything = False  # list the whole queue (we took office, or lost events)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watch-queue-all", daemon=True)

    # --- from the control watch ----------------------------------------------------------

    def orphaned(self, host: str) -> None:
        """``host`` left or stopped taking work: if we lead, list its mailbox."""
        if self.leadership.is_leader:
            with self._lock:
                self._mailboxes.add(host)
            self._wake()

    def look_again(self) -> None:
        """Events were lost (a watch fell behind compaction): list the whole queue again."""
        with self._lock:
            self._everything = True

    # --- the loop ------------------------------------------------------------------------

    def step(self) -> str | None:
        """As the leader: list what is due, then move up to ``MOVES_PER_PASS`` entries found
        in mailboxes nobody empties to the owners we see."""
        if not self.leadership.is_leader:
            return None
        with self._lock:
            hosts, self._mailboxes = self._mailboxes, set()
        for host in sorted(hosts):
            try:
                self.found(kv for kv, _ in self.catalog.scan(self.keys.mailbox(host), None))
            except RegistryError:
                with self._lock:
                    self._mailboxes.add(host)  # next pass
                raise
        moved, left = self._move()
        if left:
            self._wake()  # the rest on the next pass
        return f"moved {moved} queue entries out of mailboxes nobody empties" if moved else None

    def _move(self) -> tuple[int, int]:
        """Up to ``MOVES_PER_PASS`` moves; (how many moved, how many are left to move)."""
        if not self.placement.anyone():
            return 0, 0  # no host takes work: entries wait where they are
        with self._lock:
            todo = list(self._found.items())[:MOVES_PER_PASS]
        moved = 0
        for key, entry in todo:
            if not self.placement.takes_work(entry.owner):  # else its host came back and empties it
                moved += self.ledger.move(entry)
            self._forget(key, entry)  # moved, or changed by whoever has it now
        self._on_moved(moved)
        with self._lock:
            return moved, len(self._found)

    def _forget(self, key: bytes, entry: QueueEntry) -> None:
        with self._lock:
            if self._found.get(key) is entry:
                del self._found[key]

    # --- the watch thread ----------------------------------------------------------------

    def found(self, kvs: Iterable[KeyValue]) -> int:
        """Queue entries listed or watched: keep those in a mailbox nobody empties. Returns how
        many were kept."""
        kept = 0
        for kv in kvs:
            owner, _ = owner_and_name(self.keys, kv.key)
            if owner and self.placement.takes_work(owner):
                continue
            entry = decode_entry(self.keys, kv)
            if entry is None:
                continue  # corrupt: claimers pass over it; nothing to move
            with self._lock:
                self._found[kv.key] = entry
            kept += 1
        if kept:
            self._wake()
        return kept

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(JOIN_TIMEOUT)

    def _run(self) -> None:
        follower: Follower | None = None
        while not self._stop.is_set():
            if not self.leadership.is_leader:
                if follower is not None:
                    follower.close()
                    follower = None
                    with self._lock:
                        self._found.clear()
                self._stop.wait(0.5)
                continue
            try:
                follower = follower or self._follow()
                with self._lock:
                    everything, self._everything = self._everything, False
                if everything:
                    follower.relist()
                events = follower.poll(1.0)
            except RegistryError as exc:
                log.warning("the leader could not list the queue: %s; again in a moment", exc)
                self._stop.wait(1.0)
                continue
            self.found(e.kv for e in events)
        if follower is not None:
            follower.close()

    def _follow(self) -> Follower:
        """We took office: list the whole queue, and watch its puts from that revision."""
        follower = Follower(self.registry, self.keys.queue(), puts_only=True, on_relist=self.list_all)
        revision = self.registry.range(self.keys.hosts(), limit=1).revision
        self.list_all(revision)
        follower.start(revision)
        return follower

    def list_all(self, revision: int) -> None:
        """Every entry of the queue at ``revision`` in a mailbox nobody empties (from the watch
        thread: on taking office, and when its watch fell behind compaction)."""
        self.found(kv for kv, _ in self.catalog.scan(self.keys.queue(), revision))
