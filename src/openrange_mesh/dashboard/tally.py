"""Aggregates over episode records, kept current one record change at a time (design/dashboard.md).

A ``Tally`` is a sum over the records it holds: each record adds its share (its state, its
attempts per host, its duration, its error, its moves between states over time) and a change is
"take back the old share, add the new one". So a Tally built record by record from a watch
equals one built from a scan of the same records at the end, and it keeps nothing per record:
memory is bounded by the number of hosts, time buckets, duration buckets and error groups,
never by the number of episodes.

States over time are not sampled: each record says when it moved (created, each attempt's
start and finish, its finish), and those moves are summed per time bucket; a bucket's counts
are the running total up to its end. So a report built from one scan draws them too, and a
record's past does not depend on when the watch saw it.

Who calls it: the leader's dashboard child, for every change its watch of ``episodes/`` brings,
and ``report.build`` for every record of a scan. A Tally counts episode records: the caller
expands a group record (a batch's members, design/batching.md) and updates each member that changed,
with the member as it last gave it. Not thread-safe: one thread updates it, or the caller
holds a lock around ``update`` and ``summary``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..model import EpisodeRecord, State
from .histogram import LogHistogram
from .reasons import ErrorGroups
from .series import TimeBuckets

_STATES = tuple(State)
_INDEX = {state: i for i, state in enumerate(_STATES)}
_N = len(_STATES)
_PENDING, _RUNNING = _INDEX[State.PENDING], _INDEX[State.RUNNING]
_TERMINAL = {state: _INDEX[state] for state in _STATES if state.is_terminal}
_ERRORS = frozenset({State.FAILED, State.LOST})  # what the errors table counts
RETRIED, RELEASED = "retried", "released"  # attempt outcomes that sent an episode back to pending
# a bucket's counters: the state moves (one per state), then the finishes (one per state)
_SIZE = 2 * _N


def _seconds(span: float) -> float:
    """A duration as counted: 0 for a negative one (clock skew between hosts) and for one
    that is not a number of seconds at all (NaN, infinite, over ~30 years: a broken record),
    which no sum or JSON answer could carry."""
    return span if 0.0 < span < 1e9 else 0.0


class Tally:
    """Counts by state, running per host, finishes and states over time, durations, errors by
    reason, retries. ``update`` costs a few microseconds (design/dashboard.md); ``summary`` is the
    ``GET /api/summary`` answer."""

    def __init__(
        self,
        *,
        bucket_seconds: float = 10.0,
        window_seconds: float | None = 3600.0,
        max_buckets: int = 360,
        since: float | None = None,
    ) -> None:
        """Live (the dashboard): ``bucket_seconds`` buckets over the last ``window_seconds``.
        A report: ``window_seconds=None``, buckets coarsened to at most ``max_buckets``, times
        before ``since`` counted as one."""
        self.counts = dict.fromkeys(_STATES, 0)
        self.running: dict[str, int] = {}  # host -> running episodes it owns
        self.hosts: dict[str, list[float]] = {}  # host -> [attempts, succeeded, failed, busy seconds]
        self.durations = LogHistogram()
        self.errors = ErrorGroups()
        self.retried = 0  # attempts that ended back in pending and counted (timeouts, dead hosts)
        self.released = 0  # attempts the infrastructure ended without counting them
        self.retried_episodes = 0  # episodes with at least one such attempt
        self.series = TimeBuckets(
            _SIZE, width=bucket_seconds, window=window_seconds, max_buckets=max_buckets, start=since
        )

    def update(self, old: EpisodeRecord | None, new: EpisodeRecord | None, now: float) -> None:
        """A record changed: ``old`` is what was last given for it (None: new to us), ``new``
        what it is now (None: deleted)."""
        self.series.advance(now)
        if old is not None:
            self._add(old, -1)
        if new is not None:
            self._add(new, 1)

    def add(self, record: EpisodeRecord, now: float) -> None:
        """A record seen for the first time (a scan)."""
        self.update(None, record, now)

    def _add(self, record: EpisodeRecord, sign: int) -> None:
        state = record.state
        self.counts[state] += sign
        if state is State.RUNNING and record.owner is not None:
            self._count_running(record.owner, sign)
        if record.history:
            self._add_attempts(record, sign)
        self._add_moves(record, sign)
        final = _TERMINAL.get(state)
        if final is not None and record.finished_at is not None:
            self.series.vector(record.finished_at)[_N + final] += sign
            if record.started_at is not None:
                self.durations.add(_seconds(record.finished_at - record.started_at), sign)
            if state in _ERRORS:
                self.errors.add(record.error, record.id, record.finished_at, sign)

    def _count_running(self, host: str, sign: int) -> None:
        n = self.running.get(host, 0) + sign
        if n:
            self.running[host] = n
        else:
            del self.running[host]

    def _add_attempts(self, record: EpisodeRecord, sign: int) -> None:
        retried = False
        for attempt in record.history:
            if attempt.finished_at is None:
                continue
            stats = self.hosts.get(attempt.host)
            if stats is None:
                stats = self.hosts[attempt.host] = [0, 0, 0, 0.0]
            stats[0] += sign
            stats[3] += sign * _seconds(attempt.finished_at - attempt.started_at)
            outcome = attempt.outcome
            if outcome == State.SUCCEEDED:
                stats[1] += sign
            elif outcome == State.FAILED:
                stats[2] += sign
            elif outcome == RETRIED:
                self.retried += sign
                retried = True
            elif outcome == RELEASED:
                self.released += sign
            if not stats[0]:
                del self.hosts[attempt.host]
        if retried:
            self.retried_episodes += sign

    def _add_moves(self, record: EpisodeRecord, sign: int) -> None:
        """The record's moves between states, each at the time it happened: pending at its
        creation, running at each attempt's start, back to pending (or its end state, for the
        last) at each attempt's finish, and its end state at its finish if not already there."""
        vector = self.series.vector
        vector(record.created_at)[_PENDING] += sign
        current, when = _PENDING, record.created_at
        final = _INDEX[record.state]
        history = record.history
        last = len(history) - 1
        for k, attempt in enumerate(history):
            vec = vector(attempt.started_at)
            vec[current] -= sign
            vec[_RUNNING] += sign
            current, when = _RUNNING, attempt.started_at
            if attempt.finished_at is not None:
                then = final if k == last and final != _RUNNING else _PENDING
                vec = vector(attempt.finished_at)
                vec[_RUNNING] -= sign
                vec[then] += sign
                current, when = then, attempt.finished_at
        if current != final:
            vec = vector(record.finished_at or when)
            vec[current] -= sign
            vec[final] += sign

    # --- reading -------------------------------------------------------------------------------

    def summary(
        self, now: float, *, hosts: Mapping[str, int] | None = None, revision: int | None = None
    ) -> dict[str, Any]:
        """The ``GET /api/summary`` answer (design/dashboard.md). ``hosts``: live hosts' capacities
        (the caller reads host records; a Tally sees only episodes); a host that runs episodes
        but is not among them shows capacity None. A state absent from a ``states`` point is 0."""
        self.series.advance(now)
        width = self.series.width
        finished, states = [], []
        for t, vec, total in self.series.rows(now):
            finished.append([t, sum(vec[_N:]) / width])
            states.append([t, {s.value: n for s, n in zip(_STATES, total, strict=False) if n > 0}])
        capacities = hosts or {}
        return {
            "revision": revision,
            "counts": {state.value: n for state, n in self.counts.items()},
            "hosts": [
                {"id": host, "running": self.running.get(host, 0), "capacity": capacities.get(host)}
                for host in sorted({*capacities, *self.running})
            ],
            "bucket_s": width,
            "finished_per_s": finished,
            "states": states,
            "durations": self.durations.summary(),
            "errors": self.errors.summary(),
            "retries": {"attempts": self.retried, "episodes": self.retried_episodes, "released": self.released},
            "lost": self.counts[State.LOST],
        }

    def host_stats(self) -> list[dict[str, Any]]:
        """Per host, over the finished attempts of the records held: attempts, how many
        succeeded or failed (the rest were retried, released, cancelled or lost), seconds busy."""
        empty = [0, 0, 0, 0.0]
        return [
            {
                "id": host,
                "attempts": int(stats[0]),
                "succeeded": int(stats[1]),
                "failed": int(stats[2]),
                "busy_s": stats[3],
                "running": self.running.get(host, 0),
            }
            for host in sorted({*self.hosts, *self.running})
            for stats in [self.hosts.get(host, empty)]
        ]
