#!/usr/bin/env python3
"""One process of simulated hosts, for bench_scale.py --simulate: real ``Agent`` objects (their
loops, watches, lease keepers, claims and commits: a real agent's registry traffic), each with a
``SimulatedPool`` (tests/simpool.py) in place of worker processes, so a few processes hold
hundreds of hosts. What the agents' own CPU and lease timing say is not a real host's: they
share one interpreter, and its GIL, with the others of the process.

    python scripts/scalesim.py --etcd 127.0.0.1:2379 --namespace ns --hosts h0,h1,h2 \\
        --capacity 4 --ttl 5 --store /tmp/store --ports ports.json

Writes ``{host: its /metrics port on 127.0.0.1}`` to ``--ports`` once every agent serves, runs
until SIGTERM, then stops its agents (their leases revoked) and exits. Needs a tree whose
``Agent`` takes ``make_pool``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import resource
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.simpool import SimulatedPool

from openrange_mesh.agent.agent import Agent
from openrange_mesh.config import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--etcd", required=True, help="host:port")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--hosts", required=True, help="host ids, comma-separated")
    parser.add_argument("--capacity", type=int, default=4)
    parser.add_argument("--ttl", type=int, default=5)
    parser.add_argument("--store", required=True)
    parser.add_argument("--ports", required=True, metavar="PATH")
    parser.add_argument("--start-every", type=float, default=0.25, help="seconds between two agents' starts")
    args = parser.parse_args(argv)
    if "make_pool" not in inspect.signature(Agent).parameters:
        print("this tree's Agent takes no make_pool: it cannot be simulated", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # three connections and a few pipes per agent
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    agents = [Agent(_settings(args, host), make_pool=SimulatedPool.make) for host in args.hosts.split(",")]
    threads = [threading.Thread(target=a.run, name=f"agent-{a.host}", daemon=True) for a in agents]
    # One at a time: each join is an event for every agent already there (N^2 / 2 in all), which
    # a fleet's etcd sends in seconds and its hosts each decode on a core of their own; hundreds
    # joining in one instant on 2 shared cores starve etcd and their own lease refreshes instead.
    for thread in threads:
        thread.start()
        stopping.wait(args.start_every)
    deadline = time.monotonic() + 600
    while not stopping.is_set() and any(a.metrics_port is None for a in agents):
        if time.monotonic() > deadline or not all(t.is_alive() for t in threads):
            print("agents did not start", file=sys.stderr)
            return 1
        time.sleep(0.1)
    ports = Path(args.ports)
    ports.with_suffix(".tmp").write_text(json.dumps({a.host: a.metrics_port for a in agents}))
    ports.with_suffix(".tmp").rename(ports)
    stopping.wait()
    for agent in agents:
        agent.stop()
    for thread in threads:
        thread.join(30)
    return 0


def _settings(args: argparse.Namespace, host: str) -> Settings:
    return Settings(
        registry=f"etcd://{args.etcd}",
        namespace=args.namespace,
        host_id=host,
        capacity=args.capacity,
        store=args.store,
        dashboard=False,
        report_interval=0,  # as bench_scale.py's real agents
        store_gc_interval=0,
        log_level="WARNING",
    ).with_timing(args.ttl)


if __name__ == "__main__":
    sys.exit(main())
