"""``SimulatedPool``: a ``Pool`` (worker/pool.py) that starts no process. An episode of the
``sleep`` runtime "runs" for its ``seconds`` param on the agent's own loop and succeeds (other
params and runtimes are not looked at: any other episode succeeds at once); the results go
through the agent's commits as a worker's would, without events in the store. For agents by the
hundred in a few processes (scripts/scalesim.py: their registry traffic is a real agent's) and
for tests of the agent's loop without workers.

    Agent(settings, make_pool=SimulatedPool.make)

One thread (the agent's loop) calls it. Each slot runs one group at a time, in order; nothing
is queued behind a running group (``ahead`` is 0).
"""

from __future__ import annotations

import queue
import selectors
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from openrange_mesh.config import Settings
from openrange_mesh.worker.child import Done, WorkItem
from openrange_mesh.worker.pool import Activity


class SimulatedPool:
    def __init__(self, size: int, waker: Any = None) -> None:
        self.size = size
        self.results: queue.SimpleQueue[Done] = queue.SimpleQueue()
        self._slots: list[deque[WorkItem]] = [deque() for _ in range(size)]  # a group each; its head runs
        self._since: list[float] = [0.0] * size  # when each slot's head started (monotonic)
        self._ends: list[float] = [0.0] * size  # when it ends
        self._selector = selectors.DefaultSelector()
        if waker is not None:
            self._selector.register(waker, selectors.EVENT_READ)

    @classmethod
    def make(cls, settings: Settings, waker: Any, on_fault: Callable[[str], None]) -> SimulatedPool:
        """An ``Agent``'s ``make_pool``: ``settings.capacity`` slots (nothing here can fault)."""
        return cls(settings.capacity, waker)

    def start(self) -> None:
        pass

    def wait(self, timeout: float) -> bool:
        busy = [self._ends[i] for i, slot in enumerate(self._slots) if slot]
        until = min([time.monotonic() + max(timeout, 0.0), *busy])
        woken = bool(self._selector.select(max(until - time.monotonic(), 0.0)))
        return self._finish(time.monotonic()) or woken

    def idle(self) -> int:
        return sum(1 for slot in self._slots if not slot)

    def started(self) -> int:
        return self.size

    def ahead(self) -> int:
        return 0

    def running(self) -> dict[str, Activity]:
        return {
            slot[0].episode_id: Activity(slot[0].episode_id, self._since[i], self._since[i])
            for i, slot in enumerate(self._slots)
            if slot
        }

    def dispatch(self, items: list[WorkItem]) -> None:
        index = next((i for i, slot in enumerate(self._slots) if not slot), None)
        if index is None:
            raise RuntimeError("no slot free for a group (claims must follow idle())")
        self._slots[index].extend(items)
        self._begin(index, time.monotonic())

    def cancel(self, episode_id: str) -> bool:
        return self._end(episode_id, "cancelled", None)

    def kill(self, episode_id: str, reason: str) -> bool:
        return self._end(episode_id, "failed", reason)

    def reset(self) -> None:
        for slot in self._slots:
            slot.clear()

    def abandon(self) -> None:
        pass

    def close(self) -> None:
        self.reset()
        self._selector.close()

    def _begin(self, index: int, now: float) -> None:
        item = self._slots[index][0]
        seconds = item.spec.params.get("seconds", 0.0) if item.spec.runtime == "sleep" else 0.0
        self._since[index], self._ends[index] = now, now + float(seconds)

    def _finish(self, now: float) -> bool:
        finished = False
        for index, slot in enumerate(self._slots):
            while slot and self._ends[index] <= now:
                item = slot.popleft()
                self.results.put(Done(item.episode_id, item.attempt, "succeeded"))
                finished = True
                if slot:
                    self._begin(index, self._ends[index])
        return finished

    def _end(self, episode_id: str, kind: str, error: str | None) -> bool:
        for index, slot in enumerate(self._slots):
            item = next((i for i in slot if i.episode_id == episode_id), None)
            if item is None:
                continue
            head = slot[0] is item
            slot.remove(item)
            self.results.put(Done(item.episode_id, item.attempt, kind, error))
            if head and slot:
                self._begin(index, time.monotonic())
            return True
        return False
