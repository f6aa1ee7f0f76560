"""Whether this host is fit to run episodes.

Infrastructure failures are the host's, not the episode's: a worker that cannot start, a store
that refuses a write or a snapshot read. Their episodes go back to the queue without spending an
attempt (ledger.release); this part counts the failures. ``FAULT_LIMIT`` of them within
``FAULT_WINDOW`` seconds make the host *sick*: it claims nothing, and its host record says it
drains and why (weight 0: peers take the queue entries it owned), instead of eating the queue
(issue 11: one agent whose workers could not open its store lost 8 of 30 episodes of the mesh).
A sick host keeps running and rechecks itself, every ``RECHECK`` seconds at first, doubling up
to ``RECHECK_MAX``: once its checks pass (agent/selfcheck.py) it claims again.

One failure is not a verdict (a store can refuse one write and take the next); a few in a short
while are, whatever caused them, and a recheck is cheap.

Threads: the agent's loop writes (its worker pool reports from the loop thread); the watch
thread reads ``is_sick`` (one attribute read) to know the host's own weight.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

FAULT_LIMIT = 3
FAULT_WINDOW = 60.0
RECHECK = 5.0
RECHECK_MAX = 60.0


class Health:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.reason: str | None = None  # why the host is sick; None while healthy
        self._clock = clock
        self._faults: deque[float] = deque(maxlen=FAULT_LIMIT)
        self._recheck_at = 0.0
        self._recheck_every = RECHECK

    @property
    def is_sick(self) -> bool:
        return self.reason is not None

    def fault(self, reason: str) -> bool:
        """An infrastructure failure. True when it made the host sick just now."""
        now = self._clock()
        self._faults.append(now)
        if self.reason is not None:
            return False
        if len(self._faults) < FAULT_LIMIT or now - self._faults[0] > FAULT_WINDOW:
            log.warning("infrastructure failure (%d in %.0f s): %s", len(self._faults), FAULT_WINDOW, reason)
            return False
        self.reason = reason
        self._recheck_every = RECHECK
        self._recheck_at = now + RECHECK
        return True

    def recheck_due(self) -> bool:
        return self.reason is not None and self._clock() >= self._recheck_at

    def rechecked(self, problem: str | None) -> bool:
        """The outcome of a recheck (None: every check passed). True when the host healed."""
        if problem is None:
            self.reason = None
            self._faults.clear()
            return True
        self.reason = problem
        self._recheck_every = min(self._recheck_every * 2, RECHECK_MAX)
        self._recheck_at = self._clock() + self._recheck_every
        return False
