"""Follow a prefix through outages and compaction: the one place that resumes watches.

A watch resumed from a compacted revision fails; the rule (etcd's and Jepsen's) is to re-list at
the current revision and watch again from there. ``Follower`` restarts the watch at the current
revision and tells its owner through ``on_relist(revision)`` so the owner can re-read, at that
revision, whatever it derived from the events it missed (owners re-list only the small prefixes
they need, not the whole namespace). An owner may also ask for a re-list (``relist``) when its
view of the prefix depends on something else that changed (the agent keeps only the queue
entries it owns, and a host leaving changes which those are).

During an outage a poll that brings nothing proves nothing: a watch still trying to reach etcd
and a quiet one look alike (a new watch reports an outage only once it has lasted the registry's
retry_timeout). So while failing, an empty poll is followed by one read of the prefix, and only
an answer (or an event) ends the outage. (Without it an 8 s partition logged "is back" and then
the first failure's traceback again, every few polls.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..errors import Compacted, RegistryError, Unavailable
from ..registry import Event, Registry, Watch

log = logging.getLogger(__name__)


class Follower:
    def __init__(
        self,
        registry: Registry,
        prefix: bytes,
        *,
        prev_kv: bool = False,
        puts_only: bool = False,
        on_relist: Callable[[int], None] | None = None,
    ) -> None:
        self.registry = registry
        self.prefix = prefix
        self.prev_kv = prev_kv
        self.puts_only = puts_only
        self.on_relist = on_relist
        self.revision = 0  # everything up to here has been delivered
        self._watch: Watch | None = None
        self._failing = False
        self._relist_wanted = False

    def start(self, revision: int) -> None:
        """Deliver events after ``revision`` (the revision of the caller's initial listing)."""
        self.revision = revision

    def poll(self, timeout: float) -> list[Event]:
        """Events since the last poll (possibly none). Never raises RegistryError: an outage
        is logged (one line per call; an unexpected error's traceback once) and retried on the
        next poll."""
        try:
            if self._relist_wanted:
                self._relist_wanted = False  # before: a request made while this one runs is kept
                try:
                    self._relist()
                except RegistryError:
                    self._relist_wanted = True
                    raise
                return []
            if self._watch is None:
                self._watch = self.registry.watch(
                    self.prefix, self.revision + 1, prev_kv=self.prev_kv, puts_only=self.puts_only
                )
            batch = self._watch.next(timeout)
            if self._failing and not batch.events and batch.revision <= self.revision:
                self.registry.range(self.prefix, limit=1)  # no news may be no answer: does etcd answer?
        except Compacted as exc:
            log.warning("watch fell behind compaction (%s): re-listing %s", exc, self.prefix.decode(errors="replace"))
            self._relist_wanted = True
            return []
        except RegistryError as exc:
            self._note_failure(exc)
            self._close_watch()
            time.sleep(min(timeout, 0.5))
            return []
        if self._failing:
            log.info("watch on %s is back at revision %d", self.prefix.decode(errors="replace"), batch.revision)
            self._failing = False
        self.revision = max(self.revision, batch.revision)
        return batch.events

    def relist(self) -> None:
        """Ask the polling thread to re-list (``on_relist``) and watch on from there: the
        owner's view of the prefix depends on something else that changed. Safe from any
        thread; the current wait is cut short."""
        self._relist_wanted = True
        watch = self._watch
        if watch is not None:
            watch.cancel()

    def close(self) -> None:
        self._close_watch()

    def _relist(self) -> None:
        self._close_watch()
        self.revision = self.registry.range(self.prefix, limit=1).revision
        if self.on_relist is not None:
            self.on_relist(self.revision)

    def _close_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def _note_failure(self, exc: RegistryError) -> None:
        prefix = self.prefix.decode(errors="replace")
        if self._failing:
            log.warning("watch on %s still failing: %s", prefix, exc)
            return
        # An outage's traceback is the same two frames in every watch thread (and the agent's
        # loop logs one); any other registry error is unexpected here and keeps its traceback.
        log.warning("watch on %s failing: %s", prefix, exc, exc_info=not isinstance(exc, Unavailable))
        self._failing = True
