"""The store contract for streaming: ``put_stream`` (create-only, verified) and ``open_read``, on a
plain path, file://, memory:// and a real local S3 endpoint (moto's server)."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
from pathlib import Path

import boto3  # type: ignore[import-untyped]
import pytest

from openrange_mesh.errors import ArtifactNotFound, HashMismatch, StoreError
from openrange_mesh.store import Store, open_store
from openrange_mesh.store.digest import CHUNK_SIZE, HashingReader, Reader
from openrange_mesh.store.streams import S3_PART_SIZE

from .s3kit import S3Server
from .storekit import requests, s3_key


@pytest.fixture
def store(any_store_url: str) -> Store:
    return open_store(any_store_url)


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


class Source:
    """A reader that records the sizes asked of it, and can fail after ``fail_after`` bytes."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        self._data = io.BytesIO(data)
        self._fail_after = fail_after
        self.asked: list[int] = []

    def read(self, size: int = -1, /) -> bytes:
        self.asked.append(size)
        if self._fail_after is not None and self._data.tell() >= self._fail_after:
            raise OSError("the source's disk went away")
        return self._data.read(size)


def read_all(store: Store, path: str, size: int = CHUNK_SIZE) -> bytes:
    parts = []
    with store.open_read(path) as reader:
        while part := reader.read(size):
            assert len(part) <= size
            parts.append(part)
    return b"".join(parts)


# -- the contract ---------------------------------------------------------------------------


def test_create_only_writes_once_and_the_first_writer_wins(store: Store) -> None:
    assert store.put_stream("cas/x", io.BytesIO(b"first")) is True
    assert store.put_stream("cas/x", io.BytesIO(b"second")) is False
    assert store.get_bytes("cas/x") == b"first"
    assert store.list() == ["cas/x"]


def test_without_create_only_a_stream_replaces(store: Store) -> None:
    store.put_bytes("a", b"old and longer")
    assert store.put_stream("a", io.BytesIO(b"new"), create_only=False) is True
    assert store.get_bytes("a") == b"new"


def test_a_verified_put_checks_the_digest_before_anything_is_visible(store: Store) -> None:
    data = b"payload" * 1000
    assert store.put_stream("v/ok", io.BytesIO(data), sha256=sha256(data))
    with pytest.raises(HashMismatch) as info:
        store.put_stream("v/bad", io.BytesIO(data), sha256=sha256(b"other"))
    assert info.value.expected == sha256(b"other")
    assert info.value.actual == sha256(data)
    assert info.value.size == len(data)
    assert str(info.value) == f"hash mismatch: expected {sha256(b'other')}, got {sha256(data)} after {len(data)} bytes"
    assert not store.exists("v/bad")
    assert store.list() == ["v/ok"]  # no temporary object left or listed


def test_large_objects_stream_in_bounded_reads(store: Store) -> None:
    data = os.urandom(S3_PART_SIZE + 3 * CHUNK_SIZE + 17)  # more than one S3 part
    source = Source(data)
    assert store.put_stream("big", source, sha256=sha256(data))
    assert max(source.asked) <= S3_PART_SIZE and min(source.asked) > 0
    assert read_all(store, "big") == data
    assert read_all(store, "big", size=100_003) == data


def test_a_failing_source_leaves_nothing(store: Store, any_store_url: str, request: pytest.FixtureRequest) -> None:
    data = os.urandom(S3_PART_SIZE + CHUNK_SIZE)
    with pytest.raises(StoreError, match="the source's disk went away"):
        store.put_stream("torn", Source(data, fail_after=S3_PART_SIZE))
    assert store.list() == []
    if any_store_url.startswith("s3://"):  # and no multipart upload left open (S3 keeps and bills them)
        server: S3Server = request.getfixturevalue("s3_server")
        client = boto3.client("s3", endpoint_url=server.endpoint_url)
        bucket, _, prefix = any_store_url.removeprefix("s3://").partition("?")[0].partition("/")
        assert client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []) == []


def test_reading_a_missing_object_is_artifact_not_found(store: Store) -> None:
    with pytest.raises(ArtifactNotFound) as info, store.open_read("no/such/blob"):
        pass
    assert info.value.path == store.location("no/such/blob")
    store.put_bytes("dir/child", b"1")
    with pytest.raises(ArtifactNotFound), store.open_read("dir"):
        pass


@pytest.mark.parametrize("path", ["", "/abs", "a/../b", "a//b"])
def test_bad_paths_are_refused_before_any_io(store: Store, path: str) -> None:
    with pytest.raises(StoreError, match="invalid store path"):
        store.put_stream(path, io.BytesIO(b"x"))
    with pytest.raises(StoreError, match="invalid store path"), store.open_read(path):
        pass


def test_read_without_a_size_is_one_chunk_not_the_whole_object(store: Store) -> None:
    data = os.urandom(2 * CHUNK_SIZE + 5)
    store.put_bytes("two-chunks", data)
    with store.open_read("two-chunks") as reader:
        first = reader.read()
        assert 0 < len(first) <= CHUNK_SIZE
        assert first + read_rest(reader) == data


def read_rest(reader: Reader) -> bytes:
    parts = []
    while part := reader.read(CHUNK_SIZE):
        parts.append(part)
    return b"".join(parts)


def test_racing_create_only_writers_leave_one_whole_object(store: Store) -> None:
    payloads = [bytes([65 + i]) * (256 * 1024) for i in range(6)]
    results: list[bool] = []
    start = threading.Barrier(len(payloads))

    def write(data: bytes) -> None:
        start.wait()
        results.append(store.put_stream("race", io.BytesIO(data), sha256=sha256(data)))

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get_bytes("race") in payloads
    assert results.count(True) >= 1
    if not store.url.startswith("s3://"):
        # exactly one winner where creation is atomic (link, a lock); moto's server checks
        # If-None-Match and then writes in two steps, so racing writers there may all "win"
        assert results.count(True) == 1
    assert store.list() == ["race"]


# -- backend specifics ----------------------------------------------------------------------


def test_a_file_store_keeps_created_objects_read_only(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    store.put_stream("cas/blob", io.BytesIO(b"immutable"))
    assert stat.S_IMODE(os.stat(tmp_path / "cas" / "blob").st_mode) == 0o444
    assert sorted(os.listdir(tmp_path / "cas")) == ["blob"]  # the temp name is gone


def test_an_s3_read_is_one_get_however_large(s3_server: S3Server, s3_bucket: str) -> None:
    url = f"s3://{s3_bucket}/one-get?endpoint_url={s3_server.endpoint_url}"
    store = open_store(url)
    data = os.urandom(3 * CHUNK_SIZE + 1)
    store.put_bytes("blob", data)
    assert read_all(store, "blob") == data
    assert requests(s3_server, "GET", s3_key(url, "blob")) == 1


@pytest.mark.parametrize("sizes", [[3, CHUNK_SIZE, CHUNK_SIZE, 7, CHUNK_SIZE], [CHUNK_SIZE] * 5, [10], [1, 2, 3] * 40])
def test_hashing_beside_the_copy_digests_every_byte_in_order(sizes: list[int]) -> None:
    """A fill hashes chunks in a thread of its own while it writes them out: the digest must be
    that of the bytes in order, whatever the reads' sizes, and the thread gone after ``digest``."""
    data = os.urandom(4 * CHUNK_SIZE + 123)
    reader = HashingReader(io.BytesIO(data), beside=True)
    parts = [reader.read(size) for size in sizes]
    while part := reader.read():
        parts.append(part)
    assert b"".join(parts) == data and reader.size == len(data)
    assert reader.digest == f"sha256:{hashlib.sha256(data).hexdigest()}"
    assert not [t for t in threading.enumerate() if t.name.startswith("sha256")]
