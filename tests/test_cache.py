"""The per-host snapshot cache (store/cache.py) with real processes, a real S3 server (moto),
real flocks and a real full disk (a small tmpfs in a private mount namespace)."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from openrange_mesh.errors import HashMismatch, SnapshotNotFound, StoreError
from openrange_mesh.store import Store, open_store
from openrange_mesh.store.cache import SnapshotCache
from openrange_mesh.store.cas import Snapshot, put_snapshot
from openrange_mesh.store.layout import cas_path

from .helpers import wait_until
from .s3kit import S3Server
from .storekit import requests, s3_key

KIB = 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob(size: int, seed: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return open_store(str(tmp_path / "store"))


def cached(cache_dir: Path) -> list[str]:
    """Digests in the cache, sorted."""
    return sorted(f"sha256:{name}" for name in os.listdir(cache_dir / "data"))


def leftovers(cache_dir: Path) -> list[str]:
    return sorted(os.listdir(cache_dir / "tmp")) + sorted(os.listdir(cache_dir / "trash"))


# -- filling --------------------------------------------------------------------------------


def test_a_file_is_fetched_once_verified_and_read_only(store: Store, tmp_path: Path) -> None:
    data = os.urandom(300 * KIB)
    snapshot = put_snapshot(store, io.BytesIO(data))
    cache = SnapshotCache(store, tmp_path / "cache", max_bytes=10 * 2**20)
    with cache.open(snapshot.digest) as path:
        assert path.read_bytes() == data
        assert stat.S_IMODE(path.stat().st_mode) == 0o444
    store.delete(cas_path(snapshot.digest))  # served from the cache from now on
    assert cache.get_bytes(snapshot.digest) == data
    assert SnapshotCache(store, tmp_path / "cache", max_bytes=10 * 2**20).get_bytes(snapshot.digest) == data
    assert leftovers(tmp_path / "cache") == []


def test_a_directory_is_extracted_read_only(store: Store, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "levels").mkdir(parents=True)
    (tree / "levels" / "1.json").write_bytes(b"{}")
    (tree / "run.sh").write_bytes(b"#!/bin/sh\n")
    (tree / "run.sh").chmod(0o755)
    os.symlink("levels/1.json", tree / "first")
    snapshot = put_snapshot(store, tree)
    cache = SnapshotCache(store, tmp_path / "cache", max_bytes=2**20)
    with cache.open(snapshot.digest) as path:
        assert (path / "levels" / "1.json").read_bytes() == b"{}"
        assert (path / "first").read_bytes() == b"{}"
        modes = {
            p.name: stat.S_IMODE(p.lstat().st_mode)
            for p in [path, path / "levels", path / "run.sh", path / "levels" / "1.json"]
        }
    assert modes == {path.name: 0o555, "levels": 0o555, "run.sh": 0o555, "1.json": 0o444}
    with pytest.raises(StoreError, match="is a directory, not a file"):
        cache.get_bytes(snapshot.digest)


def test_a_corrupt_blob_caches_nothing(store: Store, tmp_path: Path) -> None:
    snapshot = put_snapshot(store, io.BytesIO(os.urandom(200 * KIB)))
    corrupt = bytearray(store.get_bytes(cas_path(snapshot.digest)))
    corrupt[-1] ^= 1
    store.put_bytes(cas_path(snapshot.digest), bytes(corrupt))
    cache = SnapshotCache(store, tmp_path / "cache", max_bytes=2**20)
    with pytest.raises(
        HashMismatch,
        match=rf"hash mismatch: expected {snapshot.digest}, got sha256:[0-9a-f]{{64}} after {len(corrupt)} bytes",
    ):
        cache.get_bytes(snapshot.digest)
    assert cached(tmp_path / "cache") == [] and leftovers(tmp_path / "cache") == []
    assert os.listdir(tmp_path / "cache" / "pins") == [] and os.listdir(tmp_path / "cache" / "locks") == []


def test_a_missing_snapshot_is_not_found(store: Store, tmp_path: Path) -> None:
    cache = SnapshotCache(store, tmp_path / "cache", max_bytes=2**20)
    with pytest.raises(SnapshotNotFound, match=r"snapshot sha256:0{64} not found"):
        cache.get_bytes("sha256:" + "0" * 64)
    assert cached(tmp_path / "cache") == []


def test_threads_asking_at_once_share_one_get(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    url = f"s3://{s3_bucket}/threads?endpoint_url={s3_server.endpoint_url}"
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(20):
        (tree / f"part-{i}").write_bytes(blob(64 * KIB, i))
    snapshot = put_snapshot(open_store(url), tree)
    cache = SnapshotCache(open_store(url), tmp_path / "cache", max_bytes=2**30)
    start = threading.Barrier(12)
    seen: list[dict[str, bytes]] = []

    def use() -> None:
        start.wait()
        with cache.open(snapshot.digest) as path:
            seen.append({p.name: p.read_bytes() for p in path.iterdir()})

    threads = [threading.Thread(target=use) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [{p.name: p.read_bytes() for p in tree.iterdir()}] * 12
    assert requests(s3_server, "GET", s3_key(url, cas_path(snapshot.digest))) == 1


def use_in_process(url: str, cache_dir: str, digest: str, start: Any, results: Any) -> None:
    """Run in a spawned process: wait for the others, then read the snapshot through the cache."""
    cache = SnapshotCache(open_store(url), cache_dir, max_bytes=2**30)
    start.wait()
    with cache.open(digest) as path:
        results.put(sha256(path.read_bytes()))


def test_processes_asking_at_once_make_one_get_and_read_no_corrupt_bytes(
    s3_server: S3Server,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    url = f"s3://{s3_bucket}/processes?endpoint_url={s3_server.endpoint_url}"
    data = os.urandom(12 * 2**20)  # two S3 parts up, seconds to fetch from moto: the askers overlap
    snapshot = put_snapshot(open_store(url), io.BytesIO(data))
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(8), context.Queue()
    args = (url, str(tmp_path / "cache"), snapshot.digest, start, results)
    processes = [context.Process(target=use_in_process, args=args) for _ in range(8)]
    for process in processes:
        process.start()
    hashes = [results.get(timeout=90) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    assert [p.exitcode for p in processes] == [0] * 8
    assert hashes == [sha256(data)] * 8
    assert requests(s3_server, "GET", s3_key(url, cas_path(snapshot.digest))) == 1
    assert cached(tmp_path / "cache") == [snapshot.digest] and leftovers(tmp_path / "cache") == []


# -- a download killed half way -------------------------------------------------------------

DOWNLOADER = textwrap.dedent(
    """
    import sys
    from openrange_mesh.store import open_store
    from openrange_mesh.store.cache import SnapshotCache
    url, cache_dir, digest = sys.argv[1:]
    with SnapshotCache(open_store(url), cache_dir, max_bytes=2**40).open(digest):
        pass
    """
)


def downloaded(cache_dir: Path) -> int:
    """Bytes in flight in the cache's tmp/."""
    try:
        return sum(p.stat().st_size for p in (cache_dir / "tmp").iterdir())
    except FileNotFoundError:  # not created yet, or renamed into place as we looked
        return 0


def kill_mid_download(store: Store, cache_dir: Path, digest: str) -> None:
    """Start a process downloading ``digest`` into ``cache_dir`` and SIGKILL it half way."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", DOWNLOADER, store.url, str(cache_dir), digest], env=env)
    try:
        wait_until(lambda: downloaded(cache_dir) > 0, timeout=30, interval=0.002, what="the download to start")
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=10)
    assert cached(cache_dir) == [], "the download finished before it could be killed"
    assert len(leftovers(cache_dir)) == 1


def test_after_a_download_killed_half_way_the_next_open_succeeds_and_cleans_up(store: Store, tmp_path: Path) -> None:
    data = os.urandom(96 * 2**20)  # a fraction of a second to fetch: time to see it start
    snapshot = put_snapshot(store, io.BytesIO(data))
    cache_dir = tmp_path / "cache"
    running = SnapshotCache(store, cache_dir, max_bytes=2**30)  # started before the kill
    kill_mid_download(store, cache_dir, snapshot.digest)
    assert sha256(running.get_bytes(snapshot.digest)) == sha256(data)
    assert leftovers(cache_dir) == []
    # and a start cleans what a killed download left: its partial file, its lock and pin files
    other = put_snapshot(store, io.BytesIO(data[:-1]))
    kill_mid_download(store, tmp_path / "cache-2", other.digest)
    SnapshotCache(store, tmp_path / "cache-2", max_bytes=2**30)
    assert leftovers(tmp_path / "cache-2") == []
    assert os.listdir(tmp_path / "cache-2" / "locks") == [] and os.listdir(tmp_path / "cache-2" / "pins") == []


def test_leftovers_of_killed_downloads_and_evictions_go_at_start(store: Store, tmp_path: Path) -> None:
    snapshot = put_snapshot(store, io.BytesIO(b"x"))
    hex_digest = snapshot.digest.partition(":")[2]
    cache_dir = tmp_path / "cache"
    SnapshotCache(store, cache_dir, max_bytes=2**20)
    for leftover in [cache_dir / "tmp" / f"{hex_digest}.dead", cache_dir / "trash" / f"{hex_digest}.dead"]:
        (leftover / "sub").mkdir(parents=True)
        (leftover / "sub" / "f").write_bytes(b"partial")
        for path in [leftover / "sub" / "f", leftover / "sub", leftover]:
            path.chmod(0o444 if path.is_file() else 0o555)
    (cache_dir / "tmp" / f"{hex_digest}.killed-file").write_bytes(b"partial")
    SnapshotCache(store, cache_dir, max_bytes=2**20)
    assert leftovers(cache_dir) == []


def test_entries_of_an_earlier_boot_are_fetched_again(store: Store, tmp_path: Path) -> None:
    """Entries are not fsynced (a killed process loses no written page; only a machine crash
    can tear one, and that ends the boot): a cache opened in a later boot drops the entries an
    earlier boot wrote, or an older version that did not say, and fetches them again when used.
    This boot's entries stay."""
    old, kept, unsaid = (put_snapshot(store, io.BytesIO(blob(KIB, i))) for i in range(3))
    cache_dir = tmp_path / "cache"
    cache = SnapshotCache(store, cache_dir, max_bytes=2**20)
    for snapshot in (old, kept, unsaid):
        cache.get_bytes(snapshot.digest)
    for snapshot, boot in ((old, " another-boot"), (unsaid, "")):  # "": as an older version wrote it
        pin = cache_dir / "pins" / snapshot.digest.partition(":")[2]
        pin.write_text(f"{pin.read_text().split()[0]}{boot}\n")
    kept_inode = os.stat(cache_dir / "data" / kept.digest.partition(":")[2]).st_ino
    reopened = SnapshotCache(store, cache_dir, max_bytes=2**20)
    assert cached(cache_dir) == [kept.digest] and leftovers(cache_dir) == []
    assert reopened.get_bytes(old.digest) == blob(KIB, 0) and reopened.get_bytes(kept.digest) == blob(KIB, 1)
    assert os.stat(cache_dir / "data" / kept.digest.partition(":")[2]).st_ino == kept_inode  # not fetched again
    assert cached(cache_dir) == sorted([old.digest, kept.digest])


# -- eviction -------------------------------------------------------------------------------


def put_four(store: Store) -> list[Snapshot]:
    return [put_snapshot(store, io.BytesIO(blob(100 * KIB, i))) for i in range(4)]


def test_least_recently_used_goes_first(store: Store, tmp_path: Path) -> None:
    a, b, c, _ = put_four(store)
    cache = SnapshotCache(store, tmp_path / "cache", max_bytes=250 * KIB)  # room for two
    cache.get_bytes(a.digest)
    cache.get_bytes(b.digest)
    cache.get_bytes(a.digest)  # a is used again: b is now the least recently used
    cache.get_bytes(c.digest)
    assert cached(tmp_path / "cache") == sorted([a.digest, c.digest])
    assert leftovers(tmp_path / "cache") == []


def test_an_entry_in_use_is_never_evicted(store: Store, tmp_path: Path) -> None:
    a, b, c, d = put_four(store)
    cache = SnapshotCache(store, tmp_path / "cache", max_bytes=250 * KIB)
    with cache.open(a.digest) as pinned:  # a is the oldest, but in use
        cache.get_bytes(b.digest)
        cache.get_bytes(c.digest)
        assert cached(tmp_path / "cache") == sorted([a.digest, c.digest])
        with cache.open(c.digest):  # everything in use: over the bound rather than evict
            cache.get_bytes(d.digest)
            assert cached(tmp_path / "cache") == sorted([a.digest, c.digest, d.digest])
        assert pinned.read_bytes() == blob(100 * KIB, 0)
    cache.get_bytes(b.digest)  # now a, the least recently used, can go
    assert cached(tmp_path / "cache") == sorted([b.digest, d.digest])


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from openrange_mesh.store import open_store
    from openrange_mesh.store.cache import SnapshotCache
    url, cache_dir, digest, ready, release = sys.argv[1:]
    with SnapshotCache(open_store(url), cache_dir, max_bytes=2**20).open(digest):
        Path(ready).touch()
        while not Path(release).exists():
            time.sleep(0.01)
    """
)


def test_a_pin_held_by_another_process_stops_eviction(store: Store, tmp_path: Path) -> None:
    a, b, c, _ = put_four(store)
    cache_dir = tmp_path / "cache"
    ready, release = tmp_path / "ready", tmp_path / "release"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = [store.url, str(cache_dir), a.digest, str(ready), str(release)]
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, *args], env=env)
    try:
        wait_until(ready.exists, timeout=30, what="the other process to pin a")
        cache = SnapshotCache(store, cache_dir, max_bytes=150 * KIB)  # room for one
        cache.get_bytes(b.digest)
        cache.get_bytes(c.digest)
        assert cached(cache_dir) == sorted([a.digest, c.digest])
    finally:
        release.touch()
        assert holder.wait(timeout=30) == 0
    cache.get_bytes(b.digest)
    assert cached(cache_dir) == [b.digest]


# -- a full disk ----------------------------------------------------------------------------

FULL_DISK = textwrap.dedent(
    """
    import io, os, subprocess, sys
    from openrange_mesh.errors import CacheFull
    from openrange_mesh.store import open_store
    from openrange_mesh.store.cache import SnapshotCache
    url, cache_dir, file_digest, tree_digest = sys.argv[1:]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "none", cache_dir], check=True)
    cache = SnapshotCache(open_store(url), cache_dir, max_bytes=2**30)
    for digest in (file_digest, tree_digest):
        try:
            with cache.open(digest):
                print("cached", digest)
        except CacheFull as exc:
            print(str(exc))
    print(sorted(os.listdir(f"{cache_dir}/data")), sorted(os.listdir(f"{cache_dir}/tmp")))
    """
)


def test_a_full_disk_is_a_one_line_cache_full_and_nothing_half_visible(store: Store, tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private tmpfs")
    file = put_snapshot(store, io.BytesIO(os.urandom(2 * 2**20)))
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(4):
        (tree / f"f{i}").write_bytes(os.urandom(400 * KIB))
    directory = put_snapshot(store, tree)
    (tmp_path / "cache").mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = ["unshare", "-m", sys.executable, "-c", FULL_DISK, store.url, str(tmp_path / "cache")]
    out = subprocess.run([*command, file.digest, directory.digest], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(
        f"no space to cache snapshot {file.digest} in {tmp_path / 'cache'}: OSError: No space left"
    )
    assert lines[1].startswith(f"no space to cache snapshot {directory.digest} in ")
    assert lines[2] == "[] []"
