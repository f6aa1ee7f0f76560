"""The store contract, run on every backend: a directory (file://), memory:// and a real local
S3 endpoint (moto's server). Backend-specific behaviour (S3 bucket checks, file-store atomicity
across processes, URL parsing) follows the contract suite."""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from openrange_mesh.errors import ArtifactNotFound, ConfigError, StoreError
from openrange_mesh.store import FsspecStore, Store, open_store
from openrange_mesh.store.events import decode_events, encode_events, read_events
from openrange_mesh.store.layout import (
    artifact_path,
    episode_prefix,
    events_path,
    parse_events_path,
    result_path,
)
from openrange_mesh.worker.sinks import write_events

from .s3kit import S3Server, free_port

# -- fixtures -------------------------------------------------------------------------------


def _unique() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store_url(any_store_url: str) -> str:
    """Every store kind (conftest's ``any_store_url``: a path, file://, memory://, s3://)."""
    return any_store_url


@pytest.fixture
def store(store_url: str) -> Store:
    return open_store(store_url)


# -- the contract ---------------------------------------------------------------------------


def test_put_get_round_trip(store: Store) -> None:
    assert not store.exists("a/b.txt")
    store.put_bytes("a/b.txt", b"hello")
    assert store.get_bytes("a/b.txt") == b"hello"
    assert store.exists("a/b.txt")
    assert not store.exists("a")  # a prefix of an object is not an object


def test_overwrite_replaces(store: Store) -> None:
    store.put_bytes("x", b"first, and longer")
    store.put_bytes("x", b"second")
    assert store.get_bytes("x") == b"second"
    assert store.list() == ["x"]


def test_missing_is_artifact_not_found(store: Store) -> None:
    with pytest.raises(ArtifactNotFound) as info:
        store.get_bytes("no/such/thing")
    assert info.value.path == store.location("no/such/thing")
    assert "\n" not in str(info.value)
    store.put_bytes("dir/child", b"1")
    with pytest.raises(ArtifactNotFound):
        store.get_bytes("dir")  # a prefix, not an object


def test_list_is_sorted_relative_and_filtered_by_prefix(store: Store) -> None:
    assert store.list() == []
    paths = ["episodes/e10/a", "snapshots/s1", "episodes/e1/b/c", "episodes/e1/a", "episodes/e2/a", "top"]
    for path in paths:
        store.put_bytes(path, path.encode())
    assert store.list() == sorted(paths)
    assert store.list("episodes/e1/") == ["episodes/e1/a", "episodes/e1/b/c"]
    # a string prefix, as in etcd: "episodes/e1" also matches e10
    assert store.list("episodes/e1") == ["episodes/e1/a", "episodes/e1/b/c", "episodes/e10/a"]
    assert store.list("episodes/e1/b") == ["episodes/e1/b/c"]
    assert store.list("sn") == ["snapshots/s1"]
    assert store.list("nothing/") == []
    assert store.list("top") == ["top"]


def test_modified_lists_what_list_does_with_write_times(store: Store) -> None:
    before = time.time() - 5  # some backends keep whole seconds
    for path in ("a/1", "a/2", "b/1"):
        store.put_bytes(path, b"x")
    times = store.modified("a/")
    assert list(times) == store.list("a/") == ["a/1", "a/2"]
    assert all(before <= t <= time.time() + 5 for t in times.values()), times


def test_delete_is_idempotent(store: Store) -> None:
    store.put_bytes("a/1", b"1")
    store.put_bytes("a/2", b"2")
    store.delete("a/1")
    store.delete("a/1")
    store.delete("never/was")
    assert store.list() == ["a/2"]
    with pytest.raises(ArtifactNotFound):
        store.get_bytes("a/1")


def test_delete_prefix_removes_exactly_the_prefix(store: Store) -> None:
    for path in ["ep/e1/a", "ep/e1/b/c", "ep/e10/a", "ep/e2/a"]:
        store.put_bytes(path, b"x")
    assert store.delete_prefix("ep/e1/") == 2
    assert store.list() == ["ep/e10/a", "ep/e2/a"]
    assert store.delete_prefix("ep/e1/") == 0
    store.put_bytes("ep/e1/again", b"y")  # the prefix is usable again after a delete
    assert store.get_bytes("ep/e1/again") == b"y"
    assert store.delete_prefix("") == 3
    assert store.list() == []


def test_location_and_url(store: Store, store_url: str, tmp_path: Path) -> None:
    store.put_bytes("a/b", b"data")
    location = store.location("a/b")
    scheme = store_url.partition("://")[0] if "://" in store_url else "path"
    if scheme in ("file", "path"):
        assert location == f"{tmp_path}/store/a/b"
        assert Path(location).read_bytes() == b"data"
    elif scheme == "memory":
        assert location == f"{store_url}/a/b"
    else:
        assert location == f"{store_url.partition('?')[0]}/a/b"
    assert store.location() == location.removesuffix("/a/b")
    assert store.url == (f"file://{store_url}" if scheme == "path" else store_url)  # a path is file://
    assert open_store(store.url).get_bytes("a/b") == b"data"  # url reopens the same store


def test_another_opener_sees_writes_at_once(store: Store, store_url: str) -> None:
    other = open_store(store_url)  # another host, as far as the store can tell
    assert other.list("a/") == []
    store.put_bytes("a/x", b"1")
    assert other.list("a/") == ["a/x"]
    assert other.exists("a/x")
    store.delete("a/x")
    assert other.list("a/") == []
    assert not other.exists("a/x")


def test_a_forked_child_can_use_its_parents_store(store: Store) -> None:
    store.put_bytes("parent", b"p")

    def child() -> None:
        store.put_bytes("child", store.get_bytes("parent") + b"c")

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(timeout=30)
    assert process.exitcode == 0
    if not store.url.startswith("memory://"):  # a forked memory store is the child's own copy
        assert store.get_bytes("child") == b"pc"


BAD_PATHS = ["", "/abs", "../up", "a/../b", "a//b", "a/", ".", "a/./b", "a\\b", "a\nb"]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_bad_paths_are_rejected(store: Store, path: str) -> None:
    calls: list[Callable[[], object]] = [
        lambda: store.put_bytes(path, b"x"),
        lambda: store.get_bytes(path),
        lambda: store.exists(path),
        lambda: store.delete(path),
    ]
    for call in calls:
        with pytest.raises(StoreError, match="invalid store path") as info:
            call()
        assert not isinstance(info.value, ArtifactNotFound)


@pytest.mark.parametrize("prefix", ["/abs", "../", "a/../", "a//", "./"])
def test_bad_prefixes_are_rejected(store: Store, prefix: str) -> None:
    with pytest.raises(StoreError, match="invalid store path"):
        store.list(prefix)
    with pytest.raises(StoreError, match="invalid store path"):
        store.delete_prefix(prefix)


def test_binary_and_empty_data(store: Store) -> None:
    binary = bytes(range(256)) * 4 + b"\r\n\x00\xff"
    store.put_bytes("bin", binary)
    store.put_bytes("empty", b"")
    assert store.get_bytes("bin") == binary
    assert store.get_bytes("empty") == b""
    assert store.exists("empty")


def test_large_object(store: Store) -> None:
    data = os.urandom(5 * 2**20 + 123)
    store.put_bytes("big/blob", data)
    assert store.get_bytes("big/blob") == data


def test_events_chunks_round_trip(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    events = [{"step": i, "reward": i / 2, "obs": [i, "ü"]} for i in range(7)]
    store.put_bytes(events_path("e1", 1, 1), encode_events(events[3:]))
    store.put_bytes(events_path("e1", 1, 0), encode_events(events[:3]) + b'{"torn": \n[1, 2]\n')
    store.put_bytes(events_path("e1", 2, 0), encode_events([{"attempt": 2}]))
    store.put_bytes(events_path("e1", 10, 0), encode_events([{"attempt": 10}]))
    store.put_bytes(result_path("e1", 1), b"{}")
    store.put_bytes(events_path("e10", 11, 0), encode_events([{"other": "episode"}]))
    with caplog.at_level(logging.WARNING, logger="openrange_mesh.store.events"):
        assert read_events(store, "e1", attempt=1) == events
    assert "skipped 2 corrupt event line(s)" in caplog.text
    assert read_events(store, "e1") == [{"attempt": 10}]  # the latest attempt, by number
    assert read_events(store, "e1", attempt=3) == []
    assert read_events(store, "nobody") == []


# -- layout and events encoding (pure) ------------------------------------------------------


def test_layout_paths() -> None:
    assert episode_prefix("e1") == "episodes/e1/"
    assert events_path("e1", 2, 7) == "episodes/e1/attempt-2/events-000007.jsonl"
    assert result_path("e1", 2) == "episodes/e1/attempt-2/result.json"
    assert artifact_path("e1", 2, 77, "video.mp4") == "episodes/e1/attempt-2/artifacts-77/video.mp4"
    assert artifact_path("e1", 2, 77, "videos/ep.mp4") == "episodes/e1/attempt-2/artifacts-77/videos/ep.mp4"
    assert parse_events_path(events_path("e1", 12, 1234567)) == ("e1", 12, 1234567)
    assert parse_events_path(result_path("e1", 1)) is None


@pytest.mark.parametrize(
    "name", ["", ".", "..", "a/b", "../x", "a\\b", "a\x00", "x" * 256, "a\x7f", "a\x9b", "a\u202e", "é" * 128]
)
def test_layout_rejects_unsafe_components(name: str) -> None:
    builds: list[Callable[[], str]] = [lambda: episode_prefix(name)]
    if "/" not in name:  # an artifact's name may have folders; each part is checked
        builds += [lambda: artifact_path("e1", 1, 5, name), lambda: artifact_path("e1", 1, 5, f"ok/{name}")]
    for build in builds:
        with pytest.raises(StoreError, match="invalid"):
            build()


@pytest.mark.parametrize("number", [-1, True, 1.5])
def test_layout_rejects_bad_numbers(number: int) -> None:
    with pytest.raises(StoreError, match="invalid"):
        events_path("e1", number, 0)
    with pytest.raises(StoreError, match="invalid"):
        events_path("e1", 1, number)


def test_decode_events_is_tolerant(caplog: pytest.LogCaptureFixture) -> None:
    data = b'{"a": 1}\n\n  \n"a string"\n\xff\xfe\n{"b": 2}\r\n{"c":\n'
    with caplog.at_level(logging.WARNING):
        assert decode_events(data, source="chunk-0") == [{"a": 1}, {"b": 2}]
    assert "skipped 3 corrupt event line(s) in chunk-0, first at 4" in caplog.text
    assert decode_events(b"") == []
    assert decode_events(encode_events([{"x": "a\nb"}])) == [{"x": "a\nb"}]


def test_events_encode_as_json_did_and_one_that_does_not_is_dropped_alone(tmp_path: Path) -> None:
    """numpy's scalars and float subclasses are written as their values, keys that are not
    strings as strings (json's rules), a float that is not finite as its name (json wrote NaN,
    which no JSON parser but Python's takes); an event with a value JSON has not is dropped,
    its neighbours kept."""
    import numpy as np

    class Reward(float):
        pass

    assert json.loads(encode_events([{"deep": [{"x": -math.inf}]}])) == {"deep": [{"x": "-inf"}]}
    odd = {"r": np.float64(1.5), "n": np.int64(3), "f": Reward(2.0), 7: "key", "nan": math.nan, "obs": np.zeros(2)}
    assert json.loads(encode_events([odd])) == {"r": 1.5, "n": 3, "f": 2.0, "7": "key", "nan": "nan", "obs": [0, 0]}
    store = open_store(str(tmp_path / "store"))
    events = [{"type": "a"}, {"type": "b", "big": 2**70, "x": object()}, {"type": "c"}]
    assert write_events(store, "shared/x.jsonl", events, None)
    assert [e["type"] for e in decode_events(store.get_bytes("shared/x.jsonl"))] == ["a", "c"]


# -- S3 specifics ---------------------------------------------------------------------------


def test_s3_missing_bucket_fails_at_open(s3_server: S3Server) -> None:
    with pytest.raises(StoreError, match="bucket 'no-such-bucket' does not exist") as info:
        open_store(f"s3://no-such-bucket/p?endpoint_url={s3_server.endpoint_url}")
    assert "\n" not in str(info.value)


def test_s3_unreachable_endpoint_fails_fast(s3_server: S3Server) -> None:
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot open bucket") as info:
        open_store(f"s3://some-bucket?endpoint_url=http://127.0.0.1:{free_port()}")
    assert time.monotonic() - started < 10
    assert "\n" not in str(info.value)


def test_s3_options_region_and_profile(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text("[mesh]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    url = f"s3://{s3_bucket}/p?endpoint_url={s3_server.endpoint_url}&region=eu-west-1&profile=mesh"
    store = open_store(url)
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"
    assert store.url == url
    with pytest.raises(StoreError, match="nobody"):
        open_store(f"s3://{s3_bucket}?endpoint_url={s3_server.endpoint_url}&profile=nobody")


def test_missing_s3fs_names_the_extra() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["s3fs"] = None  # as if the s3 extra were not installed
        from openrange_mesh.errors import ConfigError
        from openrange_mesh.store import open_store
        try:
            open_store("s3://bucket/prefix")
        except ConfigError as exc:
            print(exc)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert "pip install 'openrange-mesh[s3]'" in out.stdout


# -- URLs -----------------------------------------------------------------------------------


def test_plain_paths_and_file_urls_name_one_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    open_store("relative/store").put_bytes("a", b"1")
    assert open_store(f"file://{tmp_path}/relative/store").get_bytes("a") == b"1"
    assert open_store(str(tmp_path / "relative" / "store")).url == f"file://{tmp_path}/relative/store"
    assert not (tmp_path / "unused").exists()
    open_store(str(tmp_path / "unused")).list()  # opening and reading have no side effects
    assert not (tmp_path / "unused").exists()


def test_memory_names_are_shared_and_bare_memory_is_private() -> None:
    name = _unique()
    open_store(f"memory://{name}").put_bytes("a", b"1")
    assert open_store(f"memory://{name}").get_bytes("a") == b"1"
    assert open_store(f"memory://{_unique()}").list() == []
    private = open_store("memory://")
    private.put_bytes("a", b"2")
    assert open_store("memory://").list() == []
    assert private.get_bytes("a") == b"2"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://user:hunter2@host/x",
        "file://otherhost/x",
        "memory://x?opt=1",
        "s3://",
        "s3://bucket?colour=blue",
        "s3://bucket?region=a&region=b",
        "s3://bucket?region=",
        "s3://bucket/a/../b",
        "s3://AKIA:hunter2@bucket/p",
        "s3://bucket?endpoint_url=http://AKIA:hunter2@localhost:9000",
    ],
)
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_store(url)
    assert "hunter2" not in str(info.value)
    assert "\n" not in str(info.value)


# -- file stores across processes -----------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from openrange_mesh.store import open_store
    url, role, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    store = open_store(url)
    while not go.exists():
        time.sleep(0.005)
    if role.startswith("writer"):
        for i in range(150):
            store.put_bytes(f"episodes/e{i % 5}/attempt-1/{role}-{i:03d}", f"{role}:{i}".encode())
    else:  # overwrite one object again and again with uniform 1 MiB payloads
        for i in range(60):
            store.put_bytes("hot", bytes([65 + i % 2]) * 2**20)
    """
)


def _start(url: str, role: str, go: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", WRITER, url, role, str(go)])


def test_concurrent_writers_from_two_processes_both_land(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    go = tmp_path / "go"
    writers = [_start(url, "writer-a", go), _start(url, "writer-b", go)]
    go.touch()
    assert [w.wait(timeout=60) for w in writers] == [0, 0]
    store = open_store(url)
    paths = store.list()
    assert len(paths) == 300
    for path in paths:
        role, _, number = path.rpartition("/")[2].rpartition("-")
        assert store.get_bytes(path) == f"{role}:{int(number)}".encode()


def test_readers_never_see_a_partial_put(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    store = open_store(url)
    store.put_bytes("hot", b"A" * 2**20)
    go = tmp_path / "go"
    writer = _start(url, "overwriter", go)
    go.touch()
    reads = 0
    while writer.poll() is None or reads == 0:
        data = store.get_bytes("hot")
        assert len(data) == 2**20 and data == data[:1] * len(data)
        reads += 1
    assert writer.returncode == 0
    assert store.list() == ["hot"]  # no temporary files left behind or listed


def test_delete_prefix_prunes_emptied_directories_only_inside_the_prefix(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    store.put_bytes("episodes/e1/attempt-1/artifacts/x", b"1")
    store.put_bytes("episodes/e2/attempt-1/result.json", b"2")
    assert store.delete_prefix(episode_prefix("e1")) == 1
    assert not (tmp_path / "episodes" / "e1").exists()
    assert (tmp_path / "episodes" / "e2" / "attempt-1" / "result.json").exists()
    store.delete_prefix(episode_prefix("e2"))
    assert (tmp_path / "episodes").is_dir()  # outside the prefix: left alone


def test_fsspec_store_is_the_store() -> None:
    assert isinstance(open_store("memory://"), FsspecStore)
    assert isinstance(open_store("memory://"), Store)
