"""Shared storage end to end, with agents as processes: a snapshot uploaded once and fetched once
per host, artifacts of every committed episode readable from the client, a fenced-off owner's
late artifacts never the result, and one store per mesh (issue 14)."""

from __future__ import annotations

import io
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from openrange_mesh.client import MeshClient
from openrange_mesh.model import State

from .etcdkit import EtcdServer
from .helpers import wait_until
from .meshkit import MakeMesh
from .s3kit import S3Server
from .storekit import requests

WORLD = b"the world episodes start from\n" * 1000
# Each episode copies its snapshot into an artifact, and says which attempt made it.
COPY = [
    "sh",
    "-c",
    'cp "$OPENRANGE_SNAPSHOT" "$OPENRANGE_ARTIFACTS/world" && echo "$OPENRANGE_ARTIFACTS" > "$OPENRANGE_ARTIFACTS/who"',
]


def store_url(kind: str, tmp_path: Path, s3: S3Server) -> str:
    if kind == "directory":
        return str(tmp_path / "shared")
    bucket = s3.make_bucket(f"e2e-{uuid.uuid4().hex[:8]}")
    return f"s3://{bucket}/mesh?endpoint_url={s3.endpoint_url}"


def read(client: MeshClient, episode_id: str, name: str) -> bytes:
    with client.open_artifact(episode_id, name) as reader:
        parts = []
        while chunk := reader.read(1 << 16):
            parts.append(chunk)
        return b"".join(parts)


@pytest.mark.parametrize("kind", ["directory", "s3"])
def test_a_snapshot_is_fetched_once_per_host_and_every_episode_leaves_artifacts(
    make_mesh: MakeMesh, etcd: EtcdServer, s3_server: S3Server, tmp_path: Path, kind: str
) -> None:
    mesh = make_mesh(etcd.url)
    url = store_url(kind, tmp_path, s3_server)
    mesh.start_agent("h1", capacity=3, store=url)
    mesh.start_agent("h2", capacity=3, store=url)
    client = MeshClient(mesh.registry, namespace=mesh.namespace)  # finds the store through etcd
    snapshot = client.put_snapshot(io.BytesIO(WORLD), name="world")
    ids = client.submit([{"runtime": "command", "params": {"argv": COPY}, "snapshot": "world"}] * 12)
    records = mesh.wait_finished(ids)
    assert {r.state for r in records.values()} == {State.SUCCEEDED}, [r.error for r in records.values()]
    hosts = {r.history[-1].host for r in records.values()}
    for episode_id in ids:
        assert read(client, episode_id, "world") == WORLD
        assert {a.name for a in client.artifacts(episode_id)} == {"world", "who"}
    for host in hosts:  # the blob sits in each host's cache once
        cached = list((mesh.logs / f"cache-{host}" / "data").iterdir())
        assert [p.name for p in cached] == [snapshot.digest[7:]], cached
    if kind == "s3":  # counted at the server: one GET of the blob per host that ran episodes
        key = url.removeprefix("s3://").partition("?")[0] + f"/cas/sha256/{snapshot.digest[7:9]}/{snapshot.digest[7:]}"
        assert requests(s3_server, "GET", key) == len(hosts), (hosts, key)
    mesh.check_clean()


def test_a_stopped_owners_late_artifacts_never_become_the_result(
    make_mesh: MakeMesh, etcd: EtcdServer, tmp_path: Path
) -> None:
    """h1 is SIGSTOPped while its worker runs an episode: the episode goes to h2 and is committed
    there; h1's worker finishes meanwhile and uploads under h1's claim token, which no committed
    record names; h1's commit is fenced off when it resumes."""
    mesh = make_mesh(etcd.url)
    victim = mesh.start_agent("h1", capacity=1)
    first = tmp_path / "first-run"  # the first attempt to start makes it: "first", the others "later"
    script = (
        f'if mkdir {first} 2>/dev/null; then w=first; else w=later; fi; sleep 4; echo $w > "$OPENRANGE_ARTIFACTS/who"'
    )
    slow = ["sh", "-c", script]
    (episode,) = mesh.client.submit([{"runtime": "command", "params": {"argv": slow}}])
    wait_until(lambda: mesh.running_on("h1") == [episode], 10, what="h1 to run it")
    mesh.start_agent("h2", capacity=1)
    victim.pause()
    try:
        record = mesh.wait_finished([episode], timeout=40)[episode]
        time.sleep(1.0)  # h1's worker has finished and uploaded by now (4 s after it started)
    finally:
        victim.resume()
    assert record.state is State.SUCCEEDED
    final = record.history[-1]
    assert final.host == "h2" and final.n == 2, record.history
    client = MeshClient(mesh.registry, namespace=mesh.namespace)
    assert [a.name for a in client.artifacts(episode)] == ["who"]
    assert read(client, episode, "who") == b"later\n", "the committed attempt's own file"
    stale = client.store.list(f"episodes/{episode}/attempt-1/")
    late = [p for p in stale if "/artifacts-" in p]
    assert late and client.store.get_bytes(late[0]) == b"first\n", "h1's worker did upload, late, under its token"
    assert all(f"artifacts-{final.token}/" not in p for p in stale)
    time.sleep(0.5)
    assert client.get(episode).history[-1].token == final.token, "h1's late commit was fenced off"


def test_an_agent_with_another_store_refuses_to_start(make_mesh: MakeMesh, etcd: EtcdServer, tmp_path: Path) -> None:
    mesh = make_mesh(etcd.url)
    mesh.start_agent("h1")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "openrange_mesh.cli.agent",
            "--etcd",
            etcd.url,
            "--namespace",
            mesh.namespace,
            "--host-id",
            "h2",
            "--store",
            str(tmp_path / "elsewhere"),
            "--ttl",
            "2",
            "--no-dashboard",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("openrange-agent: this mesh's store is") and str(mesh.store) in last, out.stderr
    assert "h2" not in {h.id for h in mesh.client.catalog.hosts()}
