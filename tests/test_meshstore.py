"""One store per mesh (meshstore.py): recorded by the first agent, checked for every other,
found by readers; a record nobody can read is replaced, never trusted."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from openrange_mesh import meshstore
from openrange_mesh.errors import ConfigError
from openrange_mesh.keys import Keys
from openrange_mesh.registry import Put, Registry
from openrange_mesh.store import open_store


def test_the_first_store_is_recorded_and_the_same_one_is_accepted(
    registry: Registry, keys: Keys, tmp_path: Path
) -> None:
    first = open_store(str(tmp_path / "shared"))
    assert meshstore.join(registry, keys, first) is first
    record = meshstore.recorded(registry, keys)
    assert record is not None and record.url == first.url
    again = open_store(str(tmp_path / "shared"))
    assert meshstore.join(registry, keys, again) is again
    assert meshstore.recorded(registry, keys) == record, "a second agent does not rewrite the record"


def test_another_store_is_refused_in_one_line(registry: Registry, keys: Keys, tmp_path: Path) -> None:
    meshstore.join(registry, keys, open_store(str(tmp_path / "shared")))
    other = open_store(str(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError) as refused:
        meshstore.join(registry, keys, other)
    message = str(refused.value)
    assert "\n" not in message and str(tmp_path / "shared") in message and "--store" in message


def test_the_same_store_under_another_path_is_accepted_by_its_marker(
    registry: Registry, keys: Keys, tmp_path: Path
) -> None:
    (tmp_path / "export").mkdir()
    (tmp_path / "mount").symlink_to(tmp_path / "export")  # one NFS export, two mount points
    meshstore.join(registry, keys, open_store(str(tmp_path / "export")))
    elsewhere = open_store(str(tmp_path / "mount"))
    assert elsewhere.url != meshstore.recorded(registry, keys).url  # type: ignore[union-attr]
    assert meshstore.join(registry, keys, elsewhere) is elsewhere


def test_agents_and_readers_without_a_store_use_the_recorded_one(
    registry: Registry, keys: Keys, tmp_path: Path
) -> None:
    assert meshstore.join(registry, keys, None) is None, "no store anywhere: none"
    assert meshstore.find(registry, keys, None) is None
    first = open_store(str(tmp_path / "shared"))
    meshstore.join(registry, keys, first)
    first.put_bytes("episodes/x/attempt-1/result.json", b"{}")
    found = meshstore.join(registry, keys, None)
    assert found is not None and found.url == first.url and found.exists("episodes/x/attempt-1/result.json")
    read = meshstore.find(registry, keys, None)
    assert read is not None and read.url == first.url
    override = meshstore.find(registry, keys, str(tmp_path / "copy"))
    assert override is not None and override.url != first.url, "--store still overrides for readers"


@pytest.mark.parametrize("garbage", [b"\xff\x00not msgpack", b"\x91\x01", b"\x81\xa3url\xa0"])
def test_a_record_nobody_can_read_is_replaced(registry: Registry, keys: Keys, tmp_path: Path, garbage: bytes) -> None:
    registry.txn([], [Put(keys.store(), garbage)])
    assert meshstore.recorded(registry, keys) is None
    store = open_store(str(tmp_path / "shared"))
    assert meshstore.join(registry, keys, store) is store
    record = meshstore.recorded(registry, keys)
    assert record is not None and record.url == store.url


def test_namespaces_keep_records_of_their_own(registry: Registry, tmp_path: Path) -> None:
    a, b = Keys(f"a{uuid.uuid4().hex[:8]}"), Keys(f"b{uuid.uuid4().hex[:8]}")
    meshstore.join(registry, a, open_store(str(tmp_path / "a")))
    meshstore.join(registry, b, open_store(str(tmp_path / "b")))
    assert meshstore.recorded(registry, a).url != meshstore.recorded(registry, b).url  # type: ignore[union-attr]


def test_the_same_path_on_another_host_is_not_the_same_store(registry: Registry, keys: Keys, tmp_path: Path) -> None:
    """Two hosts each with a local ./openrange-store: one URL, two stores. The marker tells."""
    meshstore.join(registry, keys, open_store(str(tmp_path / "store")))
    for marker in (tmp_path / "store" / "meshes" / keys.namespace).iterdir():
        marker.unlink()  # as another host's own directory: no marker
    with pytest.raises(ConfigError, match="not the mesh's store of that name"):
        meshstore.join(registry, keys, open_store(str(tmp_path / "store")))


def test_agents_racing_to_be_first_all_join_the_one_store(registry: Registry, keys: Keys, tmp_path: Path) -> None:
    """Each racer writes its own marker before the record's create-if-absent; the losers'
    markers stay beside the winner's, never over it."""
    from concurrent.futures import ThreadPoolExecutor

    def join() -> str:
        store = meshstore.join(registry, keys, open_store(str(tmp_path / "store")))
        assert store is not None
        return store.url

    with ThreadPoolExecutor(8) as pool:
        urls = list(pool.map(lambda _: join(), range(8)))
    assert len(set(urls)) == 1
    record = meshstore.recorded(registry, keys)
    assert record is not None and record.url == urls[0]
