"""``openrange-mesh up``: a whole local mesh as one process tree, run for real and torn down without orphans."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from openrange_mesh.cli.main import cli

from .etcdkit import free_port
from .helpers import wait_until

UP = [sys.executable, "-m", "openrange_mesh.cli.main"]


def children_of(stderr: str) -> list[int]:
    """The pids ``up`` reports for etcd and each agent ("... (pid N) ...")."""
    return [int(pid) for pid in re.findall(r"\(pid (\d+)\)", stderr)]


def is_gone(pid: int) -> bool:
    """Neither the process nor anything in its process group (workers, forkserver) is left."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def assert_no_orphans(stderr: str, expected: int) -> None:
    pids = children_of(stderr)
    assert len(pids) == expected, stderr
    wait_until(lambda: all(is_gone(p) for p in pids), timeout=5, what=f"children {pids} to be gone")


@dataclass
class UpEnv:
    env: dict[str, str]
    tmp: Path  # up's TMPDIR: its temp dir lands here, so a test can see it removed


@pytest.fixture
def up_env() -> Iterator[UpEnv]:
    # Short, not under pytest's long tmp_path: agents' forkservers put AF_UNIX sockets (108-byte paths) in TMPDIR.
    tmp = Path(tempfile.mkdtemp(prefix="orm-up-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENRANGE_")}
    env["TMPDIR"] = str(tmp)
    yield UpEnv(env, tmp)
    shutil.rmtree(tmp, ignore_errors=True)


def test_up_demo_exit_after_demo(up_env: UpEnv) -> None:
    result = subprocess.run(
        [*UP, "up", "--demo", "6", "--agents", "2", "--exit-after-demo"],
        capture_output=True,
        text=True,
        timeout=90,
        env=up_env.env,
    )
    assert result.returncode == 0, result.stderr
    exports = dict(re.findall(r"^export (\w+)=(\S+)$", result.stdout, flags=re.M))
    assert re.fullmatch(r"127\.0\.0\.1:\d+", exports["OPENRANGE_ETCD"])
    assert "6/6 done (6 succeeded, 0 failed)" in result.stderr
    assert_no_orphans(result.stderr, expected=3)
    assert not Path(exports["OPENRANGE_STORE"]).exists()  # temp dir removed (no --keep)
    assert not list(up_env.tmp.glob("openrange-up-*"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_up_stops_on_a_signal_without_orphans(sig: signal.Signals, up_env: UpEnv, tmp_path: Path) -> None:
    """Ctrl-C and SIGTERM tear down in order (exit 0); SIGKILL leaves the kernel to kill the children
    (PR_SET_PDEATHSIG), and the agents' workers follow their agent."""
    port = free_port()
    stderr_path = tmp_path / "up.stderr"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [*UP, "--namespace", "upns", "up", "--agents", "2", "--port", str(port), "--ttl", "2", "--keep"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=up_env.env,
        )
    try:
        assert process.stdout is not None
        exports = {}
        deadline = time.monotonic() + 60
        while "OPENRANGE_NAMESPACE" not in exports and time.monotonic() < deadline:
            match = re.match(r"^export (\w+)=(\S+)$", process.stdout.readline())
            if match:
                exports[match[1]] = match[2]
        assert exports["OPENRANGE_ETCD"] == f"127.0.0.1:{port}" and exports["OPENRANGE_NAMESPACE"] == "upns"

        # Other shells use every command through the exports.
        runner = CliRunner(env=exports)
        hosts = json.loads(runner.invoke(cli, ["hosts", "-o", "json"]).stdout)
        assert sorted(h["id"] for h in hosts) == ["local-1", "local-2"]
        submitted = runner.invoke(cli, ["submit", "--runtime", "sleep", "-p", "seconds=0.1", "-n", "2"])
        waited = runner.invoke(cli, ["wait", "-"], input=submitted.stdout)
        assert waited.exit_code == 0, waited.output

        process.send_signal(sig)
        assert process.wait(timeout=30) == (-signal.SIGKILL if sig is signal.SIGKILL else 0)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = stderr_path.read_text()
    assert_no_orphans(log, expected=3)
    if sig is not signal.SIGKILL:
        assert "stopped" in log
        kept = Path(exports["OPENRANGE_STORE"]).parent
        assert (kept / "agent-local-1.log").exists() and (kept / "etcd").is_dir()  # --keep kept it
