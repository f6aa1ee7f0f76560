#!/usr/bin/env python3
"""What the mesh costs etcd, and how well it keeps its slots busy, as the fleet grows (issue 15):
N real agent processes (``--agents 8,24,48``) on one real etcd, this tree's code and, with
``--baseline-src``, another tree's in the same run (each N runs both back to back, the order
alternating from one N to the next).

Per N, on a fresh namespace, the agents started together (ttl 5, capacity 4 by default):

* **idle**, over ``--idle`` seconds after the join, a warm-up (every worker started) and a
  settling period: etcd's requests/s (``grpc_server_started_total`` by method), watch events/s
  (``etcd_debugging_mvcc_events_total``: one per event per watcher that receives it), bytes/s
  etcd sent to clients (``etcd_network_client_grpc_sent_bytes_total``), etcd's CPU and each
  agent process's CPU (``/proc``; its workers not counted) and RSS;
* **run**: ``--episodes`` (5,000; 1,000 with ``--quick``) ``sleep`` episodes of ``--seconds``
  each, submitted at once: the same etcd figures per episode (watch events per episode is the
  key one: every queue put reaches every agent today), claim latency beyond queueing p50/p99
  (scalekit.claim_latencies: from the committed records' timestamps, the time between an
  episode being ready on a host with a free slot and its claim), and makespan (submit to the
  last result in the client's hands) over the ideal (episode work / slots);
* **kill**: the same after kill -9 of a quarter of the agents (at least one) halfway through
  the ideal makespan; the ideal then counts the lost slots (the work the full fleet could do
  until the kill, the rest on the survivors), not the detection time nor the work redone;
* **lease**: leases lost (``openrange_leases_lost_total``) and the worst keepalive delay (the
  highest bucket of ``openrange_lease_keepalive_delay_seconds`` that gained an observation: an
  upper bound) from the start through the idle period, and over both runs;
* **invariants**, every run: each episode succeeded, its attempts closed in order, and etcd's
  history wrote its record final exactly once (scalekit.check_exactly_once). A failure stops
  the benchmark.

Then etcd's load at 1,000 hosts, per code, from a least-squares line over the N measured (two
N at least): idle requests, events and bytes per second at N = 1000; busy, the per-episode
figures at N = 1000 times the episodes per second 1,000 hosts run (1000 x capacity / seconds).

    python scripts/bench_scale.py --quick                        # 2 and 4 agents, < 2 minutes
    python scripts/bench_scale.py --agents 8,24,48 --json scale.json
    python scripts/bench_scale.py --agents 8,24,48 --baseline-src /path/to/other/tree/src --json scale.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.etcdkit import EtcdServer, start_etcd

from openrange_mesh.client.client import MeshClient
from scalekit import EtcdSample, Fleet, LeaseFigures, check_exactly_once, claim_latencies, fit, percentile

HERE = str(Path(__file__).resolve().parent.parent / "src")
HOSTS = 1000  # the fleet the load is extrapolated to


@dataclass(frozen=True)
class Options:
    capacity: int
    ttl: int
    episodes: int
    seconds: float
    idle: float


def measure(src: str, agents: int, opts: Options, server: EtcdServer, work: Path) -> dict[str, Any]:
    """Every figure of one code at one N, on a namespace of its own."""
    namespace = f"scale-{agents}-{int(time.time() * 1000)}"
    fleet = Fleet(src, server.endpoint, namespace, agents, capacity=opts.capacity, ttl=opts.ttl, work=work)
    try:
        with MeshClient(server.url, namespace=namespace, consumer="bench") as client:
            _wait_joined(fleet, client, agents)
            slots = agents * opts.capacity
            client.wait(client.submit([_spec(0.0)] * (2 * slots)), timeout=120)  # every worker started and warm
            time.sleep(3.0 + opts.ttl / 4)  # the leader's first sweep done, the warm-up's commits settled
            idle = _idle(fleet, server, opts.idle)
            at_start = fleet.lease()
            run = _run(client, fleet, server, opts, kill=0)
            after_run = fleet.lease()
            kill = _run(client, fleet, server, opts, kill=max(1, agents // 4))
            at_end = fleet.lease()
    finally:
        fleet.stop()
    # both runs: the survivors' counts since the idle period, the killed agents' until the kill run
    busy = [(at_end.get(h) or after_run[h]).since(at_start[h]) for h in at_start]
    return {"agents": agents, "idle": idle, "run": run, "kill": kill, "lease": _lease(at_start, busy)}


def _wait_joined(fleet: Fleet, client: MeshClient, agents: int) -> None:
    deadline = time.monotonic() + 60 + agents
    while len(client.catalog.hosts()) < agents:
        fleet.check_running()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{agents} agents did not join in time")
        time.sleep(0.2)


def _spec(seconds: float) -> dict[str, Any]:
    return {"runtime": "sleep", "params": {"seconds": seconds}}


def _idle(fleet: Fleet, server: EtcdServer, seconds: float) -> dict[str, Any]:
    before, cpu = EtcdSample.take(server.endpoint, server.pid), fleet.cpu()
    time.sleep(seconds)
    after, cpu_after = EtcdSample.take(server.endpoint, server.pid), fleet.cpu()
    window = after.at - before.at
    rates = after.since(before, window)
    agents = len(fleet.live)
    return {
        "per_s": rates,
        "requests_per_agent_s": rates["requests"] / agents,
        **_agent_figures(fleet, cpu, cpu_after, window),
    }


def _agent_figures(fleet: Fleet, before: dict[str, float], after: dict[str, float], window: float) -> dict[str, Any]:
    """Each live agent process's CPU (share of one core) over the window, and its RSS now."""
    cpu = [(after[h] - before[h]) / window for h in after if h in before]
    rss = list(fleet.rss().values())
    return {
        "agent_cpu_mean": statistics.mean(cpu),
        "agent_cpu_max": max(cpu),
        "agent_rss_mib_mean": statistics.mean(rss),
        "agent_rss_mib_max": max(rss),
    }


def _run(client: MeshClient, fleet: Fleet, server: EtcdServer, opts: Options, kill: int) -> dict[str, Any]:
    """``opts.episodes`` episodes submitted at once, ``kill`` agents killed -9 halfway through
    the ideal makespan; the figures of the run and its invariants checked."""
    live = fleet.live
    slots = len(live) * opts.capacity
    work = opts.episodes * opts.seconds
    victims = live[len(live) - kill :] if kill else []
    first = client.registry.get(b"/")[1] + 1
    before, cpu = EtcdSample.take(server.endpoint, server.pid), fleet.cpu()
    start = time.time()
    timer = threading.Timer(work / slots / 2, fleet.kill, (victims,))
    if victims:
        timer.start()
    try:
        ids = client.submit([_spec(opts.seconds)] * opts.episodes)
        records = client.wait(ids, timeout=max(120.0, 10 * work / slots + 60))
    finally:
        timer.cancel()
    makespan = time.time() - start
    after, cpu_after = EtcdSample.take(server.endpoint, server.pid), fleet.cpu()
    given_back = check_exactly_once(client.registry, client.keys, records, first, client.registry.get(b"/")[1])
    kill_at = min((fleet.killed[h] for h in victims), default=math.inf) - start
    ideal = work / slots
    if work > slots * kill_at:  # the full fleet until the kill, the survivors after it
        ideal = kill_at + (work - slots * kill_at) / (slots - len(victims) * opts.capacity)
    latencies = claim_latencies(records, start, opts.seconds, {h: opts.capacity for h in live})
    return {
        "episodes": opts.episodes,
        "killed": len(victims),
        "kill_at_s": kill_at if victims else None,
        "per_episode": after.since(before, opts.episodes),
        "per_s": after.since(before, after.at - before.at),
        "claim_latency_p50_s": percentile(latencies, 0.5),
        "claim_latency_p99_s": percentile(latencies, 0.99),
        "makespan_s": makespan,
        "ideal_s": ideal,
        "makespan_over_ideal": makespan / ideal,
        "attempts_given_back": given_back,
        **_agent_figures(fleet, cpu, cpu_after, after.at - before.at),
    }


def _lease(at_start: dict[str, LeaseFigures], busy: list[tuple[float, float | None]]) -> dict[str, Any]:
    start = [f.since(None) for f in at_start.values()]

    def worst(delays: list[float | None]) -> float | None:
        known = [d for d in delays if d is not None]
        return max(known) if known else None

    return {
        "lost_at_start": sum(lost for lost, _ in start),
        "worst_delay_at_start_s": worst([d for _, d in start]),
        "lost_busy": sum(lost for lost, _ in busy),
        "worst_delay_busy_s": worst([d for _, d in busy]),
    }


def extrapolate(results: list[dict[str, Any]], opts: Options) -> dict[str, Any] | None:
    """etcd's load at ``HOSTS`` hosts from a line over the N measured (None with one N)."""
    ns = [r["agents"] for r in results]
    if len(set(ns)) < 2:
        return None
    rate = HOSTS * opts.capacity / opts.seconds if opts.seconds else math.nan  # episodes/s of the fleet
    out: dict[str, Any] = {"hosts": HOSTS, "busy_episodes_per_s": rate}
    for what in ("requests", "events", "bytes"):
        a, b = fit(ns, [r["idle"]["per_s"][what] for r in results])
        out[f"idle_{what}_per_s"] = a + b * HOSTS
        a, b = fit(ns, [r["run"]["per_episode"][what] for r in results])
        out[f"busy_{what}_per_episode"] = a + b * HOSTS
        out[f"busy_{what}_per_s"] = (a + b * HOSTS) * rate
    return out


Column = tuple[str, int, Callable[[dict[str, Any]], str]]  # header, width, the cell of one result


def table(title: str, columns: list[Column], rows: list[tuple[str, dict[str, Any]]]) -> None:
    print(f"\n{title}")
    print(f"{'code':<9}{'N':>4}" + "".join(f"{h:>{w}}" for h, w, _ in columns))
    for code, r in rows:
        print(f"{code:<9}{r['agents']:>4}" + "".join(f"{cell(r):>{w}}" for _, w, cell in columns))


def _latency(run: dict[str, Any]) -> str:
    return f"{run['claim_latency_p50_s'] * 1000:.0f}/{run['claim_latency_p99_s'] * 1000:.0f}"


def _bound(delay: float | None) -> str:
    return "n/a" if delay is None else f"<= {delay:g} s"


def _busy_columns(phase: str) -> list[Column]:
    return [
        ("etcd req", 10, lambda r: f"{r[phase]['per_episode']['requests']:.2f}"),
        ("events", 9, lambda r: f"{r[phase]['per_episode']['events']:.2f}"),
        ("KB", 7, lambda r: f"{r[phase]['per_episode']['bytes'] / 1e3:.2f}"),
        ("etcd CPU ms", 13, lambda r: f"{r[phase]['per_episode']['cpu_s'] * 1e3:.2f}"),
        ("claim p50/p99 ms", 18, lambda r: _latency(r[phase])),
        ("makespan/ideal", 16, lambda r: f"{r[phase]['makespan_over_ideal']:.3f}"),
        ("agent CPU", 11, lambda r: f"{r[phase]['agent_cpu_mean']:.1%}"),
        ("given back", 12, lambda r: str(r[phase]["attempts_given_back"])),
    ]


def report(results: dict[str, list[dict[str, Any]]], extrapolated: dict[str, Any], opts: Options) -> None:
    rows = [(code, r) for code, runs in results.items() for r in runs]
    idle: list[Column] = [
        ("etcd req/s", 12, lambda r: f"{r['idle']['per_s']['requests']:.1f}"),
        ("/agent", 8, lambda r: f"{r['idle']['requests_per_agent_s']:.2f}"),
        ("events/s", 10, lambda r: f"{r['idle']['per_s']['events']:.1f}"),
        ("KB/s", 8, lambda r: f"{r['idle']['per_s']['bytes'] / 1e3:.1f}"),
        ("etcd CPU", 10, lambda r: f"{r['idle']['per_s']['cpu_s']:.1%}"),
        ("agent CPU", 11, lambda r: f"{r['idle']['agent_cpu_mean']:.1%}"),
        ("agent RSS MiB", 15, lambda r: f"{r['idle']['agent_rss_mib_mean']:.1f}"),
    ]
    table(f"idle, per second ({opts.idle:g} s)", idle, rows)
    for phase, title in (("run", "run"), ("kill", "after kill -9 of a quarter")):
        busy = _busy_columns(phase)
        table(f"{title}: {opts.episodes} x sleep {opts.seconds:g} s, capacity {opts.capacity}, per episode", busy, rows)
    lease: list[Column] = [
        ("lost at start", 15, lambda r: f"{r['lease']['lost_at_start']:.0f}"),
        ("worst at start", 16, lambda r: _bound(r["lease"]["worst_delay_at_start_s"])),
        ("lost in runs", 14, lambda r: f"{r['lease']['lost_busy']:.0f}"),
        ("worst in runs", 15, lambda r: _bound(r["lease"]["worst_delay_busy_s"])),
    ]
    table(f"lease (ttl {opts.ttl}): leases lost, the worst keepalive delay", lease, rows)
    for code, e in extrapolated.items():
        if e is None:
            print(f"\n{code}: one N measured, nothing to extrapolate from")
            continue
        print(
            f"\n{code} at {HOSTS} hosts (a line over N): idle {e['idle_requests_per_s']:.0f} requests/s, "
            f"{e['idle_events_per_s']:.0f} events/s, {e['idle_bytes_per_s'] / 1e6:.2f} MB/s; "
            f"busy at {e['busy_episodes_per_s']:.0f} episodes/s: {e['busy_requests_per_s']:.0f} requests/s, "
            f"{e['busy_events_per_s']:.0f} events/s ({e['busy_events_per_episode']:.0f} per episode), "
            f"{e['busy_bytes_per_s'] / 1e6:.1f} MB/s"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", default="8,24,48", help="fleet sizes, comma-separated")
    parser.add_argument("--capacity", type=int, default=4, help="workers per agent")
    parser.add_argument("--ttl", type=int, default=5, help="the agents' lease ttl (loop_wait = ttl / 8)")
    parser.add_argument("--episodes", type=int, default=5000, help="episodes per run")
    parser.add_argument("--seconds", type=float, default=2.0, help="each episode's length (the sleep runtime)")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of the idle measurement")
    parser.add_argument("--baseline-src", help="another tree's src/ to run side by side")
    parser.add_argument("--quick", action="store_true", help="2 and 4 agents, 1000 episodes of 0.1 s, 10 s idle")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    sizes = [2, 4] if args.quick else [int(n) for n in args.agents.split(",")]
    opts = Options(
        capacity=args.capacity,
        ttl=args.ttl,
        episodes=1000 if args.quick else args.episodes,
        seconds=0.1 if args.quick else args.seconds,
        idle=10.0 if args.quick else args.idle,
    )
    codes = [("this", HERE)] + ([("baseline", args.baseline_src)] if args.baseline_src else [])
    results: dict[str, list[dict[str, Any]]] = {code: [] for code, _ in codes}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        server = start_etcd(work / "etcd")
        try:
            for index, agents in enumerate(sizes):
                for code, src in codes[:: 1 if index % 2 else -1]:  # baseline first at the first N
                    print(f"{code}: {agents} agents ...", flush=True)
                    results[code].append(measure(src, agents, opts, server, work))
        finally:
            server.stop()
    extrapolated = {code: extrapolate(runs, opts) for code, runs in results.items()}
    report(results, extrapolated, opts)
    if args.json:
        figures = {"options": vars(opts), "agents": sizes, "results": results, "extrapolated": extrapolated}
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
