"""Store collection (ledger/storage_gc.py) on real records and a real directory store: only
what no record needs, and only once unwritten for the grace period."""

from __future__ import annotations

import io
import os
import time
import uuid
from pathlib import Path

from openrange_mesh.client import MeshClient, snapshots
from openrange_mesh.keys import Keys
from openrange_mesh.ledger import storage_gc
from openrange_mesh.ledger.records import finish_attempt
from openrange_mesh.model import State
from openrange_mesh.registry import Registry
from openrange_mesh.store import open_store
from openrange_mesh.store.layout import artifact_path, batch_events_path, events_path, shared_events_path

HOUR = 3600.0


def age(root: Path, path: str, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(root / path, (then, then))


def test_only_what_no_record_needs_goes_and_only_after_the_grace(registry: Registry, tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = open_store(str(root))
    keys = Keys(f"g{uuid.uuid4().hex[:8]}")
    client = MeshClient(registry, namespace=keys.namespace, store=store)
    kept_blob = client.put_snapshot(io.BytesIO(b"named world"), name="world")
    pending_blob = client.put_snapshot(io.BytesIO(b"used by a pending episode"))
    lone_blob = client.put_snapshot(io.BytesIO(b"nobody's"))
    young_blob = client.put_snapshot(io.BytesIO(b"just uploaded"))
    (pending,) = client.submit([{"runtime": "sleep", "snapshot": pending_blob.digest}])
    (done,) = client.submit([{"runtime": "sleep"}])
    lease = registry.grant(10)
    entry = next(e for e in client.ledger.queue() if done in e.ids)
    claim, running = client.ledger.claim("h1", lease, entry, client.ledger.read([done]))  # type: ignore[misc]
    final = finish_attempt(running[0], State.SUCCEEDED, time.time(), None, {}, token=claim.token)
    assert client.ledger.commit(claim, [final], last=True)

    paths = {
        "kept: the committed attempt's events": events_path(done, 1, 0),
        "kept: the committed attempt's artifact": artifact_path(done, 1, claim.token, "a.txt"),
        "gone: a stale owner's artifact": artifact_path(done, 1, claim.token + 1000, "a.txt"),
        "gone: a collected episode's events": events_path("0000000001-0000-gone", 1, 0),
        "gone: a batch nobody names": batch_events_path("0000000001-8000-gone.1", 0),
        "gone: a shared file nobody names": shared_events_path("0000000001-0000-gone.1"),
        "kept: a young orphan": events_path("0000000002-0000-young", 1, 0),
        "kept: the mesh's report": "reports/latest.json",
    }
    for path in paths.values():
        store.put_bytes(path, b"x")
    for what, path in paths.items():
        if "young" not in what:
            age(root, path, 2 * HOUR)
    for blob in (kept_blob, pending_blob, lone_blob):
        age(root, f"cas/sha256/{blob.digest[7:9]}/{blob.digest[7:]}", 2 * HOUR)

    names = [n.digest for n in snapshots.names(registry, keys)]
    need = storage_gc.needed(registry, keys, names)
    would = storage_gc.collect(store, need, HOUR, dry_run=True)
    assert store.exists(paths["gone: a stale owner's artifact"]), "a dry run deletes nothing"
    gone = storage_gc.collect(store, need, HOUR)
    assert gone == would == {"episodes": 1, "artifacts": 1, "batches": 1, "shared": 1, "snapshots": 1}
    for what, path in paths.items():
        assert store.exists(path) == what.startswith("kept"), what
    left = {p.rpartition("/")[2] for p in store.list("cas/")}
    assert left == {b.digest[7:] for b in (kept_blob, pending_blob, young_blob)}
    assert client.get(pending).state is State.PENDING


def test_the_leaders_collector_runs_while_it_leads_only(registry: Registry, tmp_path: Path) -> None:
    """The agent's collector thread: every interval, only while its agent leads."""
    from openrange_mesh.agent.collector import Collector

    root = tmp_path / "store"
    store = open_store(str(root))
    keys = Keys(f"g{uuid.uuid4().hex[:8]}")
    orphan = events_path("0000000001-0000-gone", 1, 0)
    store.put_bytes(orphan, b"x")
    age(root, orphan, 2 * HOUR)
    leading = [False]
    collector = Collector(registry, keys, store, lambda: leading[0], 0.05, HOUR)
    collector.start()
    try:
        time.sleep(0.3)
        assert store.exists(orphan), "a follower collects nothing"
        leading[0] = True
        deadline = time.monotonic() + 5
        while store.exists(orphan) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not store.exists(orphan), "the leader collects"
    finally:
        collector.stop()
