#!/usr/bin/env python3
"""The dashboard at scale, and what it costs the mesh (design/dashboard.md).

1. N episode records (default 100k) are written to a fresh etcd; one agent joins with its
   dashboard and leads. Measured against its server:
   * ``/api/episodes`` latency, p50 and p95 over many requests: the first page, a filtered
     page, and a page deep behind a cursor;
   * ``/api/summary`` latency (when the server has it);
   * the first full page load in headless Chromium (Debian's, through Playwright): navigation
     until the episodes table shows rows;
   * the dashboard process's RSS before the index was built (the agent's join) and after.
2. The no-op mesh of ``bench_mesh.py`` (2 agents of 4 workers, per-episode claims), measured
   A B C D D C B A in one run: agents with no dashboard at all (A: what a mesh costs without us
   serving anything), with the dashboard and nobody asking (B: the leader builds no index), with
   the dashboard asked once before the run and no page open (C: the leader follows every record,
   as it does for ten minutes after a look), and with five live streams open on the leader (D).
   The issue's bar compares D with C; C against A shows what following every record costs the
   leader on this 2-core machine, where etcd, both agents, their workers, the client and the
   dashboard share the cores.

    python scripts/bench_dashboard.py --json out.json
    python scripts/bench_dashboard.py --quick        # 20k records, 1000 episodes per mesh run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from tests.browserkit import ARGS as BROWSER_ARGS  # noqa: E402
from tests.etcdkit import start_etcd  # noqa: E402

import bench_mesh  # noqa: E402
from bench_ls import NAMESPACE, write_records  # noqa: E402
from bench_mesh import mesh_noop  # noqa: E402
from openrange_mesh.keys import Keys  # noqa: E402
from openrange_mesh.model.seat import read_seat  # noqa: E402
from openrange_mesh.registry import open_registry  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def leader_url(registry: Any, namespace: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kv = registry.get(Keys(namespace).leader())[0]
        seat = read_seat(kv.value, kv.create_revision) if kv else None
        if seat is not None and seat.url:
            return seat.url
        time.sleep(0.1)
    raise SystemExit(f"no leader with a dashboard in namespace {namespace} after {timeout:g} s")


def start_agent(url: str, namespace: str, work: Path) -> subprocess.Popen[bytes]:
    log = (work / "agent.log").open("wb")
    argv = [sys.executable, "-m", "openrange_mesh.cli.agent", "--etcd", url, "--namespace", namespace]
    argv += ["--host-id", "dash", "--capacity", "1", "--store", str(work / "store"), "--ttl", "2"]
    argv += ["--dashboard-host", "127.0.0.1", "--dashboard-port", "0", "--log-level", "WARNING"]
    return subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def dashboard_rss_mib(agent_pid: int) -> float:
    """RSS of the agent's dashboard child (the process running dashboard.server)."""
    children = Path(f"/proc/{agent_pid}/task/{agent_pid}/children").read_text().split()
    for pid in children:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if b"multiprocessing" in cmdline and b"spawn" in cmdline:
            rss = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
            return int(rss.split()[1]) / 1024
    raise SystemExit("the agent's dashboard process was not found")


def latencies(client: httpx.Client, path: str, count: int, **params: Any) -> dict[str, float]:
    took = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.get(path, params=params)
        took.append(time.perf_counter() - started)
        response.raise_for_status()
    took.sort()
    return {"p50_ms": 1000 * statistics.median(took), "p95_ms": 1000 * took[int(0.95 * (len(took) - 1))]}


def page_load(url: str) -> dict[str, float] | None:
    """A fresh tab on the overview: first contentful paint (the browser's own figure), and
    seconds until the episodes table shows rows (the data fetched and drawn)."""
    if not Path(CHROMIUM).exists():
        print(f"# no {CHROMIUM}: the browser figures are left out", file=sys.stderr)
        return None
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            started = time.perf_counter()
            page.goto(url)
            page.wait_for_selector("table.episodes tbody tr", timeout=60_000)
            rows_s = time.perf_counter() - started
            paint = page.evaluate(
                "performance.getEntriesByName('first-contentful-paint').map(e => e.startTime)[0] ?? null"
            )
            return {"first_paint_s": paint / 1000 if paint is not None else float("nan"), "rows_s": rows_s}
        finally:
            browser.close()


def at_scale(records: int, samples: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        etcd = start_etcd(work / "etcd")
        registry = open_registry(etcd.url, retry_timeout=30)
        agent = None
        try:
            took = write_records(registry, records)
            print(f"# wrote {records} records in {took:.1f} s", file=sys.stderr)
            agent = start_agent(etcd.url, NAMESPACE, work)
            url = leader_url(registry, NAMESPACE)
            with httpx.Client(base_url=url, timeout=60) as client:
                rss_before = dashboard_rss_mib(agent.pid)
                started = time.perf_counter()
                while client.get("/api/episodes", params={"limit": 1}).status_code != 200:
                    time.sleep(0.05)
                indexed = time.perf_counter() - started
                first = client.get("/api/episodes", params={"limit": 50}).json()
                assert first["total"] == records, first["total"]
                deep = client.get("/api/episodes", params={"limit": 500}).json()
                for _ in range(20):  # 10k records in: a cursor far from the top
                    deep = client.get("/api/episodes", params={"limit": 500, "cursor": deep["next"]}).json()
                figures: dict[str, Any] = {
                    "records": records,
                    "index_ready_s": indexed,
                    "first_page": latencies(client, "/api/episodes", samples, limit=50),
                    "filtered_page": latencies(client, "/api/episodes", samples, limit=50, state="failed", host="gpu3"),
                    "deep_page": latencies(client, "/api/episodes", samples, limit=50, cursor=deep["next"]),
                }
                if client.get("/api/summary").status_code == 200:
                    figures["summary"] = latencies(client, "/api/summary", samples)
                figures["page_load"] = page_load(url)
                figures["dashboard_rss_mib"] = {"before": rss_before, "after": dashboard_rss_mib(agent.pid)}
            return figures
        finally:
            if agent is not None:
                agent.terminate()
                agent.wait(30)
            registry.close()
            etcd.stop()


@contextlib.contextmanager
def _open_streams(url: str, namespace: str, count: int) -> Iterator[None]:
    registry = open_registry(url)
    base = leader_url(registry, namespace)
    registry.close()
    stop = threading.Event()
    seen = [0] * count

    def read(i: int) -> None:
        with httpx.stream("GET", f"{base}/api/stream", timeout=None) as response:
            for line in response.iter_lines():
                seen[i] += line.startswith("data:")
                if stop.is_set():
                    return

    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
    if not all(seen):
        raise SystemExit(f"a stream got nothing: {seen}")


@contextlib.contextmanager
def _asked_once(url: str, namespace: str) -> Iterator[None]:
    """The leader's index built (a summary asked for and answered), then no page open."""
    registry = open_registry(url)
    base = leader_url(registry, namespace)
    registry.close()
    deadline = time.monotonic() + 60
    while httpx.get(f"{base}/api/summary", timeout=30).status_code != 200:
        if time.monotonic() > deadline:
            raise SystemExit("the leader's index was not ready within 60 s")
        time.sleep(0.05)
    yield


def mesh_cost(episodes: int, cycles: int = 1) -> dict[str, Any]:
    """A B C D D C B A, ``cycles`` times: no dashboard, a dashboard nobody asked, one asked once
    (its index kept), five streams. This VM's speed wanders by +-20% within minutes: more
    cycles, steadier means."""
    kinds = [("none", 0), ("dashboard", 0), ("indexed", 0), ("streams", 5)]
    plan = [*kinds, *kinds[::-1]] * cycles
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        etcd = start_etcd(work / "etcd")
        served = list(bench_mesh.DASHBOARD)
        try:
            runs: list[tuple[str, float]] = []
            for run, (kind, open_streams) in enumerate(plan):
                bench_mesh.DASHBOARD[:] = ["--no-dashboard"] if kind == "none" else served

                def during(
                    namespace: str, count: int = open_streams, kind: str = kind
                ) -> contextlib.AbstractContextManager[None]:
                    if kind == "indexed":
                        return _asked_once(etcd.url, namespace)
                    return _open_streams(etcd.url, namespace, count)

                asks = open_streams or kind == "indexed"
                figure = mesh_noop(etcd.url, work, episodes, 2, run=run, during=during if asks else None)
                runs.append((kind, figure["episodes_per_s"]))
                print(f"# {kind}: {figure['episodes_per_s']:.0f} episodes/s", file=sys.stderr)
        finally:
            bench_mesh.DASHBOARD[:] = served
            etcd.stop()
    mean = {k: statistics.mean(r for kind, r in runs if kind == k) for k, _ in kinds}
    return {
        "episodes": episodes,
        "runs": runs,
        "per_s": mean,
        "streams_vs_indexed": mean["streams"] / mean["indexed"],
        "indexed_vs_none": mean["indexed"] / mean["none"],
        "dashboard_vs_none": mean["dashboard"] / mean["none"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--episodes", type=int, default=2000, help="no-op episodes per mesh run")
    parser.add_argument("--samples", type=int, default=40, help="requests per latency figure")
    parser.add_argument("--cycles", type=int, default=2, help="A B C C B A cycles of the mesh runs")
    parser.add_argument("--mesh-only", action="store_true", help="only the mesh runs (part 2)")
    parser.add_argument("--quick", action="store_true", help="20k records, 1000 episodes, 20 samples")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    records, episodes, samples = (20_000, 1000, 20) if args.quick else (args.records, args.episodes, args.samples)
    scale = None if args.mesh_only else at_scale(records, samples)
    cost = mesh_cost(episodes, 1 if args.quick else args.cycles)
    if scale is not None:
        report_scale(scale)
    report_mesh(cost)
    if args.json:
        Path(args.json).write_text(json.dumps({"scale": scale, "mesh": cost}, indent=2))


def report_scale(scale: dict[str, Any]) -> None:
    print(f"dashboard over {scale['records']} records")
    for name, path in [
        ("first_page", "episodes"),
        ("filtered_page", "episodes?state&host"),
        ("deep_page", "episodes?cursor"),
        ("summary", "summary"),
    ]:
        if name in scale:
            print(f"  /api/{path:<22} p50 {scale[name]['p50_ms']:7.1f} ms  p95 {scale[name]['p95_ms']:7.1f} ms")
    load = scale["page_load"]
    seen = f"first paint {load['first_paint_s']:.2f} s, rows shown {load['rows_s']:.2f} s" if load else "no browser"
    print(f"  index ready after {scale['index_ready_s']:.2f} s; a fresh tab: {seen}")
    rss = scale["dashboard_rss_mib"]
    print(f"  dashboard RSS {rss['before']:.0f} MiB -> {rss['after']:.0f} MiB (+{rss['after'] - rss['before']:.0f})")


def report_mesh(cost: dict[str, Any]) -> None:
    per_s = cost["per_s"]
    print(
        f"no-op mesh, 2 agents x 4 workers (A B C D D C B A): {per_s['none']:.0f}/s with no dashboard, "
        f"{per_s['dashboard']:.0f}/s with one nobody asked, {per_s['indexed']:.0f}/s with one asked once, "
        f"{per_s['streams']:.0f}/s with five streams"
    )
    print(
        f"  five streams / asked once {cost['streams_vs_indexed']:.3f}; "
        f"asked once / none {cost['indexed_vs_none']:.3f}; nobody asked / none {cost['dashboard_vs_none']:.3f}"
    )


if __name__ == "__main__":
    main()
