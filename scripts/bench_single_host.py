#!/usr/bin/env python3
"""Single-host overhead: EpisodeService on memory:// versus a plain-dict baseline, one run.

Both sides run the same CartPole-v1 episodes (same seeds, same runtime handles, same spec
checks) to terminal, one at a time. The service is measured twice: ``run_many`` (B: episodes
started and stopped in batches, the way to run many) and ``run`` in a loop (C: one at a time).
The baseline (A) is the service as it was before the registry seam: running episodes in a
``dict[str, _RunningEpisode]`` with uuid4 ids and no records. Each side is timed from its
construction to the end of its ``close``. On its private registry the service builds and
writes records only when something reads them (writebehind.py); what the first read after a
run costs is measured apart (``first_read_us_per_episode``: one ``get`` once the clock
stopped, which writes every record first). A round runs A B C C B A, so that drift on a shared
machine hits every side alike; each ratio is the median over rounds of that round's ratio
(its two runs of a side against its two of the baseline). ``baseline_spread`` is how far
apart a round's two baseline runs were (median over rounds): the noise a ratio carries.

    python scripts/bench_single_host.py            # 1000 episodes a run x 11 rounds
    python scripts/bench_single_host.py --quick    # 100 x 50, under 30 s
    python scripts/bench_single_host.py --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from openrange_mesh.keys import Keys
from openrange_mesh.model import EpisodeSpec, State
from openrange_mesh.registry import Compare, Get, Put, open_registry
from openrange_mesh.runtimes import Handle, load_runtime
from openrange_mesh.service import EpisodeReport, EpisodeService
from openrange_mesh.specs import check_spec


@dataclass
class _RunningEpisode:
    spec: EpisodeSpec
    handle: Handle
    events: list[dict[str, Any]] = field(default_factory=list)


class DictEpisodeService:
    """The baseline: what a single-host service did with a plain dict."""

    def __init__(self) -> None:
        self._running: dict[str, _RunningEpisode] = {}
        self.finished: dict[str, dict[str, Any]] = {}

    def run(self, spec: EpisodeSpec) -> dict[str, Any]:
        spec = check_spec(spec)
        handle = load_runtime(spec.runtime).realize(spec.params, seed=spec.seed)
        handle.reset()
        episode_id = uuid.uuid4().hex
        running = self._running[episode_id] = _RunningEpisode(spec, handle)
        while handle.terminal() is None:
            handle.advance(0.5)
        running.events.extend(handle.poll_events())
        outcome = handle.terminal()
        result = handle.collect()
        handle.stop()
        del self._running[episode_id]
        report = {"id": episode_id, "succeeded": bool(outcome and outcome.succeeded), "result": result}
        self.finished[episode_id] = report
        return report


def specs(n: int) -> list[EpisodeSpec]:
    return [EpisodeSpec(runtime="gymnasium", params={"env": "CartPole-v1"}, seed=i) for i in range(n)]


def time_baseline(items: list[EpisodeSpec]) -> float:
    start = time.perf_counter()
    service = DictEpisodeService()
    for spec in items:
        service.run(spec)
    return time.perf_counter() - start


def time_service(items: list[EpisodeSpec], reads: list[float]) -> float:
    """``run_many``: how a user runs a thousand episodes."""
    start = time.perf_counter()
    with EpisodeService("memory://") as service:
        reports = service.run_many(items)
    elapsed = time.perf_counter() - start
    reads.append(check(service, reports, len(items)))
    return elapsed


def time_service_one_by_one(items: list[EpisodeSpec], reads: list[float]) -> float:
    """``run`` in a loop."""
    start = time.perf_counter()
    with EpisodeService("memory://") as service:
        reports = [service.run(spec) for spec in items]
    elapsed = time.perf_counter() - start
    reads.append(check(service, reports, len(items)))
    return elapsed


def check(service: EpisodeService, reports: list[EpisodeReport], count: int) -> float:
    """Every episode succeeded, and its record says so (read once the clock stopped); the
    seconds the first read took."""
    assert len(reports) == count and all(r.state is State.SUCCEEDED for r in reports)
    start = time.perf_counter()
    assert service.get(reports[-1].id).state is State.SUCCEEDED
    first_read = time.perf_counter() - start
    assert len(service.list("succeeded")) == count
    return first_read


def ratio(side: list[float], base: list[float]) -> float:
    """The median over rounds of a side's time against the baseline's (two runs each a round)."""
    pairs = zip(side[::2], side[1::2], base[::2], base[1::2], strict=True)
    return statistics.median((s1 + s2) / (b1 + b2) for s1, s2, b1, b2 in pairs)


def spread(base: list[float]) -> float:
    """The median over rounds of how far apart its two baseline runs were (1.0: not at all)."""
    return statistics.median(max(b1, b2) / min(b1, b2) for b1, b2 in zip(base[::2], base[1::2], strict=True))


def registry_op_costs(n: int = 20_000) -> dict[str, float]:
    """µs per registry primitive on memory://, as the service uses them."""
    registry = open_registry("memory://")
    keys = Keys("bench")
    value = b"x" * 300
    start = time.perf_counter()
    for i in range(n):
        registry.txn([Compare(keys.episode(str(i)), "create", "==", 0)], [Put(keys.episode(str(i)), value)])
    put = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(n):
        registry.txn([Compare(keys.episode(str(i)), "mod", ">", 0)], [Put(keys.episode(str(i)), value)])
    cas = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(n):
        registry.txn([], [Get(keys.episode(str(i)))])
    get = time.perf_counter() - start
    registry.close()
    return {"create_txn_us": put / n * 1e6, "cas_txn_us": cas / n * 1e6, "get_txn_us": get / n * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--quick", action="store_true", help="100 episodes a run, 50 rounds (< 30 s)")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        # Many short rounds rather than a few long ones: a shared machine's speed drifts
        # within a second, and a round's two baseline runs bracket its others more tightly.
        # (A service's construction and close cost ~25 us, a quarter of a us per episode here.)
        args.episodes, args.rounds = min(args.episodes, 100), 50
    items = specs(args.episodes)
    reads: list[float] = []
    time_baseline(items[:50])  # warm imports and gymnasium's registry on both paths
    time_service(items[:50], [])
    base: list[float] = []
    mesh: list[float] = []
    single: list[float] = []
    gc.disable()  # collector pauses land on whichever side happens to run; keep them out
    try:
        for _ in range(args.rounds):
            base.append(time_baseline(items))
            mesh.append(time_service(items, reads))
            single.append(time_service_one_by_one(items, reads))
            single.append(time_service_one_by_one(items, reads))
            mesh.append(time_service(items, reads))
            base.append(time_baseline(items))
    finally:
        gc.enable()
    base_s, mesh_s, single_s = statistics.median(base), statistics.median(mesh), statistics.median(single)
    ops = registry_op_costs()
    figures = {
        "episodes": args.episodes,
        "rounds": args.rounds,
        "baseline_us_per_episode": base_s / args.episodes * 1e6,
        "service_us_per_episode": mesh_s / args.episodes * 1e6,
        "overhead_us_per_episode": (mesh_s - base_s) / args.episodes * 1e6,
        "overhead_ratio": ratio(mesh, base),
        "one_by_one_us_per_episode": single_s / args.episodes * 1e6,
        "overhead_ratio_one_by_one": ratio(single, base),
        "baseline_spread": spread(base),
        "first_read_us_per_episode": statistics.median(reads) / args.episodes * 1e6,
        **ops,
    }
    print(f"{'figure':<28}{'value':>12}")
    for name, value in figures.items():
        print(f"{name:<28}{value:>12.3f}" if isinstance(value, float) else f"{name:<28}{value:>12}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
