"""Shared fixtures. etcd is a real process (see tests/etcdkit.py for the lookup order)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from openrange_mesh.keys import Keys
from openrange_mesh.ledger.ledger import Ledger
from openrange_mesh.registry import Registry, open_registry
from openrange_mesh.registry.memory import MemoryRegistry

from .etcdkit import EtcdServer, start_etcd
from .meshkit import MakeMesh, Mesh
from .s3kit import S3Server, start_s3, use_test_env


@pytest.fixture(scope="session", autouse=True)
def aws_test_env() -> Iterator[None]:
    """Dummy AWS credentials for the whole session, set before any worker process: workers are
    forked by the forkserver, which keeps the environment it started with, so credentials set
    later by one test would never reach the workers another test's pool forks."""
    with pytest.MonkeyPatch.context() as mp:
        use_test_env(mp)
        yield


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server for the session (tests that wipe it start their own: ``start_s3``)."""
    server = start_s3()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_bucket(s3_server: S3Server) -> str:
    """One bucket for the session; each test gets its own prefix in it."""
    return s3_server.make_bucket(f"contract-{uuid.uuid4().hex[:8]}")


@pytest.fixture(params=["path", "file", "memory", "s3"])
def any_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store of each kind: a plain path, file://, memory:// and s3:// (moto)."""
    unique = f"t-{uuid.uuid4().hex[:12]}"
    if request.param == "path":
        return str(tmp_path / "store")
    if request.param == "file":
        return f"file://{tmp_path}/store"
    if request.param == "memory":
        return f"memory://{unique}"
    server: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/{unique}?endpoint_url={server.endpoint_url}"


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd for the session; tests isolate themselves with a unique key prefix."""
    server = start_etcd(tmp_path_factory.mktemp("etcd"))
    yield server
    server.stop()


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A private etcd for tests that stop, pause or kill it."""
    server = start_etcd(tmp_path / "etcd")
    yield server
    server.stop()


@pytest.fixture
def prefix() -> bytes:
    """A key prefix no other test uses."""
    return f"/t/{uuid.uuid4().hex[:12]}/".encode()


@pytest.fixture(params=["memory", "etcd"])
def registry_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex[:12]}"
    server: EtcdServer = request.getfixturevalue("etcd")
    server.revoke_all_leases()  # nothing of an earlier test may expire into this one's revisions
    return server.url


@pytest.fixture
def registry(registry_url: str) -> Iterator[Registry]:
    reg = open_registry(registry_url, retry_timeout=5.0)
    yield reg
    reg.close()


@pytest.fixture
def compact(registry: Registry, request: pytest.FixtureRequest) -> Callable[[int], None]:
    """Compact the backend's history up to a revision (memory: the method; etcd: the HTTP API)."""
    if isinstance(registry, MemoryRegistry):
        return registry.compact
    compact_etcd: Callable[[int], None] = request.getfixturevalue("etcd").compact
    return compact_etcd


@pytest.fixture
def keys() -> Keys:
    """A namespace of its own for a test that writes through the domain layer."""
    return Keys(f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
def ledger(registry: Registry, keys: Keys) -> Ledger:
    return Ledger(registry, keys)


@pytest.fixture
def make_mesh(tmp_path: Path) -> Iterator[MakeMesh]:
    """Meshes of real agents (tests/meshkit.py): ``make(url, ttl=2)``. Each prints its report
    (pytest shows it when the test failed) and is closed after the test."""
    meshes: list[Mesh] = []

    def make(url: str, ttl: int = 2) -> Mesh:
        mesh = Mesh(url, tmp_path / f"mesh{len(meshes)}", ttl=ttl)
        meshes.append(mesh)
        return mesh

    yield make
    for mesh in meshes:
        print(mesh.report())
        mesh.close()
