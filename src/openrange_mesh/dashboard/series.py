"""Counters over time in bounded memory: one vector of counters per time bucket.

A bucket is ``[i * width, (i + 1) * width)`` in unix seconds, so the same time always lands in
the same bucket whoever adds it and in whatever order. Two ways to stay bounded:

* **a window** (the live dashboard: 10 s buckets over the last hour): a bucket older than the
  window is folded into ``base``, one vector that stands for everything before it; a time
  ahead of the window's end by more than the window (a host with a broken clock) counts in
  the bucket at that limit (taken back later, the limit may have moved: the pair then shows
  in two late buckets until both leave the window; the totals stay right).
* **coarsening** (a report over any span): no bucket is dropped; when the buckets in use
  would span more than ``max_buckets``, the width moves up ``LADDER`` (each step a multiple of
  the one before, so merging buckets is exact) until they fit. Times before ``start`` (the
  report's ``--since``) fold into ``base``. The final width is the smallest step that fits all
  the times seen, whatever their order.

Counters are plain ints that may go down (a record taken back), so everything here is a sum:
adding then taking back a vector leaves no trace.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

_LATEST = 1e11  # unix seconds (year ~5000): a later time, or an infinite one, is not a time
# widths in seconds, each a multiple of the one before; then doubling
LADDER = (1.0, 2.0, 10.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0, 604800.0)


class TimeBuckets:
    """Vectors of ``size`` counters by time bucket. Not thread-safe: its owner's thread only."""

    __slots__ = (
        "_ceiling",
        "_floor",
        "_hi",
        "_lo",
        "base",
        "buckets",
        "max_buckets",
        "size",
        "start",
        "width",
        "window",
    )

    def __init__(
        self,
        size: int,
        *,
        width: float = 10.0,
        window: float | None = 3600.0,
        max_buckets: int = 360,
        start: float | None = None,
    ) -> None:
        self.size = size
        self.width = width
        self.window = window  # None: coarsen instead
        self.max_buckets = max_buckets if window is None else max(1, math.ceil(window / width))
        self.start = None if window is not None else start  # coarsening: times before it go to base
        # a time before this goes to base: before ``start``, or unknown (0: an old writer's
        # default; the epoch would widen a report's buckets to decades)
        self._floor = self.start if self.start is not None else 1e-9
        self._ceiling = _LATEST  # coarsening: the latest ``now`` seen; later times count there
        self.buckets: dict[int, list[int]] = {}
        self.base = [0] * size  # everything before the first bucket
        # windowed: _lo is the first bucket kept (advance moves it on); coarsening: the lowest
        # and highest bucket in use
        self._lo, self._hi = (2**62, -(2**62)) if window is None else (-(2**62), 0)

    def advance(self, now: float) -> None:
        """Windowed: fold the buckets that fell out of the window ending at ``now`` into
        ``base``. Coarsening: times after ``now`` will count as ``now``."""
        if self.window is None:
            self._ceiling = max(now, self._ceiling) if self._ceiling < _LATEST else now
            return
        lo = int((now - self.window) // self.width) + 1
        if lo <= self._lo:
            return
        self._lo = lo
        for index in [i for i in self.buckets if i < lo]:
            self._merge(self.base, self.buckets.pop(index))

    def vector(self, t: float) -> list[int]:
        """The counters of the bucket holding ``t`` (``base`` for a time before the first)."""
        if not self._floor <= t < self._ceiling:  # NaN fails this too: int() of it would raise
            if not self._ceiling <= t < _LATEST:
                return self.base  # before the first bucket, unknown, or not a time at all
            t = self._ceiling  # coarsening: after now (a host's clock ahead) counts as now
        index = int(t // self.width)
        vec = self.buckets.get(index)
        if vec is not None:
            return vec
        if self.window is not None:
            if index < self._lo:
                return self.base
            index = min(index, self._lo + 2 * self.max_buckets)  # a broken clock far ahead
        else:
            index = self._fit(index, t)
        vec = self.buckets.get(index)
        if vec is None:
            vec = self.buckets[index] = [0] * self.size
        return vec

    def _fit(self, index: int, t: float) -> int:
        """Coarsening: widen until the buckets in use and ``index`` span at most
        ``max_buckets``; return the bucket of ``t`` at the final width."""
        lo, hi = min(index, self._lo), max(index, self._hi)
        factor = 1
        while hi // factor - lo // factor + 1 > self.max_buckets:
            factor = self._next_factor(factor)
        if factor > 1:
            old, self.buckets = self.buckets, {}
            for i, vec in old.items():
                self._merge(self.buckets.setdefault(i // factor, [0] * self.size), vec)
            self.width *= factor
        self._lo, self._hi = lo // factor, hi // factor
        return int(t // self.width)

    def _next_factor(self, factor: int) -> int:
        width = self.width * factor
        bigger = next((w for w in LADDER if w > width and w % width == 0), width * 2)
        return round(bigger / self.width)

    @staticmethod
    def _merge(into: list[int], vec: list[int]) -> None:
        for k, n in enumerate(vec):
            into[k] += n

    def span(self, now: float) -> range:
        """Bucket indices from the window's start (coarsening: ``start``, else the first in
        use) to ``now``'s. Coarsening widens first if that would be over ``max_buckets``."""
        if self.window is None and self.buckets:
            self._fit(int(now // self.width), now)
        last = int(now // self.width)
        if self.window is not None:
            first = self._lo
        elif self.start is not None:
            first = int(self.start // self.width)
        else:
            first = min((i for i in self.buckets if i <= last), default=last)
        return range(min(first, last), last + 1)

    def rows(self, now: float) -> Iterator[tuple[float, list[int], list[int]]]:
        """``(bucket start, its counters, base plus every bucket up to it)`` over
        ``span(now)``; buckets after ``now``'s (clock skew) count in the last total."""
        indices = self.span(now)
        total = list(self.base)
        for i, vec in self.buckets.items():
            if i < indices.start:
                self._merge(total, vec)
        zero = [0] * self.size
        for index in indices:
            vec = self.buckets.get(index, zero)
            self._merge(total, vec)
            if index == indices.stop - 1:
                for i, later in self.buckets.items():
                    if i > index:
                        self._merge(total, later)
            yield index * self.width, vec, list(total)
