#!/usr/bin/env python3
"""``openrange-mesh ls`` at scale: paged streaming versus one range of everything, one run.

Starts its own etcd (the local mesh's, with no agents), writes N episode records through the
registry in big txns, then runs the real command as a child process, table and ``-o json``:

* first page: seconds from launch to the first byte on stdout (a pipe the benchmark drains);
* total: seconds from launch to exit with stdout on /dev/null;
* peak RSS: the child's ru_maxrss (``os.wait4``), in MiB.

Each figure is the median of ``--repeat`` rounds (a round runs every variant in turn, so drift on
a shared machine hits all alike), paged (``ls``'s default page size, and the Catalog's smaller
default) and unpaged (``--page-size 0``: one range request for everything).
An empty namespace gives the baseline of interpreter start and imports.

    python scripts/bench_ls.py             # 100k records
    python scripts/bench_ls.py --quick     # 20k records
    python scripts/bench_ls.py --json out.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from openrange_mesh.cli.local_mesh import LocalMesh
from openrange_mesh.cli.ls import LS_PAGE_SIZE
from openrange_mesh.keys import Keys
from openrange_mesh.ledger.catalog import PAGE_SIZE as CATALOG_PAGE_SIZE
from openrange_mesh.model import Attempt, EpisodeRecord, EpisodeSpec, State
from openrange_mesh.registry import Put, Registry, open_registry

NAMESPACE = "bench"
TXN_OPS = 128  # etcd's default --max-txn-ops
STATES = [State.SUCCEEDED] * 6 + [State.FAILED, State.RUNNING, State.PENDING, State.CANCELLED]


@dataclass
class Figure:
    output: str
    page_size: str
    records: int
    first_page_s: float
    total_s: float
    peak_rss_mib: float


def record(i: int, now: float) -> EpisodeRecord:
    state = STATES[i % len(STATES)]
    host = f"gpu{i % 16}"
    spec = EpisodeSpec("gymnasium", {"env": "CartPole-v1"}, seed=i, labels={"run": f"r{i % 7}"})
    started = now - 100 + (i % 50)
    history = (
        ()
        if state is State.PENDING
        else (Attempt(1, host, started, None if state is State.RUNNING else started + 3, state.value),)
    )
    return EpisodeRecord(
        id=f"{i // 0x10000 + 1:010x}-{i % 0x10000:04x}-bench",
        spec=spec,
        state=state,
        owner=None if state is State.PENDING else host,
        created_at=now - 200,
        started_at=None if state is State.PENDING else started,
        finished_at=history[0].finished_at if history else None,
        error="episode failed: the runtime said so" if state is State.FAILED else None,
        result={"return": float(i % 500), "steps": i % 500} if state is State.SUCCEEDED else None,
        history=history,
        submitter="bench",
    )


def write_records(registry: Registry, count: int) -> float:
    keys, now = Keys(NAMESPACE), time.time()
    started = time.perf_counter()

    def write(start: int) -> None:
        stop = min(start + TXN_OPS, count)
        registry.txn([], [Put(keys.episode(r.id), r.to_bytes()) for r in (record(i, now) for i in range(start, stop))])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(0, count, TXN_OPS)))
    return time.perf_counter() - started


def ls_argv(endpoint: str, namespace: str, output: str, page_size: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "openrange_mesh.cli.main",
        "--etcd",
        endpoint,
        "--namespace",
        namespace,
        "ls",
        "-o",
        output,
        "--page-size",
        str(page_size),
    ]


def first_page(argv: list[str], expected_lines: int) -> float:
    """Seconds to the first byte of output; the rest is drained and its lines counted."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, env=_env())
    assert isinstance(process.stdout, io.BufferedReader)
    first = process.stdout.read1(65536)
    elapsed = time.perf_counter() - started
    lines = first.count(b"\n")
    while chunk := process.stdout.read1(1 << 20):
        lines += chunk.count(b"\n")
    if process.wait() != 0 or lines != expected_lines:
        raise SystemExit(f"{argv[-4:]}: exit {process.returncode}, {lines} lines (wanted {expected_lines})")
    return elapsed


def total_and_rss(argv: list[str]) -> tuple[float, float]:
    """Seconds to exit with stdout on /dev/null, and the child's peak RSS in MiB."""
    with open(os.devnull, "wb") as sink:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=sink, env=_env())
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{argv[-4:]}: exit {process.returncode}")
    return elapsed, usage.ru_maxrss / 1024  # Linux reports KiB


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OPENRANGE_")}


@dataclass(frozen=True)
class Variant:
    namespace: str
    output: str
    page_size: int
    records: int

    def argv(self, endpoint: str) -> list[str]:
        return ls_argv(endpoint, self.namespace, self.output, self.page_size)

    @property
    def expected_lines(self) -> int:
        return self.records + (1 if self.output == "table" else 2 if self.records else 1)


def measure(endpoint: str, variants: list[Variant], repeat: int) -> list[Figure]:
    """Rounds of every variant in turn, so drift on a shared machine hits them all alike."""
    runs: dict[Variant, list[tuple[float, float, float]]] = {v: [] for v in variants}
    for _ in range(repeat):
        for v in variants:
            first = first_page(v.argv(endpoint), v.expected_lines)
            total, rss = total_and_rss(v.argv(endpoint))
            runs[v].append((first, total, rss))
    return [
        Figure(
            v.output,
            "all" if v.page_size == 0 else str(v.page_size),
            v.records,
            *(statistics.median(column) for column in zip(*runs[v], strict=True)),
        )
        for v in variants
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="20k records, 1 run each")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    args = parser.parse_args()
    count, repeat = (20_000, 1) if args.quick else (args.records, args.repeat)

    with LocalMesh(agents=0, say=lambda line: print(f"# {line}", file=sys.stderr)) as mesh:
        registry = open_registry(f"etcd://{mesh.endpoint}", retry_timeout=30)
        try:
            took = write_records(registry, count)
        finally:
            registry.close()
        print(f"# wrote {count} records in {took:.1f} s", file=sys.stderr)
        variants = [Variant("empty", "table", LS_PAGE_SIZE, 0)] + [
            Variant(NAMESPACE, output, page_size, count)
            for output in ("table", "json")
            for page_size in (CATALOG_PAGE_SIZE, LS_PAGE_SIZE, 0)
        ]
        figures = measure(mesh.endpoint, variants, repeat)
    report(figures, count, repeat)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"records": count, "repeat": repeat, "figures": [asdict(x) for x in figures]}, f, indent=2)


def report(figures: list[Figure], count: int, repeat: int) -> None:
    print(f"openrange-mesh ls over {count} records (median of {repeat}; 'all' = one range of everything)")
    print(f"{'output':<7} {'page':>5} {'records':>8} {'first page s':>13} {'total s':>8} {'peak RSS MiB':>13}")
    for f in figures:
        print(
            f"{f.output:<7} {f.page_size:>5} {f.records:>8} {f.first_page_s:>13.3f} {f.total_s:>8.2f} "
            f"{f.peak_rss_mib:>13.1f}"
        )
    by: dict[tuple[str, str], Figure] = {(f.output, f.page_size): f for f in figures if f.records}
    for output in ("table", "json"):
        paged, whole = by[(output, str(LS_PAGE_SIZE))], by[(output, "all")]
        ratios: dict[str, Any] = {
            "first page": whole.first_page_s / paged.first_page_s,
            "total": whole.total_s / paged.total_s,
            "peak RSS": whole.peak_rss_mib / paged.peak_rss_mib,
        }
        print(f"{output}: unpaged / paged = " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
