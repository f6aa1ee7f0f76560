#!/usr/bin/env python3
"""How long the leader's loop waits for its periodic sweep, over N finished single records on a
real etcd (the namespace a mesh keeps for a week by default): a whole sweep at once (what an
agent does when it joins or is elected, and what the periodic sweep did before session 14)
against the longest slice of one periodic cycle with retention (agent/sweeper.py). Nothing to
requeue or delete: the standing cost. Each figure twice, whole then sliced, twice.

    python scripts/sweep_stall.py --records 100000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.etcdkit import start_etcd

from openrange_mesh.agent import sweeper
from openrange_mesh.keys import Keys
from openrange_mesh.ledger.ledger import Ledger
from openrange_mesh.ledger.records import finish_attempt, start_attempt
from openrange_mesh.model import EpisodeRecord, EpisodeSpec, State
from openrange_mesh.registry import Put, Registry, open_registry


def fill(registry: Registry, keys: Keys, count: int) -> None:
    """``count`` CartPole records, finished and acked now (retention keeps them)."""
    spec = EpisodeSpec(runtime="gymnasium", params={"env": "CartPole-v1"}, seed=3)
    for start in range(0, count, 100):
        ops = []
        for i in range(start, min(start + 100, count)):
            record = start_attempt(EpisodeRecord(f"s{i:08d}", spec, created_at=1.0, submitter="b"), "h1", "c1", 2, None)
            done = finish_attempt(record, State.SUCCEEDED, 3.0, None, {"return": 21.0, "length": 21}, token=5)
            ops.append(Put(keys.episode(done.id), done.replace(acked_at=time.time()).to_bytes()))
        registry.txn([], ops)


def whole(registry: Registry, keys: Keys, ledger: Ledger) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    sweeper.sweep(registry, keys, ledger)
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def sliced(registry: Registry, keys: Keys, ledger: Ledger) -> dict[str, float]:
    cycle = sweeper.Sweeper(registry, keys, ledger)
    cycle.start(time.time() - 3600)
    longest, slices, now, began = 0.0, 0, 0.0, time.perf_counter()
    while cycle.running:
        wall = time.perf_counter()
        cycle.step(now=now)
        longest, slices, now = max(longest, time.perf_counter() - wall), slices + 1, now + sweeper.SLICE_EVERY
    return {"longest_slice_s": longest, "slices": slices, "all_slices_s": time.perf_counter() - began}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sweep-stall-") as tmp:
        server = start_etcd(Path(tmp) / "etcd")
        try:
            registry, keys = open_registry(server.url), Keys("stall")
            fill(registry, keys, args.records)
            ledger = Ledger(registry, keys)
            runs = [(whole(registry, keys, ledger), sliced(registry, keys, ledger)) for _ in range(2)]
        finally:
            server.stop()
    print(f"{'records':<28}{args.records:>10}")
    for n, (w, s) in enumerate(runs, start=1):
        print(f"{f'run {n}: whole sweep wall s':<28}{w['wall_s']:>10.3f}   CPU s {w['cpu_s']:.3f}")
        print(f"{f'run {n}: longest slice ms':<28}{s['longest_slice_s'] * 1e3:>10.1f}   of {s['slices']:.0f} slices")
    if args.json:
        Path(args.json).write_text(json.dumps({"records": args.records, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
