#!/usr/bin/env python3
"""What idle agents cost etcd (issue 15: "an idle agent sends etcd nothing but its lease
refresh"), the code of this tree against another tree's, in one run: A B B A.

N agents (no dashboard, or with ``--dashboard``) join a fresh etcd and sit idle; after a settling
period the requests etcd served are counted from its own ``/metrics`` (``grpc_server_started_total``
by method: every JSON gateway request is one gRPC call) over ``--seconds``, per agent per second.

    python scripts/bench_idle.py --baseline-src /path/to/other/tree/src --json out.json
    python scripts/bench_idle.py --quick            # this tree only, 4 agents, 10 s
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.etcdkit import start_etcd

HERE = str(Path(__file__).resolve().parent.parent / "src")
_STARTED = re.compile(r'^grpc_server_started_total\{grpc_method="(?P<method>\w+)",[^}]*\} (?P<n>[0-9.e+]+)$', re.M)


def requests_by_method(endpoint: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for m in _STARTED.finditer(text):
        counts[m["method"]] = counts.get(m["method"], 0.0) + float(m["n"])
    return counts


def idle_rate(
    src: str, endpoint: str, agents: int, ttl: int, settle: float, seconds: float, dashboard: bool, work: Path
) -> dict[str, float]:
    """Requests per agent per second, by method, of ``agents`` idle agents running ``src``."""
    namespace = f"idle-{int(time.time() * 1000)}"
    env = {**os.environ, "PYTHONPATH": src}
    procs = []
    granted = requests_by_method(endpoint).get("LeaseGrant", 0.0)
    for i in range(agents):
        argv = [sys.executable, "-c", "from openrange_mesh.cli.agent import main; main()", "--etcd", endpoint]
        argv += ["--namespace", namespace, "--host-id", f"idle-{i}", "--capacity", "1", "--ttl", str(ttl)]
        argv += ["--store", str(work / "store"), "--log-level", "WARNING"]
        argv += ["--dashboard-host", "127.0.0.1", "--dashboard-port", "0"] if dashboard else ["--no-dashboard"]
        log = (work / f"{namespace}-{i}.log").open("wb")
        procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        # Every agent joined (its lease granted: with dashboards, 2N processes start on the
        # machine's cores and the last join can come seconds late), then elected, the first
        # sweep done.
        deadline = time.monotonic() + 120
        while requests_by_method(endpoint).get("LeaseGrant", 0.0) - granted < agents and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(settle)
        before = requests_by_method(endpoint)
        time.sleep(seconds)
        after = requests_by_method(endpoint)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
    rates = {m: (after.get(m, 0.0) - before.get(m, 0.0)) / seconds / agents for m in after}
    rates = {m: r for m, r in rates.items() if r > 0}
    rates["all"] = sum(rates.values())
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-src", help="another tree's src/ to compare with (A B B A)")
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--ttl", type=int, default=10, help="the agents' ttl (loop_wait = ttl / 8)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--dashboard", action="store_true", help="agents serve the dashboard too")
    parser.add_argument("--quick", action="store_true", help="4 agents, 10 s")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    agents, seconds = (4, 10.0) if args.quick else (args.agents, args.seconds)
    order = [("this", HERE)]
    if args.baseline_src:
        order = [("baseline", args.baseline_src), ("this", HERE), ("this", HERE), ("baseline", args.baseline_src)]
    runs: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        work = Path(tmp)
        server = start_etcd(work / "etcd")
        try:
            for name, src in order:
                runs.setdefault(name, []).append(
                    idle_rate(src, server.endpoint, agents, args.ttl, 3.0 + args.ttl / 4, seconds, args.dashboard, work)
                )
        finally:
            server.stop()
    loop_wait = args.ttl / 8
    figures: dict[str, object] = {"agents": agents, "ttl": args.ttl, "loop_wait": loop_wait, "runs": runs}
    print(f"{'code':<10}{'requests/s per idle agent':>28}  by method (mean of runs)")
    for name, got in runs.items():
        mean = {m: statistics.mean(r.get(m, 0.0) for r in got) for m in {k for r in got for k in r}}
        figures[f"{name}_per_agent_per_s"] = mean["all"]
        methods = ", ".join(f"{m} {v:.2f}" for m, v in sorted(mean.items()) if m != "all")
        print(f"{name:<10}{mean['all']:>28.2f}  {methods}")
    print(f"bar: <= 1 / loop_wait = {1 / loop_wait:.2f} requests/s per idle agent")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
