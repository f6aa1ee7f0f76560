"""An episode's files in real worker processes: its snapshot read through the host's cache (a
path, or bytes for runtimes that take bytes), its artifacts uploaded under its claim's token."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from openrange_mesh.model import EpisodeSpec
from openrange_mesh.store import open_store
from openrange_mesh.store.cas import put_snapshot
from openrange_mesh.store.layout import artifact_path
from openrange_mesh.worker.child import Done, WorkItem
from openrange_mesh.worker.files import MAX_ARTIFACTS, Outputs
from openrange_mesh.worker.pool import WorkerPool

from .helpers import wait_until
from .test_worker import results


def run(tmp_path: Path, item: WorkItem) -> Done:
    pool = WorkerPool(1, str(tmp_path / "store"), cache=(str(tmp_path / "cache"), 2**30))
    pool.start()
    try:
        pool.dispatch([item])
        (done,) = results(pool, 1)
        return done
    finally:
        pool.close()


def test_artifacts_are_uploaded_under_the_claims_token_and_listed(tmp_path: Path) -> None:
    """Two episodes on one worker: each lists only what it wrote (the worker's directory is
    emptied between them), and the directory goes with the worker."""
    before = set(Path(tempfile.gettempdir()).glob("openrange-artifacts-*"))
    first_files = {"video.mp4": "frames", "logs/run.txt": "hello"}
    second_files = {"other.txt": "x"}
    pool = WorkerPool(1, str(tmp_path / "store"), cache=(str(tmp_path / "cache"), 2**30))
    pool.start()
    try:
        spec = EpisodeSpec(runtime="tests.odd_runtimes:files", params={"files": first_files})
        pool.dispatch([WorkItem("e1", 2, spec, token=4242)])
        (first,) = results(pool, 1)
        wait_until(lambda: pool.wait(0.05) or pool.idle() == 1, 10, what="the worker free")
        spec = EpisodeSpec(runtime="tests.odd_runtimes:files", params={"files": second_files})
        pool.dispatch([WorkItem("e2", 1, spec, token=4243)])
        (second,) = results(pool, 1)
    finally:
        pool.close()
    assert first.kind == second.kind == "succeeded", (first, second)
    assert {a["name"] for a in second.artifacts or []} == set(second_files)
    listed = {a["name"]: a for a in first.artifacts or []}
    assert set(listed) == set(first_files)
    store = open_store(str(tmp_path / "store"))
    for name, text in first_files.items():
        data = store.get_bytes(artifact_path("e1", 2, 4242, name))
        assert data == text.encode()
        assert listed[name]["size"] == len(data)
        assert listed[name]["sha256"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert set(Path(tempfile.gettempdir()).glob("openrange-artifacts-*")) <= before, "gone with the worker"


@pytest.mark.parametrize("watch", [True, False], ids=["inotify", "scan"])
def test_outputs_find_what_an_episode_left_however_it_got_there(tmp_path: Path, watch: bool) -> None:
    """Files written in a new subdirectory, renamed in from elsewhere, or linked in are
    uploaded; a quiet episode finds nothing; what it left is gone before the next one; a
    directory removed, or moved away and made again, by an episode is made (and watched) again."""
    store = open_store(str(tmp_path / "store"))
    outputs = Outputs(watch=watch)
    assert (outputs._watch is not None) == (watch and sys.platform.startswith("linux"))
    try:
        assert outputs.upload(store, "e", 1, 7) == []
        (outputs.directory / "deep" / "er").mkdir(parents=True)
        (outputs.directory / "deep" / "er" / "a.txt").write_text("a")
        assert [a["name"] for a in outputs.upload(store, "e", 1, 7)] == ["deep/er/a.txt"]
        assert outputs.upload(store, "e", 2, 7) == [] and list(outputs.directory.iterdir()) == []
        (tmp_path / "made-elsewhere.txt").write_text("b")
        (tmp_path / "made-elsewhere.txt").rename(outputs.directory / "moved.txt")
        assert [a["name"] for a in outputs.upload(store, "e", 3, 7)] == ["moved.txt"]
        (tmp_path / "linked.txt").write_text("c")
        os.link(tmp_path / "linked.txt", outputs.directory / "linked.txt")
        assert [a["name"] for a in outputs.upload(store, "e", 4, 7)] == ["linked.txt"]
        assert outputs.upload(store, "e", 5, 7) == []
        shutil.rmtree(outputs.directory)  # an episode that removes the directory takes no worker down
        assert outputs.upload(store, "e", 6, 7) == [] and outputs.directory.is_dir()
        (outputs.directory / "after.txt").write_text("d")
        assert [a["name"] for a in outputs.upload(store, "e", 7, 7)] == ["after.txt"]
        outputs.directory.rename(tmp_path / "moved-away")  # and one that moves it and makes another
        outputs.directory.mkdir()
        (outputs.directory / "new.txt").write_text("e")
        assert [a["name"] for a in outputs.upload(store, "e", 8, 7)] == ["new.txt"]
        (outputs.directory / "later.txt").write_text("f")  # seen by the watch made again
        assert [a["name"] for a in outputs.upload(store, "e", 9, 7)] == ["later.txt"]
    finally:
        outputs.close()
    assert store.get_bytes(artifact_path("e", 3, 7, "moved.txt")) == b"b"


def test_too_many_artifacts_fail_the_episode_with_the_reason(tmp_path: Path) -> None:
    files = {f"f{i}.txt": "x" for i in range(MAX_ARTIFACTS + 1)}
    spec = EpisodeSpec(runtime="tests.odd_runtimes:files", params={"files": files})
    done = run(tmp_path, WorkItem("e1", 1, spec, token=7))
    assert done.kind == "failed" and "pack them" in (done.error or ""), done


def test_a_snapshot_reaches_the_runtime_as_a_path_through_the_cache(tmp_path: Path) -> None:
    world = tmp_path / "world"
    (world / "maps").mkdir(parents=True)
    (world / "maps" / "a.txt").write_text("A")
    (world / "rules.txt").write_text("R")
    store = open_store(str(tmp_path / "store"))
    snapshot = put_snapshot(store, world)
    spec = EpisodeSpec(runtime="tests.odd_runtimes:files", snapshot=snapshot.digest)
    done = run(tmp_path, WorkItem("e1", 1, spec, token=1))
    assert done.kind == "succeeded", done
    assert done.result == {"snapshot": ["maps/a.txt", "rules.txt"], "env": True}
    assert list((tmp_path / "cache" / "data").iterdir()), "kept in the host's cache"


def test_a_runtime_that_takes_bytes_gets_a_file_snapshots_bytes(tmp_path: Path) -> None:
    """The gymnasium runtime restores from a checkpoint's bytes: a checkpoint stored as a snapshot."""
    from openrange_mesh.runtimes import load_runtime

    handle = load_runtime("gymnasium").realize({"env": "CartPole-v1"}, seed=3)
    handle.reset()
    handle.advance(0.0)
    saved = handle.checkpoint()
    handle.stop()
    (tmp_path / "ckpt").write_bytes(saved)
    store = open_store(str(tmp_path / "store"))
    snapshot = put_snapshot(store, tmp_path / "ckpt")
    spec = EpisodeSpec(runtime="gymnasium", params={"env": "CartPole-v1"}, snapshot=snapshot.digest)
    done = run(tmp_path, WorkItem("e1", 1, spec, token=1))
    assert done.kind == "succeeded" and done.result["steps"] >= 1, done


def test_a_missing_snapshot_fails_the_episode_and_an_alias_that_was_not_resolved_too(tmp_path: Path) -> None:
    missing = "sha256:" + "0" * 64
    done = run(tmp_path, WorkItem("e1", 1, EpisodeSpec(runtime="sleep", snapshot=missing), token=1))
    assert done.kind == "failed" and "not found" in (done.error or ""), done
    done = run(tmp_path, WorkItem("e2", 1, EpisodeSpec(runtime="sleep", snapshot="world-v3"), token=1))
    assert done.kind == "failed" and "not a digest" in (done.error or ""), done
