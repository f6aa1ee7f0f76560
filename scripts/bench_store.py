#!/usr/bin/env python3
"""Shared storage (issue 14): snapshots through the per-host cache, and artifacts, each measured
against what a user writes without us, in the same run.

1. Cold fetch: ``SnapshotCache.open`` of a snapshot into an empty cache directory (streamed,
   hashed beside the copy, sealed read-only, renamed into place) against a plain ``fs.get_file``
   of the same blob to a local file (the local filesystem for the directory store, s3fs for S3: a
   moto server), for each backend. The bar: >= 0.9x. A second baseline shows what the gap is
   made of: a plain loop that also hashes every byte, as ours must (A B C C B A). On the
   directory store this runs twice: with the blob evicted from the page cache before every
   timed run (``posix_fadvise(DONTNEED)``: "source not cached", the bar's figure, as a host of a
   fleet reads a blob from NFS), and with it left in the page cache ("source cached", where the
   plain ``get_file`` is an in-kernel memory copy). Each run's destination is deleted before the
   next, so its pages go too. moto keeps S3 blobs in its own memory: S3 has one figure.
2. Warm hits: p50/p99 of ``cache.open()`` on a cached digest (the bar: < 5 ms), and the GETs
   the S3 server answered during them (none, or the cache is not a cache).
3. Peak memory of a cold fetch in a fresh child process (tracemalloc's peak, and the peak RSS
   over the RSS before: VmHWM, reset first), one fetch of the big blob and four at once of four
   smaller ones, against the chunk size x concurrency.
4. Artifact upload: ``Outputs.upload`` (``store.put_stream``, hashing as it goes) of a 64 MiB
   file against a plain ``fs.put_file``, A B B A, for each backend.
5. The mesh: 4 agent processes (capacity 8, each its own ``--cache-dir``: each a host) on one S3
   store; one snapshot put through ``MeshClient.put_snapshot``; 32 episodes naming it (the
   ``command`` runtime: ``test -s "$OPENRANGE_SNAPSHOT"``). GETs of the blob counted at the S3
   server against the hosts that ran an episode (the bar: equal), and seconds from submit to
   the first episode started and the first finished (the latter includes the cold fetch).
6. The cost of artifacts on the no-op mesh (2 agents x 4 workers, directory store): episodes
   writing one small artifact against the same episodes writing none, A B B A.

Parts 5 and 6 need an agent with ``--cache-dir`` that passes its claims' fencing tokens to its
workers; with an older agent they are left out (and say so).

    python scripts/bench_store.py --quick --json out.json
    python scripts/bench_store.py --quick --cold-only     # part 1 alone
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from tests.etcdkit import start_etcd  # noqa: E402
from tests.s3kit import AWS_TEST_ENV, S3Server, start_s3  # noqa: E402
from tests.storekit import requests, s3_key  # noqa: E402

from bench_mesh import Agents  # noqa: E402
from openrange_mesh.cli.agent import main as agent_cli  # noqa: E402
from openrange_mesh.client.client import MeshClient  # noqa: E402
from openrange_mesh.model import State  # noqa: E402
from openrange_mesh.store import Store, cas, layout, open_store  # noqa: E402
from openrange_mesh.store.cache import SnapshotCache  # noqa: E402
from openrange_mesh.store.digest import CHUNK_SIZE  # noqa: E402
from openrange_mesh.store.streams import S3_PART_SIZE  # noqa: E402
from openrange_mesh.worker.files import Outputs  # noqa: E402

MiB = 1 << 20
READS = ["sh", "-c", 'test -s "$OPENRANGE_SNAPSHOT"']
WRITES = {"artifact": ["sh", "-c", 'echo x > "$OPENRANGE_ARTIFACTS/out.txt"'], "none": ["sh", "-c", "true"]}


@dataclass
class Backend:
    """A store and the plain fsspec filesystem a user would reach the same objects with."""

    name: str
    url: str
    store: Store
    fs: Any
    root: str  # the store's root in ``fs`` terms

    def remote(self, path: str) -> str:
        return f"{self.root}/{path}"


def backends(work: Path, s3: S3Server, bucket: str) -> list[Backend]:
    import s3fs

    directory = work / "store"
    s3_url = f"s3://{bucket}/bench?endpoint_url={s3.endpoint_url}"
    return [
        Backend("dir", str(directory), open_store(str(directory)), fsspec.filesystem("file"), str(directory)),
        Backend("s3", s3_url, open_store(s3_url), s3fs.S3FileSystem(endpoint_url=s3.endpoint_url), f"{bucket}/bench"),
    ]


def random_file(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        for left in range(size, 0, -8 * MiB):
            f.write(os.urandom(min(left, 8 * MiB)))
    return path


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def abba(kinds: dict[str, Callable[[int], float]], amount: float, rounds: int = 1) -> dict[str, Any]:
    """Each kind (a function of the run's number returning seconds) in the order A B .. B A,
    ``rounds`` times, which cancels a drift of the machine's speed: the mean rate (``amount`` per
    second) of each, every run's, and the last kind's (ours) over the first's (the baseline)."""
    order = [*kinds, *reversed(kinds)] * rounds
    runs: dict[str, list[float]] = {kind: [] for kind in kinds}
    for run, kind in enumerate(order):
        runs[kind].append(amount / kinds[kind](run))
    mean = {kind: statistics.mean(r) for kind, r in runs.items()}
    return {"per_s": mean, "ratio": mean[order[len(kinds) - 1]] / mean[order[0]], "runs": runs}


def fetch(cache: SnapshotCache, digest: str) -> None:
    with cache.open(digest):
        pass


def evict(path: str) -> None:
    """Drop ``path``'s pages from the page cache (clean ones: the blob was fsynced when put)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cold_fetch(backend: Backend, digest: str, size: int, work: Path, *, cached: bool) -> dict[str, Any]:
    """Ours against the plain ``get_file`` (the bar), and against a plain loop that also does
    what ours must: hash every byte (what the gap to the bar is made of). Unless ``cached``, the
    blob (a local file) is evicted from the page cache before each timed run."""
    blob = backend.remote(layout.cas_path(digest))

    def timed_cold(action: Callable[[], object]) -> float:
        if not cached:
            evict(blob)
        return timed(action)

    # One untimed plain fetch: s3fs's session and connections, and the server's first read of the
    # blob, would otherwise fall on the first timed run, the baseline's (its first run took 2x its last).
    backend.fs.get_file(blob, str(work / "warm.bin"))
    (work / "warm.bin").unlink()

    def plain(run: int) -> float:
        dest = work / f"plain-{run}.bin"
        took = timed_cold(lambda: backend.fs.get_file(blob, str(dest)))
        dest.unlink()
        return took

    def hashed(run: int) -> float:
        dest = work / f"hashed-{run}.bin"

        def copy() -> None:
            digest_now = hashlib.sha256()
            with backend.fs.open(blob, "rb") as source, dest.open("wb") as sink:
                while chunk := source.read(CHUNK_SIZE):
                    digest_now.update(chunk)
                    sink.write(chunk)
            assert f"sha256:{digest_now.hexdigest()}" == digest

        took = timed_cold(copy)
        dest.unlink()
        return took

    def ours(run: int) -> float:
        cache = SnapshotCache(backend.store, work / f"cold-{uuid.uuid4().hex}", 4 * size)
        took = timed_cold(lambda: fetch(cache, digest))
        cas.remove_tree(cache.directory)
        return took

    # three rounds: a run takes ~0.1 s and a disk read's speed varies from one to the next
    return abba({"plain": plain, "hashed": hashed, "ours": ours}, size / MiB, rounds=3)


def cold_fetches(backend: Backend, digest: str, size: int, work: Path) -> dict[str, Any]:
    """``source_not_cached`` (the bar's figure) and ``source_cached`` on a directory store;
    ``source_in_server`` on S3 (moto holds its blobs in its own memory)."""
    if backend.name != "dir":
        return {"source_in_server": cold_fetch(backend, digest, size, work, cached=True)}
    return {
        "source_not_cached": cold_fetch(backend, digest, size, work, cached=False),
        "source_cached": cold_fetch(backend, digest, size, work, cached=True),
    }


def warm_hits(backend: Backend, digest: str, size: int, work: Path, count: int, s3: S3Server) -> dict[str, float]:
    cache = SnapshotCache(backend.store, work / f"warm-{backend.name}", 4 * size)
    fetch(cache, digest)

    def gets() -> int:  # answered by the S3 server so far; a directory store counts none
        return requests(s3, "GET", s3_key(backend.url, layout.cas_path(digest))) if backend.name == "s3" else 0

    before = gets()
    took = sorted(timed(lambda: fetch(cache, digest)) for _ in range(count))
    cas.remove_tree(cache.directory)
    return {
        "p50_ms": 1000 * statistics.median(took),
        "p99_ms": 1000 * took[int(0.99 * (len(took) - 1))],
        "gets": gets() - before,
    }


def _status_mib(field: str) -> float:
    """A field of /proc/self/status (VmRSS, VmHWM: kB) in MiB."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(f"{field}:"))
    return int(line.split()[1]) / 1024


def _memory_child(url: str, digests: list[str], directory: str, out: Any) -> None:
    """In a fresh process: fetch ``digests`` at once (a thread each) into an empty cache."""
    store = open_store(url)
    cache = SnapshotCache(store, directory, 1 << 40)
    store.exists(layout.cas_path(digests[0]))  # the client's connection pool, outside the figure
    Path("/proc/self/clear_refs").write_text("5")  # the peak RSS (VmHWM) starts again from now
    before = _status_mib("VmRSS")
    tracemalloc.start()
    threads = [threading.Thread(target=fetch, args=(cache, d)) for d in digests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    peak = tracemalloc.get_traced_memory()[1]
    out.put({"tracemalloc_peak_mib": peak / MiB, "rss_peak_growth_mib": _status_mib("VmHWM") - before})


def peak_memory(backend: Backend, digests: list[str], work: Path) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    directory = work / f"mem-{uuid.uuid4().hex}"
    child = context.Process(target=_memory_child, args=(backend.url, digests, str(directory), queue))
    child.start()
    figure: dict[str, Any] = queue.get(timeout=600)
    child.join()
    cas.remove_tree(directory)
    bound = CHUNK_SIZE * len(digests) / MiB
    worst = max(figure["tracemalloc_peak_mib"], figure["rss_peak_growth_mib"])
    return {**figure, "concurrency": len(digests), "chunks_mib": bound, "peak_over_chunks": worst / bound}


def upload(backend: Backend, source: Path, size: int) -> dict[str, Any]:
    def plain(run: int) -> float:
        target = backend.remote(f"plain-upload/{run}.bin")
        if backend.name == "dir":
            backend.fs.makedirs(target.rpartition("/")[0], exist_ok=True)  # put_file makes no folders
        took = timed(lambda: backend.fs.put_file(str(source), target))
        backend.store.delete(f"plain-upload/{run}.bin")
        return took

    outputs = Outputs()  # a worker's: made once, emptied by each upload

    def ours(run: int) -> float:
        try:
            os.link(source, outputs.directory / "out.bin")  # both in the system's temp folder
            return timed(lambda: outputs.upload(backend.store, f"bench-{run}", 1, run + 1))
        finally:
            backend.store.delete_prefix(layout.episode_prefix(f"bench-{run}"))

    try:
        return abba({"plain": plain, "ours": ours}, size / MiB)
    finally:
        outputs.close()


def agent_has_cache_flags() -> bool:
    return any("--cache-dir" in getattr(p, "opts", ()) for p in agent_cli.params)


def command(argv: list[str], **more: Any) -> dict[str, Any]:
    return {"runtime": "command", "params": {"argv": argv}, **more}


def mesh_snapshot(etcd: str, s3: S3Server, bucket: str, work: Path, size: int) -> dict[str, Any]:
    """4 agents x 8, each its own cache; 32 episodes on one snapshot put through the client."""
    hosts, capacity, episodes = 4, 8, 32
    url = f"s3://{bucket}/mesh?endpoint_url={s3.endpoint_url}"

    def own_cache(host: str) -> list[str]:
        return ["--cache-dir", str(work / f"cache-{host}"), "--cache-size", str(4 * size)]

    group = Agents(etcd, "snapshot", hosts, capacity, url, work, extra=own_cache)
    try:
        with MeshClient(etcd, namespace="snapshot", consumer="bench", store=url) as client:
            group.wait_joined(client)
            # every worker started (32 on 2 cores take ~15 s), as on a mesh that has been up a while
            client.wait(client.submit([command(WRITES["none"]) for _ in range(hosts * capacity)]), timeout=300)
            source = random_file(work / "world.bin", size)
            started = time.perf_counter()
            digest = client.put_snapshot(source, name="world").digest
            put_s = time.perf_counter() - started
            key = s3_key(url, layout.cas_path(digest))
            gets_before = requests(s3, "GET", key)
            submitted = time.time()
            ids = client.submit([command(READS, snapshot="world") for _ in range(episodes)])
            records = client.wait(ids, timeout=600)
    finally:
        group.stop()
    attempts = [a for r in records for a in r.history]
    ran = sorted({a.host for a in attempts})
    gets = requests(s3, "GET", key) - gets_before
    finished = [a.finished_at for a in attempts if a.finished_at is not None]
    states = {s.value: sum(r.state is s for r in records) for s in State if any(r.state is s for r in records)}
    return {
        "episodes": episodes,
        "hosts": hosts,
        "capacity": capacity,
        "put_snapshot_s": put_s,
        "states": states,
        "errors": sorted({a.error for a in attempts if a.error})[:3],
        "episodes_per_host": {h: sum(a.host == h for a in attempts) for h in ran},
        "blob_gets": gets,
        "hosts_that_ran": len(ran),
        "gets_per_host": gets / max(1, len(ran)),
        "first_started_s": min(a.started_at for a in attempts) - submitted,
        "first_finished_s": min(finished) - submitted if finished else None,
        "all_finished_s": max(finished) - submitted if finished else None,
    }


def mesh_episodes(etcd: str, work: Path, argv: list[str], episodes: int, run: int) -> float:
    """Seconds for ``episodes`` of ``argv`` through 2 agents x 4 workers (warmed) on a directory store."""
    namespace = f"artifacts-{run}"
    group = Agents(etcd, namespace, 2, 4, work / "store", work)
    try:
        with MeshClient(etcd, namespace=namespace, consumer="bench") as client:
            group.wait_joined(client)
            client.wait(client.submit([command(argv) for _ in range(16)]), timeout=120)
            start = time.perf_counter()
            records = client.wait(client.submit([command(argv) for _ in range(episodes)]), timeout=600)
            elapsed = time.perf_counter() - start
    finally:
        group.stop()
    failed = [r for r in records if r.state is not State.SUCCEEDED]
    if failed:
        raise SystemExit(f"{len(failed)} episodes of {argv} did not succeed: {failed[0].error}")
    return elapsed


def artifact_cost(etcd: str, work: Path, episodes: int) -> dict[str, Any]:
    def kind(argv: list[str]) -> Callable[[int], float]:
        return lambda run: mesh_episodes(etcd, work, argv, episodes, run)

    return {
        "episodes": episodes,
        **abba({"none": kind(WRITES["none"]), "artifact": kind(WRITES["artifact"])}, episodes),
    }


def use_aws_test_env() -> None:
    """Dummy credentials for this process and the agents it starts (moto takes any)."""
    for name, value in AWS_TEST_ENV.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    quick = args.quick
    size, mesh_size, upload_size = (n * MiB for n in ((64, 32, 64) if quick else (200, 200, 64)))
    use_aws_test_env()
    s3 = start_s3()
    figures: dict[str, Any] = {"chunk_mib": CHUNK_SIZE / MiB, "s3_part_mib": S3_PART_SIZE / MiB}
    try:
        bucket = s3.make_bucket(f"bench-{uuid.uuid4().hex[:8]}")
        blob = random_file(work / "blob.bin", size)
        small = [random_file(work / f"small-{i}.bin", size // 4) for i in range(4)]
        for backend in backends(work, s3, bucket):
            digest = cas.put_snapshot(backend.store, blob).digest
            smalls = [cas.put_snapshot(backend.store, path).digest for path in small]
            part: dict[str, Any] = {"cold_fetch": cold_fetches(backend, digest, size, work)}
            if args.cold_only:
                figures[backend.name] = part
                continue
            part["warm_hit"] = warm_hits(backend, digest, size, work, 300 if quick else 2000, s3)
            part["memory"] = [peak_memory(backend, [digest], work), peak_memory(backend, smalls, work)]
            part["upload"] = upload(backend, random_file(work / "artifact.bin", upload_size), upload_size)
            figures[backend.name] = part
            print(f"# {backend.name}: {json.dumps(part)}", file=sys.stderr)
        figures.update(snapshot_mib=size / MiB, upload_mib=upload_size / MiB)
        if args.cold_only:
            return figures
        if not agent_has_cache_flags():
            figures["mesh"] = figures["artifact_cost"] = "not run: this agent has no --cache-dir"
            return figures
        etcd = start_etcd(work / "etcd")
        try:
            figures["mesh"] = mesh_snapshot(etcd.url, s3, bucket, work, mesh_size)
            figures["mesh"]["snapshot_mib"] = mesh_size / MiB
            figures["artifact_cost"] = artifact_cost(etcd.url, work, 500 if quick else 2000)
        finally:
            etcd.stop()
    finally:
        s3.stop()
    return figures


def report(figures: dict[str, Any]) -> None:
    rows: list[tuple[str, str, str, str]] = []
    for name in ("dir", "s3"):
        part = figures[name]
        for source, cold in part["cold_fetch"].items():
            rate = cold["per_s"]
            bar = " (bar >= 0.9x)" if source != "source_cached" else ""
            ratio = f"{cold['ratio']:.2f}x{bar}"
            what = f"{name} cold fetch MiB/s vs get_file, {source.replace('_', ' ').removeprefix('source ')}"
            rows.append((what, f"{rate['ours']:.0f}", f"{rate['plain']:.0f}", ratio))
            verified = f"{rate['ours'] / rate['hashed']:.2f}x"
            rows.append((f"{name}   vs a loop that hashes as it copies", "", f"{rate['hashed']:.0f}", verified))
        if "warm_hit" not in part:
            continue  # --cold-only
        up, warm = part["upload"], part["warm_hit"]
        hit = f"{warm['p50_ms']:.2f} / {warm['p99_ms']:.2f}"
        rows.append((f"{name} warm hit p50 / p99 ms", hit, "", f"bar < 5 ms; {warm['gets']} GETs"))
        for memory in part["memory"]:
            peak = f"{memory['tracemalloc_peak_mib']:.1f} / {memory['rss_peak_growth_mib']:.1f}"
            what = f"{name} fetch x{memory['concurrency']} peak MiB (py / rss)"
            rows.append((what, peak, f"{memory['chunks_mib']:.0f}", "baseline: chunk x concurrency"))
        rates = f"{up['per_s']['ours']:.0f}", f"{up['per_s']['plain']:.0f}"
        rows.append((f"{name} artifact upload MiB/s vs put_file", *rates, f"{up['ratio']:.2f}x"))
    mesh, cost = figures.get("mesh", "not run: --cold-only"), figures.get("artifact_cost", {})
    if isinstance(mesh, str):
        rows.append(("mesh (parts 5, 6)", "", "", mesh))
    else:
        hosts = f"{mesh['hosts_that_ran']} hosts ran"
        rows.append(("mesh GETs of the blob", str(mesh["blob_gets"]), hosts, "bar: GETs == hosts"))
        rows.append(("mesh submit -> first started s", f"{mesh['first_started_s']:.2f}", "", ""))
        first = mesh["first_finished_s"]
        rows.append(("mesh submit -> first finished s", f"{first:.2f}" if first is not None else "-", "", ""))
        rows.append(("mesh episodes", json.dumps(mesh["states"]), "", "; ".join(mesh["errors"])[:80]))
        per_s = f"{cost['per_s']['artifact']:.0f}", f"{cost['per_s']['none']:.0f}"
        rows.append(("no-op episodes/s, one artifact vs none", *per_s, f"{cost['ratio']:.2f}x"))
    print(f"{'figure':<54}{'ours':>15}{'baseline':>14}  ratio / bar")
    for name, ours, base, note in rows:
        print(f"{name:<54}{ours:>15}{base:>14}  {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 MiB snapshot, 32 MiB in the mesh, 500 episodes")
    parser.add_argument("--cold-only", action="store_true", help="part 1 alone (cold fetches), for quick iteration")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        figures = measure(args, Path(tmp))
    report(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
