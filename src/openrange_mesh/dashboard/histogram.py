"""Episode durations in bounded memory: a histogram of fixed, log-spaced buckets.

Why buckets and not a reservoir: a bucket's count can be taken back (a record that changes or is
deleted), so the histogram is a function of the durations it holds, whatever order they came
in, and one built value by value equals one built from a scan. A reservoir can do neither.

Buckets: ``BUCKETS_PER_OCTAVE`` per doubling from ``LOW`` seconds (1 ms) up to ``HIGH`` (2**20
s, ~12 days), plus one below (0 and negative durations: clock skew between hosts) and one
above. A bucket spans a ratio of ``RATIO`` = 2**(1/16) ~ 1.044. A quantile is found by its
rank (numpy's default: linear between the two ranks either side), each of those two values
placed log-linearly inside its bucket: an estimate lies in the same bucket as the value it
stands for, so the answer is off by less than a factor of ``RATIO`` (under 4.4%), or by under
1 ms when the values are under 1 ms (reported as 0). ``max`` is exact while durations are only
added; once the largest is taken back it is the upper edge of the highest non-empty bucket.
Memory: ``1 + 30 * 16 + 1`` = 482 counters, whatever the number of episodes.
"""

from __future__ import annotations

import math
from typing import Any

LOW = 0.001
OCTAVES = 30  # 1 ms .. 2**30 ms (~12 days)
BUCKETS_PER_OCTAVE = 16
RATIO = math.pow(2.0, 1 / BUCKETS_PER_OCTAVE)
_SCALE = BUCKETS_PER_OCTAVE / math.log(2)
_LOG_LOW = math.log(LOW)
_TOP = OCTAVES * BUCKETS_PER_OCTAVE + 1  # index of the overflow bucket
HIGH = LOW * float(2**OCTAVES)


def bucket_of(seconds: float) -> int:
    """0 below LOW, 1 .. _TOP-1 for [LOW*RATIO**(i-1), LOW*RATIO**i), _TOP at or above HIGH."""
    if not seconds >= LOW:  # NaN too
        return 0
    if seconds >= HIGH:
        return _TOP
    return 1 + int((math.log(seconds) - _LOG_LOW) * _SCALE)


def lower_edge(index: int) -> float:
    return 0.0 if index <= 0 else LOW * math.pow(RATIO, index - 1)


def upper_edge(index: int) -> float:
    return LOW if index <= 0 else LOW * math.pow(RATIO, index)


class LogHistogram:
    """Counts of durations by log-spaced bucket. Not thread-safe: its owner's thread only."""

    __slots__ = ("_max", "_total", "count", "counts")

    def __init__(self) -> None:
        self.counts = [0] * (_TOP + 1)
        self.count = 0
        self._total = 0.0
        self._max: float | None = None  # exact while nothing larger was taken back

    def add(self, seconds: float, sign: int = 1) -> None:
        """Add a duration (``sign`` -1 takes back one added before)."""
        self.counts[bucket_of(seconds)] += sign
        self.count += sign
        self._total += sign * seconds
        if sign > 0:
            if self._max is None or seconds > self._max:
                self._max = seconds
        elif self._max is not None and seconds >= self._max:
            self._max = None  # recomputed from the buckets when asked

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) as numpy's default defines it (linear between the values
        of the ranks either side of ``q * (count - 1)``), each value estimated inside its
        bucket; None if empty."""
        if self.count <= 0:
            return None
        rank = q * (self.count - 1)
        below = math.floor(rank)
        low, high = self._ranked(below, below + 1 if rank > below else below)
        return min(low + (high - low) * (rank - below), self.maximum() or 0.0)

    def _ranked(self, first: int, second: int) -> tuple[float, float]:
        """Estimates of the values of 0-based ranks ``first`` <= ``second``: the k-th of a
        bucket's n values is placed (k + 0.5) / n of the way through it, log-linearly."""
        found: list[float] = []
        seen = 0
        for index, n in enumerate(self.counts):
            if n <= 0:
                continue
            while len(found) < 2 and (first, second)[len(found)] < seen + n:
                found.append(self._within(index, ((first, second)[len(found)] - seen + 0.5) / n))
            if len(found) == 2:
                return found[0], found[1]
            seen += n
        top = self.maximum() or 0.0
        return (found[0] if found else top), top

    @staticmethod
    def _within(index: int, fraction: float) -> float:
        if index == 0:
            return 0.0  # under a millisecond: say 0
        if index == _TOP:
            return HIGH
        low = lower_edge(index)
        return low * math.pow(RATIO, min(max(fraction, 0.0), 1.0))

    def maximum(self) -> float | None:
        if self.count <= 0:
            return None
        if self._max is None:
            top = max(i for i, n in enumerate(self.counts) if n > 0)
            self._max = HIGH if top == _TOP else upper_edge(top)
        return self._max

    def summary(self) -> dict[str, Any]:
        """``{"p50", "p90", "p99", "max", "count"}`` in seconds (None when empty)."""
        return {
            "p50": self.quantile(0.5),
            "p90": self.quantile(0.9),
            "p99": self.quantile(0.99),
            "max": self.maximum(),
            "count": self.count,
        }

    def mean(self) -> float | None:
        return self._total / self.count if self.count > 0 else None

    def rows(self) -> list[list[float]]:
        """``[lower edge, upper edge, count]`` from the first non-empty bucket to the last,
        empty ones included (a chart's bars stay evenly spaced on a log axis)."""
        used = [i for i, n in enumerate(self.counts) if n]
        if not used:
            return []
        return [[lower_edge(i), upper_edge(i), self.counts[i]] for i in range(used[0], used[-1] + 1)]
