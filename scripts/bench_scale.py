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
  last result in the client's hands) over the ideal: the best schedule of equal, indivisible
  episodes on the slots, ceil(episodes / slots) rounds of ``--seconds`` (episode work / slots
  would ask 5,000 episodes on 192 slots to finish in 26.04 rounds, when 27 are the least);
* **kill**: the same after kill -9 of a quarter of the agents (at least one) halfway through
  the ideal makespan; the ideal then counts the lost slots (every slot's whole rounds until the
  kill, the rest in rounds on the survivors: the episodes the victims were running are run
  again), not the time it takes to notice the kill;
* **lease**: leases lost (``openrange_leases_lost_total``) and the worst keepalive delay (the
  highest bucket of ``openrange_lease_keepalive_delay_seconds`` that gained an observation: an
  upper bound) from the start through the idle period, and over both runs;
* **invariants**, every run: each episode succeeded, its attempts closed in order, and etcd's
  history wrote its record final exactly once (scalekit.check_exactly_once). A failure (or a
  run that does not finish) is printed with the facts, the other N go on, and the exit status
  is 1.

**Simulated hosts** (``--simulate 200,500``): the same, with N hosts shared out over
``--sim-processes`` scripts/scalesim.py processes (one per 32 hosts, 4 at least), each host a real
``Agent`` whose episodes a ``SimulatedPool`` ends on its own loop (no worker processes),
``--sim-episodes`` (1,000) per run, ``--sim-ttl`` their ttl; they join 8 a second (each join
is an event for every host already there), and a kill takes a quarter of the processes.
etcd's figures are a fleet's; the agents' CPU, latency, makespan and lease timing are those of
hosts that share a GIL by the dozen and two cores by the hundred (500 need a ttl of ~30 here),
and results reach commits sooner than a worker's (no events written first), so more commits
ride with claims. Only a tree whose ``Agent`` takes ``make_pool`` can be simulated.

Then etcd's load at 1,000 hosts, per code (and per mode), from a least-squares line over the N
measured (two N at least): idle requests, events and bytes per second at N = 1000; busy, the
per-episode figures at N = 1000 times the episodes per second 1,000 hosts run (1000 x capacity
/ seconds).

    python scripts/bench_scale.py --quick        # 2 and 4 agents, 16 simulated hosts: ~2 minutes
    python scripts/bench_scale.py --agents 8,24,48 --simulate 200,500 --json scale.json
    python scripts/bench_scale.py --agents 8,24,48 --baseline-src /path/to/other/tree/src --json scale.json
    python scripts/bench_scale.py --agents 48 --episodes 960 --json scale.json --timelines   # every attempt
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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.etcdkit import EtcdServer, start_etcd

from openrange_mesh.client.client import MeshClient
from openrange_mesh.errors import RegistryError
from openrange_mesh.model import EpisodeRecord, State
from scalekit import EtcdSample, Fleet, LeaseFigures, check_exactly_once, claim_latencies, fit, percentile

HERE = str(Path(__file__).resolve().parent.parent / "src")
HOSTS = 1000  # the fleet the load is extrapolated to
# Simulated hosts a process holds by default (~10 threads each): 500 hosts in 8 processes at
# ttl 20 lost leases on this machine (a process's threads starved its own refreshes), in 16
# processes at ttl 30 none did.
SIM_PER_PROCESS = 32


@dataclass(frozen=True)
class Options:
    capacity: int
    ttl: int
    episodes: int
    seconds: float
    idle: float
    timelines: bool = False  # keep every attempt's host, start and end in the results


def measure(src: str, agents: int, opts: Options, server: EtcdServer, work: Path, per_process: int) -> dict[str, Any]:
    """Every figure of one code at one N, on a namespace of its own."""
    namespace = f"scale-{agents}-{int(time.time() * 1000)}"
    fleet = Fleet(
        src,
        server.endpoint,
        namespace,
        agents,
        capacity=opts.capacity,
        ttl=opts.ttl,
        work=work,
        per_process=per_process,
    )
    try:
        with MeshClient(server.url, namespace=namespace, consumer="bench") as client:
            _wait_joined(fleet, client, agents)
            if per_process == 1:  # every worker started and warm (simulated hosts have none)
                client.wait(client.submit([_spec(0.0)] * (2 * agents * opts.capacity)), timeout=120)
            time.sleep(3.0 + opts.ttl / 4)  # the leader's first sweep done, the warm-up's commits settled
            idle = _idle(fleet, server, opts.idle)
            at_start = fleet.lease()
            run = _run(client, fleet, server, opts, victims=[])
            after_run = fleet.lease()
            kill = _run(client, fleet, server, opts, victims=fleet.quarter())
            at_end = fleet.lease()
    except Exception:
        print("\n".join(fleet.said()), flush=True)
        raise
    finally:
        fleet.stop()
    # both runs: the survivors' counts since the idle period, the killed agents' until the kill run
    busy = [(at_end.get(h) or after_run[h]).since(at_start[h]) for h in at_start]
    return {"agents": agents, "ttl": opts.ttl, "idle": idle, "run": run, "kill": kill, "lease": _lease(at_start, busy)}


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


def _run(client: MeshClient, fleet: Fleet, server: EtcdServer, opts: Options, victims: list[str]) -> dict[str, Any]:
    """``opts.episodes`` episodes submitted at once, ``victims`` killed -9 halfway through the
    ideal makespan; the figures of the run and its invariants checked."""
    live = fleet.live
    slots = len(live) * opts.capacity
    work = opts.episodes * opts.seconds
    first = client.registry.get(b"/")[1] + 1
    before, cpu = EtcdSample.take(server.endpoint, server.pid), fleet.cpu()
    start = time.time()
    halfway = ideal_makespan(opts.episodes, opts.seconds, slots, math.inf, 0) / 2
    timer = threading.Timer(halfway, fleet.kill, (victims,))
    if victims:
        timer.start()
    try:
        ids = client.submit([_spec(opts.seconds)] * opts.episodes)
        submitted = time.time() - start
        try:
            records = client.wait(ids, timeout=max(600.0, 10 * work / slots))
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; {stuck(client, ids)}") from exc
    finally:
        timer.cancel()
    makespan = time.time() - start
    after, cpu_after = EtcdSample.take(server.endpoint, server.pid), fleet.cpu()
    given_back = check_exactly_once(client.registry, client.keys, records, first, client.registry.get(b"/")[1])
    kill_at = min((fleet.killed.get(h, math.inf) for h in victims), default=math.inf) - start
    ideal = ideal_makespan(opts.episodes, opts.seconds, slots, kill_at, len(victims) * opts.capacity)
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
        "submit_s": submitted,  # submit() returned: the last record written
        "last_start_s": max(a.started_at for r in records for a in r.history) - start,
        "ideal_s": ideal,
        "makespan_over_ideal": makespan / ideal,
        "attempts_given_back": given_back,
        **_agent_figures(fleet, cpu, cpu_after, after.at - before.at),
        **({"timeline": timeline(records, start)} if opts.timelines else {}),
    }


def stuck(client: MeshClient, ids: list[str]) -> str:
    """Where the unfinished of ``ids`` are: pending in whose mailbox (a live host's or not, its
    entry there or not), running on whom (a live claim or none)."""
    live = {h.id for h in client.catalog.hosts()}
    entries = {i: e.owner for e in client.ledger.queue() for i in e.ids}
    claims = client.registry.range(client.keys.claims()).kvs
    claimed = {client.keys.name_of(kv.key, client.keys.claims()).split("/")[0] for kv in claims}
    where: Counter[str] = Counter()
    for versioned in client.ledger.read(ids).values():
        record = versioned.record
        if record.state.is_terminal:
            continue
        if record.state is State.PENDING:
            owner = entries.get(record.id)
            place = "no entry" if owner is None else "a live host's" if owner in live else f"mailbox {owner}, not live"
            where[f"pending ({place})"] += 1
        else:
            host = record.history[-1].host if record.history else "?"
            place = "no live host" if host not in live else "a claim of its host" if host in claimed else "no claim"
            where[f"{record.state.value} ({place})"] += 1
    return ", ".join(f"{n} {what}" for what, n in where.most_common()) or "none unfinished now"


def timeline(records: list[EpisodeRecord], start: float) -> list[tuple[str, str, float, float | None, str | None]]:
    """Every attempt of the run as (episode, host, start, end, outcome), times in seconds from
    the submission, by start: where a round's transitions or a kill's requeues went (design/
    performance.md, "Scale")."""
    attempts = [
        (r.id, a.host, a.started_at - start, a.finished_at and a.finished_at - start, a.outcome)
        for r in records
        for a in r.history
    ]
    return sorted(attempts, key=lambda a: a[2])


def ideal_makespan(episodes: int, seconds: float, slots: int, kill_at: float, lost: int) -> float:
    """The least makespan of ``episodes`` equal episodes on ``slots`` slots, ``lost`` of them
    gone at ``kill_at`` (inf: none): whole rounds on every slot until the kill (a victim's
    unfinished episode is run again), then rounds on the survivors."""
    rounds = math.ceil(episodes / slots)
    if seconds <= 0 or kill_at >= rounds * seconds:
        return rounds * seconds
    done = math.floor(kill_at / seconds)
    return (done + math.ceil((episodes - slots * done) / (slots - lost))) * seconds


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
        measured = [r["run"]["per_episode"][what] for r in results]
        a, b = fit(ns, measured)
        # a cost per episode that does not grow with N stays what the largest fleet measured
        # (a line falling through the noise would promise less, even below zero)
        per_episode = a + b * HOSTS if b > 0 else measured[ns.index(max(ns))]
        out[f"busy_{what}_per_episode"] = per_episode
        out[f"busy_{what}_per_s"] = per_episode * rate
    return out


Column = tuple[str, int, Callable[[dict[str, Any]], str]]  # header, width, the cell of one result


def table(title: str, columns: list[Column], rows: list[tuple[str, dict[str, Any]]]) -> None:
    print(f"\n{title}")
    print(f"{'code':<12}{'N':>5}" + "".join(f"{h:>{w}}" for h, w, _ in columns))
    for code, r in rows:
        print(f"{code:<12}{r['agents']:>5}" + "".join(f"{cell(r):>{w}}" for _, w, cell in columns))


def _latency(run: dict[str, Any]) -> str:
    return f"{run['claim_latency_p50_s'] * 1000:.0f}/{run['claim_latency_p99_s'] * 1000:.0f}"


def _bound(delay: float | None) -> str:
    return "n/a" if delay is None else f"<= {delay:g} s"


def _busy_columns(phase: str) -> list[Column]:
    return [
        ("episodes", 10, lambda r: str(r[phase]["episodes"])),
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
        table(f"{title}: sleep {opts.seconds:g} s episodes, capacity {opts.capacity}; per episode", busy, rows)
    lease: list[Column] = [
        ("ttl", 5, lambda r: str(r["ttl"])),
        ("lost at start", 15, lambda r: f"{r['lease']['lost_at_start']:.0f}"),
        ("worst at start", 16, lambda r: _bound(r["lease"]["worst_delay_at_start_s"])),
        ("lost in runs", 14, lambda r: f"{r['lease']['lost_busy']:.0f}"),
        ("worst in runs", 15, lambda r: _bound(r["lease"]["worst_delay_busy_s"])),
    ]
    table("lease: leases lost, the worst keepalive delay", lease, rows)
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
    parser.add_argument("--agents", default="8,24,48", help="fleet sizes, comma-separated ('': none)")
    parser.add_argument("--simulate", default="", help="simulated fleet sizes, comma-separated (e.g. 200,500)")
    parser.add_argument(
        "--sim-processes", type=int, help="processes the simulated hosts share (default: 1 per 32, at least 4)"
    )
    parser.add_argument("--sim-episodes", type=int, default=1000, help="episodes per simulated run")
    parser.add_argument("--sim-ttl", type=int, help="the simulated hosts' ttl (default --ttl): 500 on 2 cores need ~30")
    parser.add_argument("--capacity", type=int, default=4, help="workers per agent")
    parser.add_argument("--ttl", type=int, default=5, help="the agents' lease ttl (loop_wait = ttl / 8)")
    parser.add_argument("--episodes", type=int, default=5000, help="episodes per run")
    parser.add_argument("--seconds", type=float, default=2.0, help="each episode's length (the sleep runtime)")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of the idle measurement")
    parser.add_argument("--baseline-src", help="another tree's src/ to run side by side")
    parser.add_argument("--quick", action="store_true", help="2 and 4 agents and 16 simulated, 1000 x 0.1 s, 10 s idle")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--timelines", action="store_true", help="with --json: every attempt's host, start and end")
    args = parser.parse_args(argv)
    if args.quick:
        args.agents, args.simulate, args.sim_episodes = "2,4", "16", 1000
        args.episodes, args.seconds, args.idle = 1000, 0.1, 10.0
    opts = Options(args.capacity, args.ttl, args.episodes, args.seconds, args.idle, args.timelines)
    codes = [("this", HERE)] + ([("baseline", args.baseline_src)] if args.baseline_src else [])
    plan: list[tuple[str, str, int, int, Options]] = []  # label, src, N, hosts per process, options
    for index, n in enumerate(int(n) for n in args.agents.split(",") if n):
        plan += [(code, src, n, 1, opts) for code, src in codes[:: 1 if index % 2 else -1]]  # alternating order
    for n in (int(n) for n in args.simulate.split(",") if n):
        sim = replace(opts, episodes=args.sim_episodes, ttl=args.sim_ttl or opts.ttl)
        # at least 4 processes by default: the kill takes a quarter of them, not the fleet
        per_process = -(-n // args.sim_processes) if args.sim_processes else min(SIM_PER_PROCESS, -(-n // 4))
        plan += [(f"{c} sim", s, n, per_process, sim) for c, s in codes if _simulates(s)]
    results: dict[str, list[dict[str, Any]]] = {}
    failures: list[str] = []  # a broken invariant or a run that did not finish: the others go on
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        server = start_etcd(work / "etcd")
        try:
            for label, src, n, per_process, options in plan:
                print(f"{label}: {n} hosts ...", flush=True)
                try:
                    results.setdefault(label, []).append(measure(src, n, options, server, work, per_process))
                except (AssertionError, RuntimeError, OSError, RegistryError) as exc:  # OSError: a host's /metrics
                    failures.append(f"{label}, {n} hosts: {type(exc).__name__}: {exc}")
                    print(failures[-1], flush=True)
        finally:
            server.stop()
    extrapolated = {label: extrapolate(runs, opts) for label, runs in results.items()}
    report(results, extrapolated, opts)
    for failure in failures:
        print(f"FAILED {failure}")
    if args.json:
        figures = {"options": vars(args), "results": results, "extrapolated": extrapolated, "failures": failures}
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    return 1 if failures else 0


def _simulates(src: str) -> bool:
    """Whether that tree's Agent takes a pool (``make_pool``), as scripts/scalesim.py needs."""
    if "make_pool" in (Path(src) / "openrange_mesh" / "agent" / "agent.py").read_text():
        return True
    print(f"{src}: its Agent takes no make_pool, no simulated run of it", flush=True)
    return False


if __name__ == "__main__":
    sys.exit(main())
