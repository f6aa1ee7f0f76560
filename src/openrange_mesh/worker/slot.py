"""What a worker runs now, in shared memory: written by the worker, read by the agent."""

from __future__ import annotations

import time
from typing import Any


class Slot:
    """What a worker runs, in shared memory: the seq of the item it started last, when that
    started and last made progress (``time.monotonic()``: one clock for every process of a
    Linux machine), and whether it still runs. The worker writes, the agent reads, without a
    lock: a reader takes the seq before and after the times, and the worker writes the times
    before the seq, so an item is never paired with times older than its start."""

    def __init__(self, cells: Any) -> None:
        self.cells = cells  # a multiprocessing RawArray("d", 4): seq, started, progress, running

    def start(self, seq: int, now: float) -> None:
        self.cells[1] = self.cells[2] = now
        self.cells[0] = seq
        self.cells[3] = 1.0

    def progress(self) -> None:
        self.cells[2] = time.monotonic()

    def clear(self) -> None:
        self.cells[3] = 0.0

    def last_started(self) -> int:
        return int(self.cells[0])

    def read(self) -> tuple[int, float, float] | None:
        """(seq, started, progress) of the item running now, or None."""
        seq = int(self.cells[0])
        started, progress = self.cells[1], self.cells[2]
        running = self.cells[3] == 1.0 and int(self.cells[0]) == seq
        return (seq, started, progress) if running else None
