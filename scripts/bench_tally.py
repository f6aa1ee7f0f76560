#!/usr/bin/env python3
"""What one ``Tally.update`` costs (the leader's dashboard child calls it for every record change).

Times, with ``timeit`` (best of ``--repeat`` rounds of ``--number`` calls), the three changes
every episode makes (submitted, claimed, finished) and a retry, each as the take-back of the
old record and the add of the new one, and ``summary`` of a live Tally holding 100k finished
records (the dashboard sends one every 2 s).

    python scripts/bench_tally.py
    python scripts/bench_tally.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
import timeit

from openrange_mesh.dashboard.tally import Tally
from openrange_mesh.model import Attempt, EpisodeRecord, EpisodeSpec, State


def changes(now: float) -> dict[str, tuple[EpisodeRecord | None, EpisodeRecord]]:
    """(old, new) for each change timed."""
    spec = EpisodeSpec("gymnasium", {"env": "CartPole-v1"})
    pending = EpisodeRecord("0000000001-0000-h1", spec, created_at=now - 5, submitter="trainer")
    running = pending.replace(
        state=State.RUNNING, owner="h1", claim="c1", started_at=now - 3, history=(Attempt(1, "h1", now - 3),)
    )
    failed = running.replace(
        state=State.FAILED,
        owner=None,
        claim=None,
        finished_at=now - 1,
        error="timed out after 2 s",
        history=(Attempt(1, "h1", now - 3, now - 1, "failed", "timed out after 2 s"),),
    )
    retried = pending.replace(attempt=2, error="host h1 died", history=(Attempt(1, "h1", now - 3, now - 1, "retried"),))
    return {
        "submitted": (None, pending),
        "claimed": (pending, running),
        "failed": (running, failed),
        "retried": (running, retried),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    now = time.time()
    tally = Tally()
    figures: dict[str, float] = {}
    for name, (old, new) in changes(now).items():

        def change(old: EpisodeRecord | None = old, new: EpisodeRecord = new) -> None:
            tally.update(old, new, now)
            tally.update(new, old, now)  # and back, so the Tally stays the same size

        best = min(timeit.repeat(change, number=args.number, repeat=args.repeat))
        figures[f"update_{name}_us"] = best / args.number / 2 * 1e6  # two updates per call
    spec = EpisodeSpec("sleep")
    for k in range(100_000):
        t = now - 3000 + k * 0.03
        tally.add(EpisodeRecord(f"e{k}", spec, State.SUCCEEDED, created_at=t, started_at=t, finished_at=t + 1), now)
    figures["summary_100k_ms"] = min(timeit.repeat(lambda: tally.summary(now), number=10, repeat=3)) / 10 * 1e3
    for name, value in figures.items():
        print(f"{name:24} {value:8.2f}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)


if __name__ == "__main__":
    main()
