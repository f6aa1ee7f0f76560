"""Issue 11, defect 8, through a real agent: a command episode whose grandchild calls setsid left
two processes behind after its cancel and after its timeout."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from openrange_mesh.model import State

from .etcdkit import EtcdServer
from .helpers import wait_until
from .meshkit import Mesh

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reaper needs Linux")

ESCAPING = {"runtime": "command", "params": {"cmd": "sh -c 'setsid sleep 300 & sleep 300'"}}


def test_a_setsid_grandchild_goes_with_its_cancelled_or_timed_out_episode(etcd: EtcdServer, tmp_path: Path) -> None:
    mesh = Mesh(etcd.url, tmp_path / "mesh")
    try:
        mesh.start(1)
        cancelled, timed_out = mesh.submit([ESCAPING, {**ESCAPING, "timeout": 3}])

        def sleeps() -> list[int]:
            return [pid for pid, cmdline in mesh.orphans() if cmdline == "sleep 300"]

        wait_until(lambda: len(sleeps()) == 4, 20, what="both episodes' two sleeps")
        assert mesh.client.cancel([cancelled]) == {cancelled: "requested"}
        records = mesh.wait_finished([cancelled, timed_out], timeout=20)
        assert records[cancelled].state is State.CANCELLED, records[cancelled]
        assert records[timed_out].state is State.FAILED and "timed out" in (records[timed_out].error or "")
        try:
            wait_until(lambda: not sleeps(), 5, what="the episodes' sleeps to go")
        except AssertionError:
            raise AssertionError(f"processes outlived their episodes: {sleeps()}") from None
    finally:
        print(mesh.report())  # pytest shows it when the test failed
        mesh.close()
