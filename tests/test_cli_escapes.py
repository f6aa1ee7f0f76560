"""Terminal controls and rich markup from an episode never reach the terminal raw: a real agent
runs a command episode that prints them and fails, and every command that shows it runs as a
real ``openrange-mesh`` process, on a pipe and as if on a terminal (FORCE_COLOR)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from openrange_mesh.keys import Keys
from openrange_mesh.ledger.catalog import Catalog
from openrange_mesh.model import Attempt, EpisodeRecord, EpisodeSpec, State
from openrange_mesh.registry import Put, open_registry

from .etcdkit import EtcdServer
from .helpers import wait_until
from .test_cli import AGENT_BOOT, new_namespace

# what an episode may print: a screen clear, a window title (OSC ... BEL), a C1 CSI, a bidi
# override, rich markup and an emoji code
EVIL = "\x1b[2J\x1b]0;pwned\x07 \x9b31m \u202eevil [bold red]x[/] :x:"
RAW = [b"\x1b[2J", b"\x1b]", b"\x07", "\x9b".encode(), "\u202e".encode()]  # never on any output
SCRIPT = f"""
import json, sys
print(json.dumps({{"type": {EVIL!r}, "note": {EVIL!r}}}))
print({EVIL!r})
print('{{"type": "score", "values": [NaN, Infinity, 0.5]}}')  # json.loads takes it; JSON does not
sys.stderr.write({EVIL!r} + "\\n")
sys.exit(3)
"""


@dataclass
class Mesh:
    etcd: EtcdServer
    namespace: str
    store: Path

    def run(self, *args: str, color: bool = False) -> subprocess.CompletedProcess[bytes]:
        env = {**os.environ, "OPENRANGE_STORE": str(self.store), "COLUMNS": "200"}
        env.pop("NO_COLOR", None)
        if color:
            env["FORCE_COLOR"] = "1"  # rich renders as on a terminal: styles, no fast path
        command = [sys.executable, "-m", "openrange_mesh.cli.main", "--etcd", self.etcd.endpoint]
        return subprocess.run(
            [*command, "--namespace", self.namespace, *args], capture_output=True, env=env, timeout=60
        )


@pytest.fixture(scope="module")
def mesh(etcd: EtcdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """One real agent on a namespace of its own."""
    root = tmp_path_factory.mktemp("escapes")
    mesh = Mesh(etcd, new_namespace(), root / "store")
    args = ["--etcd", etcd.endpoint, "--namespace", mesh.namespace, "--host-id", "h1", "--ttl", "2", "--no-dashboard"]
    with (root / "agent.log").open("wb") as log:
        agent = subprocess.Popen(
            [sys.executable, "-c", AGENT_BOOT, *args, "--capacity", "1", "--store", str(mesh.store)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    registry = open_registry(etcd.url, retry_timeout=5.0)
    try:
        catalog = Catalog(registry, Keys(mesh.namespace))
        wait_until(lambda: len(catalog.hosts()) == 1, timeout=60, what="the agent to join")
        yield mesh
    finally:
        registry.close()
        agent.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            agent.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agent.pid, signal.SIGKILL)
        agent.wait()


def assert_safe(result: subprocess.CompletedProcess[bytes], *visible: str) -> str:
    """No raw control on stdout or stderr; each of ``visible`` shows in stdout. Returns stdout."""
    for stream in (result.stdout, result.stderr):
        for raw in RAW:
            assert raw not in stream, (raw, stream[:2000])
    out = result.stdout.decode()
    for text in visible:
        assert text in out, (text, out[:2000])
    return out


def test_episode_text_is_escaped_everywhere(mesh: Mesh, tmp_path: Path) -> None:
    script = tmp_path / "evil.py"
    script.write_text(SCRIPT)
    submitted = mesh.run("submit", "--runtime", "command", "-p", f"argv={json.dumps([sys.executable, str(script)])}")
    assert submitted.returncode == 0, submitted.stderr
    episode = submitted.stdout.decode().strip()
    waited = mesh.run("wait", episode)
    assert waited.returncode == 1
    assert_safe(waited, "exit status 3: \\x1b[2J\\x1b]0;pwned\\x07")

    escaped = "\\x1b[2J\\x1b]0;pwned\\x07 \\x9b31m \\u202eevil [bold red]x[/] :x:"
    for color in (False, True):
        assert_safe(mesh.run("show", episode, color=color), f"exit status 3: {escaped}")
        assert_safe(mesh.run("ls", "-o", "wide", color=color), "exit status 3: \\x1b[2J")
        logs = assert_safe(mesh.run("logs", episode, color=color), escaped)
        assert "[bold red]x[/]" in logs and ":x:" in logs  # no markup, no emoji codes

    shown = json.loads(assert_safe(mesh.run("show", episode, "-o", "json")), parse_constant=refuse)
    assert shown["error"] == f"exit status 3: {EVIL}" and shown["result"]["stderr_tail"] == [EVIL]
    (listed,) = json.loads(assert_safe(mesh.run("ls", "-o", "json")))
    assert listed["error"] == shown["error"]
    lines = assert_safe(mesh.run("logs", episode, "-o", "json")).splitlines()
    events = [json.loads(line, parse_constant=refuse) for line in lines]
    assert [e["type"] for e in events] == ["reset", EVIL, "log", "score", "terminal"] and events[1]["note"] == EVIL
    assert events[3]["values"] == ["nan", "inf", 0.5]


def refuse(constant: str) -> None:
    raise AssertionError(f"{constant} is not JSON")


def test_a_record_written_by_anyone_is_escaped_too(mesh: Mesh) -> None:
    """Specs are checked at submit, but a record in etcd may have been written by anything."""
    keys, now = Keys(mesh.namespace), time.time()
    record = EpisodeRecord(
        "0000000001-0000-\x1b[2J",
        EpisodeSpec("\x1b]0;t\x07", labels={"k": "\x9b2J"}),
        state=State.FAILED,
        owner=None,
        created_at=now,
        submitter="\u202e",
        error="boom\x07",
        history=(Attempt(1, "h\x1b[2J", now, now, "failed", "boom\x07"),),
    )
    registry = open_registry(mesh.etcd.url, retry_timeout=5.0)
    try:
        registry.txn([], [Put(keys.episode(record.id), record.to_bytes())])
    finally:
        registry.close()
    for color in (False, True):
        assert_safe(mesh.run("ls", "-o", "wide", color=color), "0000000001-0000-\\x1b[2J", "\\x1b]0;t\\x07")
        assert_safe(mesh.run("ls", "-o", "ids", color=color), "0000000001-0000-\\x1b[2J")
        # (not with --store: the store's layout refuses such an id as a path component)
        shown = assert_safe(mesh.run("show", record.id, "--store", "", color=color), "\\u202e", "h\\x1b[2J")
        assert "boom\\x07" in shown
    missing = mesh.run("show", "nope\x1b[2J")
    assert missing.returncode == 1 and b"\x1b" not in missing.stderr
