#!/usr/bin/env python3
"""How close to a process pool any mesh on etcd can run short episodes on this machine.

``bench_mesh.py`` compares CartPole through the mesh with ``multiprocessing.Pool(2)``. This
script measures the floor under that comparison: the same shape of processes (a client, two
agents on etcd, a worker each) doing only what a batch must cost, in one run, A B C C B A:

* **pool**: ``multiprocessing.Pool(2)`` mapping the plain gymnasium loop (bench_mesh.py's
  baseline);
* **floor**: a client deals batches of ``--batch`` seeds to two mailboxes in etcd (64 to a
  txn) and watches for their results; two agent processes each claim the batches of their
  mailbox (a range read, then a txn that compares the queue key and puts a claim key), hand
  each to their own worker process (one more batch queued behind it, as the mesh's
  look-ahead), and commit its returns as one value (a txn that compares the claim key): no
  ids, records, attempts, events or checks per episode;
* **floor + records**: the same, but the workers run the episodes through our gymnasium
  runtime and the client builds an ``EpisodeRecord`` per episode from each batch's columns:
  the least a design that hands its caller a record per episode costs.

Prints episodes/s, each as a ratio to the Pool's mean, and CPU microseconds per episode of each
kind of process (workers, agents, client, etcd; cpukit.py). etcd is started by the script.

    python scripts/bench_cartpole_floor.py --json out.json
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import etcd3gw
import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.etcdkit import start_etcd

from bench_mesh import Timed, mean_cpu, plain_cartpole, pool_cartpole, timed, wrapped_cartpole
from openrange_mesh.model import Attempt, EpisodeRecord, EpisodeSpec, State

SUBMIT_TXN = 64  # queue entries per submission txn
PARAMS = {"env": "CartPole-v1"}
WARM = 1_000_000  # the warm-up's batch numbers, above any timed run's


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def _end(prefix: str) -> str:
    """The end of the key range of ``prefix`` (its last character's successor)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _worker(conn: Connection, records: bool) -> None:
    """Run each batch of seeds sent, send back (returns, started, finished); None stops it."""
    run = wrapped_cartpole if records else plain_cartpole
    while (seeds := conn.recv()) is not None:
        started = time.time()
        returns = [run(seed) for seed in seeds]
        conn.send((returns, started, time.time()))


class _Agent:
    """One agent of the floor: claims the batches of its mailbox (the client deals batch ``i``
    to agent ``i`` mod 2, as the mesh's mailboxes deal each host its share), one running and
    one queued on its worker, and commits each batch's returns as one value while its claim
    key stands."""

    def __init__(self, client: Any, prefix: str, index: int, worker: Connection) -> None:
        self.client, self.prefix, self.index, self.worker = client, prefix, index, worker
        self.name = f"a{index}"
        self.held: list[str] = []  # batches handed to the worker, in order

    def run(self) -> None:
        while True:
            for batch, seeds in self._claim(2 - len(self.held)):
                self.worker.send(seeds)
                self.held.append(batch)
            if self.held:
                self._commit(self.held.pop(0), *self.worker.recv())
            elif self.client.get(f"{self.prefix}/done"):
                return
            else:
                time.sleep(0.005)

    def _claim(self, wanted: int) -> list[tuple[str, list[int]]]:
        """Up to ``wanted`` batches of our mailbox, the oldest first: one range read, one txn each."""
        if wanted <= 0:
            return []
        mailbox = f"{self.prefix}/q/{self.name}/"
        won: list[tuple[str, list[int]]] = []
        for value, meta in self.client.get(mailbox, metadata=True, range_end=_end(mailbox), limit=wanted):
            key = meta["key"].decode()
            batch = key.rsplit("/", 1)[1]
            answer = self.client.transaction(
                {
                    "compare": [
                        {"key": _b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": meta["mod_revision"]}
                    ],
                    "success": [
                        {"request_delete_range": {"key": _b64(key)}},
                        {"request_put": {"key": _b64(f"{self.prefix}/c/{batch}"), "value": _b64(self.name)}},
                    ],
                }
            )
            if answer.get("succeeded"):
                won.append((batch, msgpack.unpackb(value)))
        return won

    def _commit(self, batch: str, returns: list[float], started: float, finished: float) -> None:
        value = msgpack.packb({"host": self.name, "started": started, "finished": finished, "returns": returns})
        claim = _b64(f"{self.prefix}/c/{batch}")
        self.client.transaction(
            {
                "compare": [{"key": claim, "result": "GREATER", "target": "CREATE", "create_revision": 0}],
                "success": [
                    {"request_put": {"key": _b64(f"{self.prefix}/r/{batch}"), "value": _b64(value)}},
                    {"request_delete_range": {"key": claim}},
                ],
            }
        )


def _agent(host: str, port: int, prefix: str, index: int, worker: Connection) -> None:
    _Agent(etcd3gw.client(host=host, port=port), prefix, index, worker).run()


def floor(host: str, port: int, etcd_pid: int, episodes: int, batch: int, run: int, records: bool) -> Timed:
    """``episodes`` CartPole episodes through the floor (the module docstring)."""
    prefix = f"/floor-{run}"
    pipes = [multiprocessing.Pipe() for _ in range(2)]
    workers = [multiprocessing.Process(target=_worker, args=(theirs, records)) for _, theirs in pipes]
    agents = [
        multiprocessing.Process(target=_agent, args=(host, port, prefix, k, ours)) for k, (ours, _) in enumerate(pipes)
    ]
    for process in workers + agents:
        process.start()
    client = etcd3gw.client(host=host, port=port)
    roots = {"workers": [w.pid or 0 for w in workers], "agents": [a.pid or 0 for a in agents], "etcd": [etcd_pid]}
    try:
        # warm the workers' imports and the agents' connections, as the Pool's are before it is timed
        _submit_and_collect(client, prefix, list(range(20)), 10, records, first=WARM)
        got: list[Any] = []
        result = timed(
            roots,
            episodes,
            lambda: got.extend(_submit_and_collect(client, prefix, list(range(episodes)), batch, records)),
        )
        assert len(got) == episodes
        return result
    finally:
        client.put(f"{prefix}/done", "1")
        for process in agents:
            process.join(30)
        for ours, _ in pipes:
            ours.send(None)
        for process in workers:
            process.join(30)


def _submit_and_collect(
    client: Any, prefix: str, seeds: list[int], batch: int, records: bool, first: int = 0
) -> list[Any]:
    """Queue ``seeds`` in batches (numbered from ``first``) and watch until every batch's
    results are in: returns, or the records built from them."""
    start = int(client.status()["header"]["revision"]) + 1
    events, cancel = client.watch_prefix(f"{prefix}/r/", start_revision=start)
    batches = [seeds[i : i + batch] for i in range(0, len(seeds), batch)]
    for low in range(0, len(batches), SUBMIT_TXN):
        ops = [
            {
                "request_put": {
                    "key": _b64(f"{prefix}/q/a{i % 2}/{first + i:07d}"),
                    "value": _b64(msgpack.packb(batches[i])),
                }
            }
            for i in range(low, min(low + SUBMIT_TXN, len(batches)))
        ]
        client.transaction({"compare": [], "success": ops})
    out: list[Any] = []
    done = 0
    try:
        for event in events:
            kv = event["kv"]
            number = int(kv["key"].decode().rsplit("/", 1)[1]) - first
            value = msgpack.unpackb(kv["value"])
            out += _records(batches[number], value) if records else value["returns"]
            done += 1
            if done == len(batches):
                return out
    finally:
        cancel()
    raise RuntimeError("the watch ended before every batch's results came")


def _records(seeds: list[int], value: dict[str, Any]) -> list[EpisodeRecord]:
    host, started, finished = value["host"], value["started"], value["finished"]
    return [
        EpisodeRecord(
            f"e{seed}",
            EpisodeSpec(runtime="gymnasium", params=PARAMS, seed=seed),
            State.SUCCEEDED,
            1,
            host,
            None,
            started,
            started,
            finished,
            None,
            {"return": ret},
            (Attempt(1, host, started, finished, State.SUCCEEDED.value),),
        )
        for seed, ret in zip(seeds, value["returns"], strict=True)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=250, help="episodes per claim")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    runs: dict[str, list[Timed]] = {"pool": [], "floor": [], "floor_records": []}
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        server = start_etcd(Path(tmp) / "etcd")
        host, _, port = server.endpoint.rpartition(":")
        try:
            # A B C C B A: cancels a drift of the machine's speed during the run
            for n, kind in enumerate(("pool", "floor", "floor_records", "floor_records", "floor", "pool")):
                if kind == "pool":
                    runs[kind].append(pool_cartpole(args.episodes))
                else:
                    runs[kind].append(
                        floor(host, int(port), server.pid, args.episodes, args.batch, n, kind == "floor_records")
                    )
        finally:
            server.stop()
    pool = statistics.mean(r.per_s for r in runs["pool"])
    figures: dict[str, Any] = {
        kind: {
            "episodes_per_s": statistics.mean(r.per_s for r in done),
            "vs_pool": statistics.mean(r.per_s for r in done) / pool,
            "cpu_us_per_episode": mean_cpu(done),
            "runs": [r.per_s for r in done],
        }
        for kind, done in runs.items()
    }
    figures["episodes"], figures["batch"] = args.episodes, args.batch
    print(f"{'kind':<15}{'episodes/s':>12}{'vs pool':>9}  CPU us per episode")
    for kind in runs:
        f = figures[kind]
        cpu = " ".join(f"{k} {v:.0f}" for k, v in f["cpu_us_per_episode"].items())
        print(f"{kind:<15}{f['episodes_per_s']:>12.0f}{f['vs_pool']:>9.3f}  {cpu}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
