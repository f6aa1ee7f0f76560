#!/usr/bin/env python3
"""What the agent's metrics cost on its hot path (design/dashboard.md, "Metrics"), one run.

* per episode: the metric updates an agent makes for one single episode (its claim, its start,
  the worker's report, its commit), timed with ``timeit`` on real records; and per etcd request,
  the observer's (an episode costs at most two requests, a claim and a commit, and fewer when a
  pass settles several claims in one);
* the registry's observer: a memory:// ``get`` with no observer and with the agent's, and, with
  an etcd binary at hand (``--etcd``), a txn's client CPU on a real etcd without and with it
  (rounds alternate so drift hits both sides alike).

    python scripts/bench_metrics.py            # the metrics and the memory backend
    python scripts/bench_metrics.py --etcd     # and a real etcd (tests/etcdkit.py finds one)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

from openrange_mesh.agent.metrics import Metrics
from openrange_mesh.model import Attempt, EpisodeRecord, EpisodeSpec, State
from openrange_mesh.registry import Put, Registry, open_registry

ROUNDS = 5


def per_call(stmt: object, number: int) -> float:
    """Microseconds per call of ``stmt``, the best of ``ROUNDS`` runs of ``number`` calls."""
    return min(timeit.repeat(stmt, number=number, repeat=ROUNDS)) / number * 1e6  # type: ignore[arg-type]


def episode_cost(metrics: Metrics) -> float:
    spec = EpisodeSpec(runtime="sleep")
    running = EpisodeRecord(
        "e1", spec, State.RUNNING, 1, "h1", "e1.1", 100.0, 100.002, history=(Attempt(1, "h1", 100.002),)
    )
    final = running.replace(state=State.SUCCEEDED, history=(Attempt(1, "h1", 100.002, 100.004, "succeeded"),))
    claims, commits = metrics.claims["won"], metrics.commits

    def one_episode() -> None:
        claims.inc()
        metrics.attempt_started(running)
        metrics.attempt_reported("succeeded")
        commits.inc()
        metrics.attempt_committed(final)

    return per_call(one_episode, 20_000)


def get_cost(registry: Registry, *, bare: bool = False) -> float:
    """A memory:// get: through the observing wrapper, or (``bare``) the method it wraps."""
    get = type(registry).get.__wrapped__ if bare else type(registry).get  # type: ignore[attr-defined]
    return per_call(lambda: get(registry, b"/bench/k"), 20_000)


def etcd_txn_cpu(registry: Registry, observer: object, count: int = 2000) -> tuple[float, float]:
    """Client CPU per txn (us), without and with ``observer``: the median over alternating rounds."""
    without: list[float] = []
    with_it: list[float] = []
    for _ in range(ROUNDS):
        for side, into in ((None, without), (observer, with_it)):
            registry.observer = side  # type: ignore[assignment]
            began = time.process_time()
            for i in range(count):
                registry.txn([], [Put(b"/bench/k", str(i).encode())])
            into.append((time.process_time() - began) / count * 1e6)
    return statistics.median(without), statistics.median(with_it)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--etcd", action="store_true", help="also measure txns on a real etcd")
    args = parser.parse_args()
    metrics = Metrics("h1")
    print(f"metric updates per single episode: {episode_cost(metrics):.2f} us")
    request = per_call(lambda: metrics.observe_request("txn", 0.0004, None), 50_000)
    print(f"the observer, per etcd request: {request:.2f} us")
    plain = open_registry("memory://")
    observed = open_registry("memory://", observer=metrics.observe_request)
    print(
        f"memory:// get: {get_cost(plain, bare=True):.2f} us unwrapped, {get_cost(plain):.2f} us with no observer, "
        f"{get_cost(observed):.2f} us with the agent's"
    )
    if args.etcd:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.etcdkit import start_etcd

        with tempfile.TemporaryDirectory() as tmp:
            server = start_etcd(Path(tmp))
            try:
                registry = open_registry(server.url)
                without, with_it = etcd_txn_cpu(registry, metrics.observe_request)
                print(f"etcd txn client CPU: {without:.1f} us without an observer, {with_it:.1f} us with the agent's")
                registry.close()
            finally:
                server.stop()


if __name__ == "__main__":
    main()
