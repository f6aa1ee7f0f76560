"""The Tally: sums that a watch keeps current equal those of one scan; bounded memory; errors
grouped by reason; percentiles within the histogram's documented error."""

from __future__ import annotations

import json
import math
import random
import time
import tracemalloc
from typing import Any

import pytest

from openrange_mesh.dashboard import histogram, reasons
from openrange_mesh.dashboard.histogram import LogHistogram
from openrange_mesh.dashboard.reasons import ErrorGroups, normalise
from openrange_mesh.dashboard.tally import Tally
from openrange_mesh.model import Attempt, EpisodeRecord, EpisodeSpec, State

from .tallykit import interleaved, lives

NOW = 1_800_000_000.0


def finals(all_lives: list[list[EpisodeRecord]]) -> list[EpisodeRecord]:
    return [life[-1] for life in all_lives]


def without_floats(tally: Tally) -> list[dict[str, Any]]:
    return [{k: v for k, v in h.items() if k != "busy_s"} for h in tally.host_stats()]


@pytest.mark.parametrize("live", [True, False], ids=["window", "report"])
def test_record_by_record_equals_one_scan(live: bool) -> None:
    all_lives = lives(seed=1, count=3000, t0=NOW - 3000, spread=2900)
    changes = interleaved(all_lives, seed=2)

    def new() -> Tally:
        return Tally() if live else Tally(window_seconds=None, bucket_seconds=1.0, max_buckets=300)

    watched, scanned = new(), new()
    for k, (old, record) in enumerate(changes):  # live, the clock moves on as changes arrive
        watched.update(old, record, NOW - 3000 + 3000 * k / len(changes) if live else NOW)
    for record in finals(all_lives):
        scanned.add(record, NOW)

    assert watched.summary(NOW, hosts={"h1": 4}) == scanned.summary(NOW, hosts={"h1": 4})
    assert without_floats(watched) == without_floats(scanned)
    for a, b in zip(watched.host_stats(), scanned.host_stats(), strict=True):
        assert a["busy_s"] == pytest.approx(b["busy_s"])
    summary = scanned.summary(NOW)
    assert sum(summary["counts"].values()) == 3000
    assert summary["states"][-1][1] == {k: v for k, v in summary["counts"].items() if v}
    assert summary["retries"]["attempts"] > 0 and summary["lost"] == summary["counts"]["lost"] > 0
    if live:
        assert len(summary["finished_per_s"]) == 360 and summary["bucket_s"] == 10
    else:
        assert len(summary["finished_per_s"]) <= 300 and summary["bucket_s"] == 60  # 1 s -> 2 -> 10 -> 60


def test_taking_records_back_leaves_no_trace() -> None:
    all_lives = lives(seed=3, count=500, t0=NOW - 1000, spread=900)
    kept, dropped = all_lives[::2], all_lives[1::2]
    tally, reference = Tally(), Tally()
    for old, record in interleaved(all_lives, seed=4):
        tally.update(old, record, NOW - 60)
    for life in dropped:  # retention deletes them
        tally.update(life[-1], None, NOW)
    for record in finals(kept):
        reference.add(record, NOW)
    got, want = tally.summary(NOW), reference.summary(NOW)
    for group in (*got["errors"], *want["errors"]):
        group.pop("examples")  # a deleted example is not replaced (reasons.py)
    # the largest taken back, the maximum is its bucket's upper edge (histogram.py)
    assert got["durations"].pop("max") == pytest.approx(want["durations"].pop("max"), rel=histogram.RATIO - 1)
    assert got == want
    empty = Tally()
    for life in kept:
        tally.update(life[-1], None, NOW)
    assert tally.summary(NOW) == empty.summary(NOW) and tally.host_stats() == []


def test_counts_running_hosts_retries_and_states_over_time() -> None:
    spec = EpisodeSpec("sleep")
    t = NOW - 100
    retried = EpisodeRecord(
        "e1",
        spec,
        state=State.RUNNING,
        attempt=2,
        owner="h1",
        created_at=t,
        started_at=t + 30,
        history=(Attempt(1, "h2", t + 10, t + 20, "retried", "host h2 died"), Attempt(2, "h1", t + 30)),
    )
    failed = EpisodeRecord(
        "e2",
        spec,
        state=State.FAILED,
        created_at=t,
        started_at=t + 10,
        finished_at=t + 15,
        error="boom",
        history=(Attempt(1, "h2", t + 10, t + 15, "failed", "boom"),),
    )
    tally = Tally()
    for record in (retried, failed, EpisodeRecord("e3", spec, created_at=t + 50)):
        tally.add(record, NOW)
    summary = tally.summary(NOW, hosts={"h1": 2, "h3": 1}, revision=7)
    assert summary["revision"] == 7
    assert summary["counts"] == {"pending": 1, "running": 1, "succeeded": 0, "failed": 1, "cancelled": 0, "lost": 0}
    assert summary["hosts"] == [
        {"id": "h1", "running": 1, "capacity": 2},
        {"id": "h3", "running": 0, "capacity": 1},
    ]
    assert summary["retries"] == {"attempts": 1, "episodes": 1, "released": 0}
    assert summary["durations"]["count"] == 1 and summary["durations"]["max"] == 5
    assert summary["errors"] == [{"reason": "boom", "count": 1, "examples": ["e2"]}]
    states = dict((t, s) for t, s in summary["states"])
    assert states[t] == {"pending": 2}  # NOW is a multiple of 10: t starts a bucket
    assert states[t + 10] == {"running": 1, "failed": 1}  # e2 ran and failed within [t+10, t+20)
    assert states[t + 20] == {"pending": 1, "failed": 1}  # e1 back in pending
    assert states[t + 30] == states[t + 40] == {"running": 1, "failed": 1}
    assert states[t + 50] == {"pending": 1, "running": 1, "failed": 1}
    finished = dict((t, n) for t, n in summary["finished_per_s"])
    assert finished[t + 10] == 0.1 and sum(finished.values()) == 0.1
    host_stats = {h["id"]: h for h in tally.host_stats()}
    assert host_stats["h2"] == {"id": "h2", "attempts": 2, "succeeded": 0, "failed": 1, "busy_s": 15, "running": 0}
    assert host_stats["h1"]["running"] == 1 and host_stats["h1"]["attempts"] == 0


def test_the_window_forgets_old_buckets_but_not_their_counts() -> None:
    tally = Tally(bucket_seconds=10, window_seconds=60)
    spec = EpisodeSpec("sleep")
    for k in range(100):  # one finish every 10 s for 1000 s
        t = NOW - 1000 + 10 * k
        tally.update(None, EpisodeRecord(f"e{k}", spec, State.SUCCEEDED, created_at=t, finished_at=t), t)
    summary = tally.summary(NOW)
    assert len(tally.series.buckets) <= 6 and len(summary["finished_per_s"]) == 6
    assert summary["states"][0][1] == {"succeeded": 96} and summary["states"][-1][1] == {"succeeded": 100}
    # a broken clock far ahead lands at the window's limit, not in a bucket of its own
    for k in range(1000):
        far = NOW + 1e6 * (k + 1)
        tally.update(None, EpisodeRecord(f"f{k}", spec, State.SUCCEEDED, created_at=far, finished_at=far), NOW)
    assert len(tally.series.buckets) <= 7
    assert tally.summary(NOW)["states"][-1][1] == {"succeeded": 1100}


def test_memory_stays_bounded_over_100k_finished_records() -> None:
    rng = random.Random(5)
    spec = EpisodeSpec("sleep")
    tally = Tally(window_seconds=None, bucket_seconds=1.0)

    def feed(start: int, stop: int) -> None:
        for k in range(start, stop):
            t = NOW - 86400 + k * 0.8
            error = f"timed out after {k} s" if k % 4 == 0 else f"worker 0x{k:x} died in step {k % 10}"
            tally.add(
                EpisodeRecord(
                    f"{k:010d}-0000-t",
                    spec,
                    State.FAILED if k % 2 else State.SUCCEEDED,
                    created_at=t,
                    started_at=t + 1,
                    finished_at=t + 1 + rng.expovariate(0.5),
                    error=error,
                    history=(Attempt(1, f"h{k % 20}", t + 1, t + 3, "failed"),),
                ),
                NOW,
            )

    tracemalloc.start()
    try:
        feed(0, 10_000)
        early = tracemalloc.get_traced_memory()[0]
        feed(10_000, 100_000)
        late = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert late - early < 256 * 1024, f"grew {late - early} bytes over 90k more records"
    summary = tally.summary(NOW)
    assert summary["durations"]["count"] == 100_000 and len(summary["finished_per_s"]) <= 360
    assert len(summary["errors"]) <= reasons.SHOWN + 1


@pytest.mark.parametrize(
    "draw",
    [
        lambda r: r.uniform(0.01, 100),
        lambda r: r.lognormvariate(0, 2),
        lambda r: r.expovariate(1 / 30),
        lambda r: 0.0005 if r.random() < 0.3 else r.uniform(1, 2),
    ],
    ids=["uniform", "lognormal", "exponential", "sub-ms"],
)
def test_percentiles_within_the_documented_error(draw: Any) -> None:
    rng = random.Random(6)
    values = sorted(draw(rng) for _ in range(50_000))
    hist = LogHistogram()
    for v in values:
        hist.add(v)
    for q in (0.5, 0.9, 0.99):
        rank = q * (len(values) - 1)
        lo, hi = values[math.floor(rank)], values[math.ceil(rank)]
        exact = lo + (hi - lo) * (rank - math.floor(rank))
        got = hist.quantile(q)
        assert got is not None
        assert abs(got - exact) <= max(exact * (histogram.RATIO - 1), histogram.LOW), (q, got, exact)
    assert hist.maximum() == values[-1]
    summary = hist.summary()
    assert summary["count"] == 50_000 and set(summary) == {"p50", "p90", "p99", "max", "count"}


def test_an_empty_histogram_and_a_taken_back_maximum() -> None:
    hist = LogHistogram()
    assert hist.summary() == {"p50": None, "p90": None, "p99": None, "max": None, "count": 0}
    for v in (1.0, 2.0, 100.0):
        hist.add(v)
    hist.add(100.0, -1)
    assert hist.maximum() == pytest.approx(2.0, rel=histogram.RATIO - 1)
    assert hist.quantile(1.0) == pytest.approx(2.0, rel=histogram.RATIO - 1)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("timed out after 3 s", "timed out after N s"),
        ("timed out after 12.5 s\nand more", "timed out after N s"),
        ("  worker 0x7f3a2b died  ", "worker <id> died"),
        ("episode 0000000001-0002-h1 lost", "episode <id> lost"),
        ("object 3f2a9c0d1e not found", "object <id> not found"),
        ("uuid 123e4567-e89b-12d3-a456-426614174000 gone", "uuid <id> gone"),
        ("host h2 died", "host hN died"),
        ("a deadbeef word", "a deadbeef word"),
        ("", reasons.NO_REASON),
        (None, reasons.NO_REASON),
        ("x" * 1000, "x" * reasons.MAX_REASON),
    ],
)
def test_normalised_reasons(error: str | None, reason: str) -> None:
    assert normalise(error) == reason


def test_error_groups_keep_newest_examples_and_count_the_rest_as_other() -> None:
    groups = ErrorGroups()
    for k in range(12):
        groups.add(f"timed out after {k} s", f"e{k:02d}", finished_at=1000 - k)
    (group,) = groups.summary()
    assert group == {"reason": "timed out after N s", "count": 12, "examples": ["e00", "e01", "e02", "e03", "e04"]}
    many = ErrorGroups()
    letters = "abcdefghijklmnopqrstuvwxyz"
    for k in range(reasons.MAX_GROUPS + 50):
        name = letters[k % 26] + letters[k // 26 % 26] + letters[k // 676]
        for _ in range(1 + (k < 5)):
            many.add(f"failure {name}", f"e{k}", finished_at=k)
    summary = many.summary()
    assert len(summary) == reasons.SHOWN + 1 and summary[-1]["reason"] == reasons.OTHER
    assert summary[0]["count"] == 2 and sum(g["count"] for g in summary) == reasons.MAX_GROUPS + 55
    assert summary[-1]["count"] == reasons.MAX_GROUPS + 50 - reasons.SHOWN and summary[-1]["examples"] == []


def test_update_is_cheap() -> None:
    """Not a speed goal (scripts/bench_tally.py measures it): a guard against a change that
    makes every watch event walk something big."""
    all_lives = lives(seed=7, count=2000, t0=time.time() - 600, spread=500)
    changes = interleaved(all_lives, seed=8)
    tally = Tally()
    now = time.time()
    started = time.perf_counter()
    for old, record in changes:
        tally.update(old, record, now)
    per_call = (time.perf_counter() - started) / len(changes)
    assert per_call < 200e-6, f"{per_call * 1e6:.1f} us per update"


def test_odd_times_neither_crash_nor_reach_the_answer() -> None:
    """Records carry whatever floats their writer put there: NaN, infinities, 0 (an old
    writer's default), far in the past or the future. The answer stays finite JSON."""
    spec = EpisodeSpec("sleep")
    tally = Tally(window_seconds=None)
    odd = (math.nan, math.inf, -math.inf, 0.0, -5.0, 1e300, NOW + 1e7)
    for k, t in enumerate(odd):
        record = EpisodeRecord(
            f"e{k}",
            spec,
            State.FAILED,
            created_at=t,
            started_at=t,
            finished_at=t if k % 2 else NOW,
            error="boom",
            history=(Attempt(1, "h1", t, NOW, "failed"),),
        )
        tally.add(record, NOW)
    summary = tally.summary(NOW)
    json.dumps({**summary, "hosts": tally.host_stats()}, allow_nan=False)
    assert summary["counts"]["failed"] == len(odd) and summary["states"][-1][1] == {"failed": len(odd)}
    assert summary["bucket_s"] <= 10  # no time from that list widened the buckets
