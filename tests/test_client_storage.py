"""Snapshots by name and artifacts through MeshClient, on both registries and a real store: names
are pinned to digests at submit, the mesh's store is found through etcd, and only the attempt
that ended an episode lists its artifacts."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from openrange_mesh import meshstore
from openrange_mesh.client import MeshClient
from openrange_mesh.errors import ArtifactNotFound, ConfigError, SpecError
from openrange_mesh.ledger.records import finish_attempt
from openrange_mesh.model import State
from openrange_mesh.registry import Registry
from openrange_mesh.store import open_store
from openrange_mesh.store.layout import artifact_path


@pytest.fixture
def client(registry: Registry, tmp_path: Path) -> Iterator[MeshClient]:
    namespace = f"s{uuid.uuid4().hex[:10]}"
    with MeshClient(registry, namespace=namespace, consumer="trainer") as c:
        meshstore.join(registry, c.keys, open_store(str(tmp_path / "store")))  # as a first agent does
        yield c


def test_a_name_is_pinned_to_its_digest_at_submit(client: MeshClient, tmp_path: Path) -> None:
    (tmp_path / "v1").write_text("world one")
    (tmp_path / "v2").write_text("world two")
    first = client.put_snapshot(tmp_path / "v1", name="world")
    (episode,) = client.submit([{"runtime": "sleep", "snapshot": "world"}])
    second = client.put_snapshot(tmp_path / "v2", name="world")  # the name moves on
    assert client.get(episode).spec.snapshot == first.digest != second.digest
    assert [(n.name, n.digest) for n in client.snapshots()] == [("world", second.digest)]
    (by_digest,) = client.submit([{"runtime": "sleep", "snapshot": first.digest}])
    assert client.get(by_digest).spec.snapshot == first.digest


def test_putting_the_same_content_twice_uploads_it_once(client: MeshClient, tmp_path: Path) -> None:
    one = client.put_snapshot(io.BytesIO(b"same bytes"), name="a")
    two = client.put_snapshot(io.BytesIO(b"same bytes"), name="b")
    assert one.digest == two.digest
    assert len(client.store.list("cas/")) == 1


def test_unknown_names_and_absent_blobs_are_refused_at_submit(client: MeshClient) -> None:
    with pytest.raises(SpecError, match="no snapshot named 'nope'"):
        client.submit([{"runtime": "sleep", "snapshot": "nope"}])
    with pytest.raises(SpecError, match="is not in the store"):
        client.submit([{"runtime": "sleep", "snapshot": "sha256:" + "1" * 64}])
    with pytest.raises(SpecError, match="sha256"):
        client.submit([{"runtime": "sleep", "snapshot": "sha256:XYZ"}])
    assert client.ledger.queue() == [], "nothing submitted"


def test_remove_forgets_a_name_once(client: MeshClient, tmp_path: Path) -> None:
    client.put_snapshot(io.BytesIO(b"x"), name="gone")
    assert client.remove_snapshot("gone") is True
    assert client.remove_snapshot("gone") is False
    assert client.snapshots() == []
    with pytest.raises(SpecError, match="name"):
        client.put_snapshot(io.BytesIO(b"x"), name="sha256:abc")


def test_a_client_without_a_mesh_store_says_so(registry: Registry) -> None:
    with (
        MeshClient(registry, namespace=f"n{uuid.uuid4().hex[:8]}") as bare,
        pytest.raises(ConfigError, match="no store"),
    ):
        bare.put_snapshot(io.BytesIO(b"x"))


def test_artifacts_of_the_attempt_that_ended_the_episode(client: MeshClient, registry: Registry) -> None:
    (episode,) = client.submit([{"runtime": "sleep"}])
    lease = registry.grant(10)
    (entry,) = client.ledger.queue()
    claim, running = client.ledger.claim("h1", lease, entry, client.ledger.read(list(entry.ids)))  # type: ignore[misc]
    assert client.artifacts(episode) == [], "none before it ends"
    listed = [{"name": "out.txt", "size": 5, "sha256": "sha256:" + "e" * 64}]
    client.store.put_bytes(artifact_path(episode, 1, claim.token, "out.txt"), b"hello")
    final = finish_attempt(running[0], State.SUCCEEDED, time.time(), None, {}, token=claim.token, artifacts=listed)
    assert client.ledger.commit(claim, [final], last=True)
    (artifact,) = client.artifacts(episode)
    assert (artifact.name, artifact.size, artifact.attempt) == ("out.txt", 5, 1)
    with client.open_artifact(episode, "out.txt") as reader:
        assert reader.read() == b"hello"
    with pytest.raises(ArtifactNotFound, match=r"out\.txt"), client.open_artifact(episode, "other.txt"):
        pass
