"""One misconfigured host among healthy ones loses nothing (issue 11, part 1).

Agents are real processes on a real etcd; stores are real directories and a real S3 endpoint
(moto's server). An agent whose store fails its start check refuses to join; one whose store
breaks while it runs drains itself, says why, and claims again once its store works; the
episodes of the mesh all succeed exactly once, and no infrastructure failure spends an attempt.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from openrange_mesh.model import EpisodeSpec, HostInfo
from openrange_mesh.store.events import NOT_STORED
from openrange_mesh.worker.child import WorkItem
from openrange_mesh.worker.pool import WorkerPool

from .etcdkit import EtcdServer
from .helpers import wait_until
from .meshkit import MakeMesh, Mesh
from .s3kit import S3Server, free_port, start_s3, use_test_env
from .test_worker import results


def broken_stores(tmp_path: Path, s3: S3Server) -> dict[str, str]:
    (tmp_path / "a-file").write_text("not a directory")
    return {
        "missing bucket": f"s3://missing-{uuid.uuid4().hex[:8]}/x?endpoint_url={s3.endpoint_url}",
        "unreachable endpoint": f"s3://bucket/x?endpoint_url=http://127.0.0.1:{free_port()}",
        "unwritable path": str(tmp_path / "a-file" / "store"),
    }


@pytest.mark.parametrize("case", ["missing bucket", "unreachable endpoint", "unwritable path"])
def test_an_agent_whose_store_fails_its_check_refuses_to_join(
    make_mesh: MakeMesh, etcd: EtcdServer, s3_server: S3Server, tmp_path: Path, case: str
) -> None:
    mesh = make_mesh(etcd.url)
    agent = mesh.start_agent("bad", wait=False, store=broken_stores(tmp_path, s3_server)[case])
    assert agent.wait(30) == 1
    lines = [line for line in agent.log_tail(10).splitlines() if line.startswith("openrange-agent:")]
    assert len(lines) == 1 and "store check failed" in lines[0], agent.log_tail()
    assert "Traceback" not in agent.log_tail(200)
    assert mesh.host_info("bad") is None  # nothing joined


def test_a_host_whose_store_breaks_drains_itself_and_loses_nothing(make_mesh: MakeMesh, etcd: EtcdServer) -> None:
    """h3 reaches the mesh's one store through a mount point of its own (a link to the shared
    directory: the same store, by its marker); the mount vanishes mid-run. h3 drains itself,
    peers run everything, no attempt is spent on h3's failures; once the mount is back h3
    claims again."""
    mesh = make_mesh(etcd.url)
    mesh.start(2)
    mount = mesh.store.parent / "mount-h3"
    mount.symlink_to(mesh.store)
    mesh.start_agent("h3", store=str(mount))
    ids = mesh.submit_commands(40, 0.3, lines=20)  # events enough to need the store, not the record
    wait_until(lambda: mesh.running_on("h3"), 20, interval=0.02, what="h3 to run episodes")
    mount.unlink()
    mount.write_text("the mount is gone")  # every path under it now fails (not a directory)

    def sick() -> HostInfo | None:
        info = mesh.host_info("h3")
        return info if info is not None and info.draining and info.reason else None

    info = wait_until(sick, 20, what="h3 to drain itself")
    assert "store" in (info.reason or ""), info
    hosts = _cli(etcd, mesh, "hosts")
    assert "(draining: " in hosts and "h3" in hosts, hosts

    records = mesh.wait_finished(ids, timeout=90)
    mesh.check_exactly_once(records)
    for record in records.values():  # h3's failures cost no attempt
        assert all(a.outcome in ("released", "succeeded") for a in record.history), record
    assert mesh.agents["h3"].is_running()

    mount.unlink()
    mount.symlink_to(mesh.store)  # the mount is back: h3 rechecks and claims
    wait_until(lambda: (i := mesh.host_info("h3")) is not None and not i.draining, 30, what="h3 to heal")
    more = mesh.submit_commands(16, 0.3)
    wait_until(lambda: mesh.running_on("h3"), 20, interval=0.02, what="h3 to run episodes again")
    mesh.check_exactly_once(mesh.wait_finished(more, timeout=60))
    mesh.check_clean()


def test_a_worker_that_cannot_start_gives_its_work_back_and_is_retried_later() -> None:
    """The pool's half of it, with real worker processes: a worker whose store cannot be opened
    says why, hands back what it was given (released: no attempt spent) and is started again
    only after a backoff, not in a loop."""
    faults: list[str] = []
    pool = WorkerPool(1, f"s3://bucket/x?endpoint_url=http://127.0.0.1:{free_port()}", on_fault=faults.append)
    pool.start()
    try:
        pool.dispatch([WorkItem("e1", 1, EpisodeSpec(runtime="sleep", params={"seconds": 0}))])
        (done,) = results(pool, 1)
        assert done.kind == "released" and "could not start" in (done.error or ""), done
        assert len(faults) == 1 and "cannot open store" in faults[0], faults
        assert pool.idle() == 0 and pool.started() == 0  # waiting out its backoff
        wait_until(lambda: pool.wait(0.1) or len(faults) >= 2, 15, what="the worker to be tried again")
        time.sleep(0.2)
        assert len(faults) <= 3, f"restarted in a loop: {faults}"
    finally:
        pool.close()


def _cli(etcd: EtcdServer, mesh: Mesh, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "openrange_mesh.cli.main", "--etcd", etcd.url, "--namespace", mesh.namespace, *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_events_the_store_refused_are_said_not_stored_in_the_result() -> None:
    """A store that refuses a short episode's events fails no episode, but its result says the
    events were not stored instead of naming a file that will never be written (issue 14)."""
    s3 = start_s3()
    faults: list[str] = []
    try:
        with pytest.MonkeyPatch.context() as mp:
            use_test_env(mp)
            bucket = s3.make_bucket(f"ev-{uuid.uuid4().hex[:8]}")
            pool = WorkerPool(1, f"s3://{bucket}/store?endpoint_url={s3.endpoint_url}", on_fault=faults.append)
            pool.start()
            try:
                spec = EpisodeSpec(runtime="sleep", params={"seconds": 0, "events": 20})  # more than a record holds
                pool.dispatch([WorkItem("kept", 1, spec)])
                (kept,) = results(pool, 1)
                s3.reset()  # the bucket is gone: the worker's next write is refused
                wait_until(lambda: pool.wait(0.05) or pool.idle() == 1, 10, what="the worker free")
                pool.dispatch([WorkItem("refused", 1, spec)])
                (refused,) = results(pool, 1)
            finally:
                pool.close()
    finally:
        s3.stop()
    assert kept.kind == refused.kind == "succeeded"
    assert kept.events == "kept.1" and refused.events == NOT_STORED
    assert any("store refused events" in f for f in faults), faults
