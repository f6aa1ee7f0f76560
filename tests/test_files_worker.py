"""An episode's files in real worker processes: its snapshot read through the host's cache (a
path, or bytes for runtimes that take bytes), its artifacts uploaded under its claim's token."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from openrange_mesh.model import EpisodeSpec
from openrange_mesh.store import open_store
from openrange_mesh.store.cas import put_snapshot
from openrange_mesh.store.layout import artifact_path
from openrange_mesh.worker.child import Done, WorkItem
from openrange_mesh.worker.files import ARTIFACTS_ENV, MAX_ARTIFACTS, EpisodeFault, Outputs
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


@pytest.mark.parametrize("watch", [True, False], ids=["inotify", "scan"])
def test_a_link_put_in_place_of_the_directory_is_never_followed(tmp_path: Path, watch: bool) -> None:
    """An episode that swaps its artifacts directory for a link to a directory of its host
    fails: nothing there is uploaded or removed, and the next episode gets a directory again."""
    store = open_store(str(tmp_path / "store"))
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "precious.txt").write_text("keep")
    (victim / "sub" / "more.txt").write_text("keep")
    outputs = Outputs(watch=watch)
    try:
        outputs.directory.rmdir()
        outputs.directory.symlink_to(victim)
        with pytest.raises(EpisodeFault, match="replaced by a link or a file"):
            outputs.upload(store, "e", 1, 7)
        assert outputs.directory.is_dir() and not outputs.directory.is_symlink()
        assert list(outputs.directory.iterdir()) == [] and os.environ[ARTIFACTS_ENV] == str(outputs.directory)
        (outputs.directory / "mine.txt").write_text("m")
        assert [a["name"] for a in outputs.upload(store, "e", 2, 7)] == ["mine.txt"]
    finally:
        outputs.close()
    assert sorted(p.relative_to(victim).as_posix() for p in victim.rglob("*")) == [
        "precious.txt",
        "sub",
        "sub/more.txt",
    ]
    assert [p for p in store.list("episodes/") if "precious" in p or "more" in p] == []


CLOSED = textwrap.dedent(
    """
    import json, os, sys
    from openrange_mesh.store import open_store
    from openrange_mesh.worker.files import Outputs
    store, outputs, seen = open_store(sys.argv[1]), Outputs(), []
    d = outputs.directory
    (d / "keep").mkdir()
    (d / "keep" / "of-a.txt").write_text("a")
    os.chmod(d / "keep", 0o500)  # episode A: a subdirectory it cannot empty,
    (d / "a.txt").write_text("a")
    os.chmod(d, 0o300)  # and a directory it cannot list
    seen.append([x["name"] for x in outputs.upload(store, "A", 1, 1)])
    (outputs.directory / "b.txt").write_text("b")  # episode B
    seen.append([x["name"] for x in outputs.upload(store, "B", 1, 2)])
    outputs.directory.rmdir()
    outputs.directory.write_text("not a directory")  # episode C: a file in its place
    try:
        outputs.upload(store, "C", 1, 3)
    except Exception as exc:
        seen.append(f"{type(exc).__name__}: {exc}")
    (outputs.directory / "d.txt").write_text("d")  # episode D
    seen.append([x["name"] for x in outputs.upload(store, "D", 1, 4)])
    outputs.close()
    print(json.dumps(seen))
    """
)


def test_an_episode_that_closes_or_replaces_its_directory_leaves_the_next_one_nothing(tmp_path: Path) -> None:
    """What an episode does to its artifacts directory's permissions, or a file put in its
    place, neither raises past the worker (an OSError there had ended it) nor hands this
    episode's files to the next. Run without root's capabilities, which ignore permissions."""
    drop = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv(1) to drop root's capabilities")
        drop = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [*drop, sys.executable, "-c", CLOSED, str(tmp_path / "store")]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [
        ["a.txt", "keep/of-a.txt"],
        ["b.txt"],
        "EpisodeFault: its artifacts directory was replaced by a link or a file: nothing was uploaded",
        ["d.txt"],
    ]


def test_what_an_episode_left_running_writes_is_nobodys_artifact(tmp_path: Path) -> None:
    """A command episode leaves a detached process writing into its artifacts directory: it
    is stopped before the directory is read, so the next episode lists only its own files."""
    daemon = "setsid sh -c 'while :; do echo tick >> $OPENRANGE_ARTIFACTS/daemon.log; done' &"  # makes it again at once
    first = f'sh -c "{daemon} echo a > $OPENRANGE_ARTIFACTS/a.txt; sleep 0.1"'
    second = "sh -c 'echo b > $OPENRANGE_ARTIFACTS/b.txt'"
    pool = WorkerPool(1, str(tmp_path / "store"), cache=(str(tmp_path / "cache"), 2**30))
    pool.start()
    try:
        pool.dispatch([WorkItem("e1", 1, EpisodeSpec(runtime="command", params={"cmd": first}), token=1)])
        (one,) = results(pool, 1)
        wait_until(lambda: pool.wait(0.05) or pool.idle() == 1, 10, what="the worker free")
        pool.dispatch([WorkItem("e2", 1, EpisodeSpec(runtime="command", params={"cmd": second}), token=2)])
        (two,) = results(pool, 1)
    finally:
        pool.close()
    assert one.kind == two.kind == "succeeded", (one, two)
    assert "a.txt" in {a["name"] for a in one.artifacts or []}
    assert [a["name"] for a in two.artifacts or []] == ["b.txt"]


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
