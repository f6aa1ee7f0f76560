"""``Stopper``: stops episodes of ours that the mesh asked to cancel, and workers stuck past
their episode's timeout.

Workers enforce ``timeout`` and ``progress_timeout`` themselves; the agent kills a worker whose
episode is ``KILL_GRACE`` past either (a runtime stuck inside a call). A cancel is forwarded to
the episode's worker and noted in Holdings: its commit deletes the marker.

Threads: the loop thread; no state of its own (cancel markers wait in the Inbox).
"""

from __future__ import annotations

import time

from ..worker.pool import Pool
from .holdings import Holdings
from .inbox import Inbox

KILL_GRACE = 5.0  # seconds past a timeout before the agent kills a worker that did not stop


class Stopper:
    def __init__(self, pool: Pool, holdings: Holdings, inbox: Inbox) -> None:
        self.pool = pool
        self.holdings = holdings
        self.inbox = inbox

    def step_cancels(self) -> str | None:
        cancels = self.inbox.take_cancels()
        hit = [i for i in cancels if self.holdings.owns(i) and self.pool.cancel(i)]
        self.holdings.cancel_forwarded(hit)  # their commit deletes the marker
        return f"cancelling {len(hit)} episodes" if hit else None

    def step_timeouts(self) -> str | None:
        now = time.monotonic()
        killed = []
        for activity in self.pool.running().values():
            record = self.holdings.record_of(activity.episode_id)
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
