"""Snapshots by content (store/cas.py, store/archive.py): put and get on every backend,
deterministic directory digests, refused sources, unsafe and corrupt blobs."""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from openrange_mesh.errors import HashMismatch, InvalidDigest, SnapshotNotFound, StoreError, UnsafeSnapshot
from openrange_mesh.store import Store, open_store
from openrange_mesh.store.cas import (
    Snapshot,
    delete_snapshot,
    get_snapshot,
    has_snapshot,
    list_snapshots,
    put_snapshot,
)
from openrange_mesh.store.layout import cas_path, parse_cas_path

from .s3kit import S3Server
from .storekit import requests, s3_key


@pytest.fixture
def store(any_store_url: str) -> Store:
    return open_store(any_store_url)


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def make_tree(root: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    for name, target in (links or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / name)
    return root


def read_tree(root: Path) -> dict[str, object]:
    """Every member under ``root``: files as bytes and exec bit, links as their target."""
    found: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            found[name] = ("link", os.readlink(path))
        elif path.is_file():
            found[name] = (path.read_bytes(), bool(path.stat().st_mode & 0o100))
        else:
            found[name] = "dir"
    return found


TREE = {"world.bin": os.urandom(3000), "levels/1.json": b'{"a": 1}', "levels/2.json": b"{}", "empty": b""}


# -- put and get, every backend -------------------------------------------------------------


def test_a_file_round_trips(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "policy.pt"
    source.write_bytes(os.urandom(100_000))
    snapshot = put_snapshot(store, source)
    assert snapshot.kind == "file" and snapshot.size == 100_000 + 8
    assert store.get_bytes(cas_path(snapshot.digest)) == b"ORSNAP1F" + source.read_bytes()
    assert snapshot.digest == sha256(b"ORSNAP1F" + source.read_bytes())
    assert get_snapshot(store, snapshot.digest, tmp_path / "out") == snapshot
    assert (tmp_path / "out").read_bytes() == source.read_bytes()


def test_a_file_object_is_the_same_snapshot_as_the_file(store: Store, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"same bytes")
    assert put_snapshot(store, io.BytesIO(b"same bytes")) == put_snapshot(store, tmp_path / "f")
    assert list_snapshots(store) == [put_snapshot(store, str(tmp_path / "f")).digest]


def test_a_directory_round_trips(store: Store, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", TREE, links={"levels/latest": "2.json", "up": "levels"})
    (tree / "levels" / "run.sh").write_bytes(b"#!/bin/sh\n")
    (tree / "levels" / "run.sh").chmod(0o750)
    (tree / "no-files-here").mkdir()
    snapshot = put_snapshot(store, tree)
    assert snapshot.kind == "dir"
    assert has_snapshot(store, snapshot.digest)
    assert get_snapshot(store, snapshot.digest, tmp_path / "out") == snapshot
    assert read_tree(tmp_path / "out") == read_tree(tree)


def test_putting_what_is_stored_uploads_nothing(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    url = f"s3://{s3_bucket}/again?endpoint_url={s3_server.endpoint_url}"
    store = open_store(url)
    snapshot = put_snapshot(store, make_tree(tmp_path / "tree", TREE))
    key = s3_key(url, cas_path(snapshot.digest))
    assert requests(s3_server, "PUT", key) == 1
    assert put_snapshot(open_store(url), tmp_path / "tree") == snapshot
    assert requests(s3_server, "PUT", key) == 1


def test_missing_and_deleted_snapshots_are_not_found(store: Store, tmp_path: Path) -> None:
    snapshot = put_snapshot(store, io.BytesIO(b"short-lived"))
    delete_snapshot(store, snapshot.digest)
    assert not has_snapshot(store, snapshot.digest)
    with pytest.raises(SnapshotNotFound) as info:
        get_snapshot(store, snapshot.digest, tmp_path / "out")
    assert str(info.value) == f"snapshot {snapshot.digest} not found"
    assert info.value.digest == snapshot.digest
    assert not (tmp_path / "out").exists()


def test_a_corrupt_blob_is_a_hash_mismatch_and_leaves_nothing(store: Store, tmp_path: Path) -> None:
    for source in [io.BytesIO(os.urandom(50_000)), make_tree(tmp_path / "tree", TREE)]:
        snapshot = put_snapshot(store, source)
        blob = bytearray(store.get_bytes(cas_path(snapshot.digest)))
        blob[len(blob) // 2] ^= 0xFF  # one flipped bit in the middle: the zstd frame may still decode
        store.put_bytes(cas_path(snapshot.digest), bytes(blob))
        with pytest.raises(HashMismatch) as info:
            get_snapshot(store, snapshot.digest, tmp_path / "out")
        assert (
            str(info.value)
            == f"hash mismatch: expected {snapshot.digest}, got {sha256(bytes(blob))} after {len(blob)} bytes"
        )
        assert not (tmp_path / "out").exists()


def test_local_problems_with_the_source_are_store_errors(tmp_path: Path) -> None:
    store = open_store("memory://")
    with pytest.raises(StoreError, match="not a file or a directory"):
        put_snapshot(store, tmp_path / "missing")
    with pytest.raises(StoreError, match=r"cannot snapshot .*FileNotFoundError"):
        put_snapshot(store, io.BytesIO(b"x"), spool_dir=str(tmp_path / "no-spool-here"))
    assert list_snapshots(store) == []


def test_a_blob_of_an_unknown_format_is_refused_by_name(store: Store, tmp_path: Path) -> None:
    blob = b"ORSNAP9Xfrom the future"
    store.put_bytes(cas_path(sha256(blob)), blob)
    with pytest.raises(StoreError, match="unknown format b'ORSNAP9X'"):
        get_snapshot(store, sha256(blob), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "digest", ["", "sha256:", "sha256:" + "A" * 64, "sha256:" + "a" * 63, "md5:" + "a" * 32, "a" * 64, 7]
)
def test_malformed_digests_are_one_line_errors(digest: str, tmp_path: Path) -> None:
    store = open_store("memory://")
    for call in [lambda: get_snapshot(store, digest, tmp_path / "x"), lambda: has_snapshot(store, digest)]:
        with pytest.raises(InvalidDigest) as info:
            call()
        assert str(info.value).startswith(f"invalid snapshot digest {digest!r}: want 'sha256:'")
        assert "\n" not in str(info.value)


def test_layout_of_blobs() -> None:
    digest = "sha256:" + "ab" + "0" * 62
    assert cas_path(digest) == f"cas/sha256/ab/ab{'0' * 62}"
    assert parse_cas_path(cas_path(digest)) == digest
    assert parse_cas_path(f"cas/sha256/cd/ab{'0' * 62}") is None
    assert parse_cas_path("snapshots/x") is None


# -- deterministic directory digests --------------------------------------------------------


def test_the_same_tree_gives_the_same_digest_whatever_its_times_owners_and_order(tmp_path: Path) -> None:
    store = open_store("memory://")
    first = make_tree(tmp_path / "a", TREE, links={"levels/latest": "2.json"})
    # the same content, written in another order, with other times, owners and permissions
    second = make_tree(tmp_path / "b", dict(reversed(TREE.items())), links={"levels/latest": "2.json"})
    for path in second.rglob("*"):
        os.lchown(path, 1234, 5678)
        if not path.is_symlink():
            path.chmod(0o700 if path.is_dir() else 0o600)
            os.utime(path, (1_000_000, 1_000_000))
    assert put_snapshot(store, first) == put_snapshot(store, second)
    # the execute bit, a name, a byte and a link's target are all part of the snapshot
    changes: list[Callable[[Path], object]] = [
        lambda t: (t / "world.bin").chmod(0o755),
        lambda t: (t / "empty").rename(t / "Empty"),
        lambda t: (t / "levels" / "2.json").write_bytes(b"{ }"),
        lambda t: [(t / "levels" / "latest").unlink(), os.symlink("1.json", t / "levels" / "latest")],
    ]
    digests = {put_snapshot(store, first).digest}
    for number, change in enumerate(changes):
        tree = make_tree(tmp_path / f"c{number}", TREE, links={"levels/latest": "2.json"})
        change(tree)
        digests.add(put_snapshot(store, tree).digest)
    assert len(digests) == 1 + len(changes)


@pytest.mark.parametrize(
    ("links", "member", "problem"),
    [
        ({"abs": "/etc/passwd"}, "abs", "links to an absolute path"),
        ({"up": "../outside"}, "up", "links outside the tree"),
        ({"sub/up": "../../outside"}, "sub/up", "links outside the tree"),
        # each link stays inside on its own; resolved through 'a/s' (the root) 'a/x' climbs out
        ({"a/s": "..", "a/x": "s/../outside"}, "a/x", "links outside the tree through another link"),
    ],
)
def test_a_tree_with_links_out_of_it_is_refused(
    tmp_path: Path, links: dict[str, str], member: str, problem: str
) -> None:
    (tmp_path / "outside").write_bytes(b"secret")
    tree = make_tree(tmp_path / "tree", {"ok": b"1"}, links=links)
    with pytest.raises(UnsafeSnapshot) as info:
        put_snapshot(open_store("memory://"), tree)
    assert (info.value.member, info.value.problem) == (member, problem)


def test_a_tree_with_a_fifo_is_refused(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", {"ok": b"1"})
    os.mkfifo(tree / "pipe")
    with pytest.raises(UnsafeSnapshot, match="'pipe' is a device, fifo or socket"):
        put_snapshot(open_store("memory://"), tree)


# -- unsafe archives ------------------------------------------------------------------------


def member(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", link: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def crafted_blob(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """A directory blob as someone else might have made it: any tar, compressed and headed."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return b"ORSNAP1D" + zstandard.ZstdCompressor().compress(raw.getvalue())


UNSAFE = {  # the members, and a pattern of the message
    "dot-dot": ([member("../evil")], r"'\.\./evil' climbs out of the root with '\.\.'"),
    "deep-dot-dot": ([member("a/../../evil")], "climbs out of the root"),
    "absolute": ([member("/tmp/evil")], "'/tmp/evil' is an absolute path"),
    "absolute-link": ([member("l", tarfile.SYMTYPE, link="/etc")], "'l' links to an absolute path"),
    "escaping-link": ([member("d/l", tarfile.SYMTYPE, link="../../evil")], "'d/l' links outside the tree"),
    "write-through-link": (
        [member("l", tarfile.SYMTYPE, link="."), member("l/evil")],
        "'l/evil' lies under a link, not a directory",
    ),
    "link-chain": (
        [
            member("a", tarfile.DIRTYPE),
            member("a/s", tarfile.SYMTYPE, link=".."),
            member("a/x", tarfile.SYMTYPE, link="s/../evil"),
        ],
        # tarfile's data filter sees it first where Python has it, our last check otherwise
        r"'a/x' (refused by tarfile's data filter \(LinkOutsideDestinationError\)|links outside the root)",
    ),
    "hard-link": ([member("f"), member("h", tarfile.LNKTYPE, link="f")], "'h' is a device, fifo or hard link"),
    "device": ([member("null", tarfile.CHRTYPE)], "'null' is a device, fifo or hard link"),
    "twice": ([member("f"), member("f", data=b"again")], "'f' appears twice"),
    # tarfile makes x/ for x/y: a file x after it would fail as the host's disk, not the snapshot
    "file-over-a-made-parent": ([member("x/y"), member("x")], "'x' appears twice"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_archives_are_refused_and_leave_nothing(case: str, tmp_path: Path) -> None:
    members, message = UNSAFE[case]
    store = open_store("memory://")
    blob = crafted_blob(members)
    store.put_bytes(cas_path(sha256(blob)), blob)
    (tmp_path / "work").mkdir()
    with pytest.raises(UnsafeSnapshot) as info:
        get_snapshot(store, sha256(blob), tmp_path / "work" / "out")
    assert str(info.value).startswith(f"unsafe snapshot {sha256(blob)}: ")
    assert re.search(message, str(info.value))
    assert "\n" not in str(info.value)
    assert list((tmp_path / "work").iterdir()) == []
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil").exists()


def test_an_archive_that_does_not_decode_says_so(tmp_path: Path) -> None:
    """Every byte as stored, so the snapshot's own fault (its episode fails), not its host's."""
    store = open_store("memory://")
    blob = b"ORSNAP1D" + b"not zstd at all"
    store.put_bytes(cas_path(sha256(blob)), blob)
    with pytest.raises(UnsafeSnapshot, match="is not a readable archive"):
        get_snapshot(store, sha256(blob), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_extended_header_declaring_gigabytes_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """tarfile reads a PAX header whole: an 8 KB blob declaring 256 MiB took 500 MiB of RSS."""
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, 256 << 20
    compressor = zstandard.ZstdCompressor().compressobj()
    body = [compressor.compress(header.tobuf(format=tarfile.USTAR_FORMAT))]
    body += [compressor.compress(bytes(1 << 20)) for _ in range(header.size >> 20)]
    blob = b"ORSNAP1D" + b"".join(body) + compressor.flush()
    store = open_store("memory://")
    store.put_bytes(cas_path(sha256(blob)), blob)
    tracemalloc.start()
    try:
        with pytest.raises(UnsafeSnapshot, match="an extended header of 268435456 bytes"):
            get_snapshot(store, sha256(blob), tmp_path / "out")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(blob) < 64 * 1024 and peak < 16 << 20, (len(blob), peak)


def test_snapshot_is_a_value() -> None:
    assert Snapshot("sha256:" + "0" * 64, 8, "file") == Snapshot("sha256:" + "0" * 64, 8, "file")
