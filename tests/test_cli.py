"""``openrange-mesh``: every command run for real (click's runner, or a subprocess) against a real etcd
and, where episodes must run, real ``openrange-agent`` processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from openrange_mesh.cli.main import cli
from openrange_mesh.client.client import MeshClient
from openrange_mesh.keys import Keys
from openrange_mesh.ledger.catalog import Catalog
from openrange_mesh.model import Attempt, EpisodeRecord, EpisodeSpec, State
from openrange_mesh.registry import Put, Registry, open_registry

from .etcdkit import EtcdServer, free_port
from .helpers import wait_until

AGENT_BOOT = "import sys; from openrange_mesh.cli.agent import main; sys.argv[0] = 'openrange-agent'; main()"


def new_namespace() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


@dataclass
class Cli:
    """``openrange-mesh --etcd ... --namespace ...`` for one namespace."""

    endpoint: str
    namespace: str
    store: str = ""

    def __call__(self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Result:
        runner = CliRunner(env={"OPENRANGE_STORE": self.store or None, **(env or {})})
        return runner.invoke(cli, ["--etcd", self.endpoint, "--namespace", self.namespace, *args], input=stdin)

    def ok(self, *args: str, stdin: str | None = None) -> Result:
        result = self(*args, stdin=stdin)
        assert result.exit_code == 0, f"{args}: exit {result.exit_code}\n{result.output}"
        return result


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.fixture
def registry(etcd: EtcdServer) -> Iterator[Registry]:
    reg = open_registry(etcd.url, retry_timeout=5.0)
    yield reg
    reg.close()


@pytest.fixture
def mesh(etcd: EtcdServer) -> Cli:
    """A fresh namespace with no agent: records stay as written."""
    return Cli(etcd.endpoint, new_namespace())


@dataclass
class Agents:
    cli: Cli
    processes: list[subprocess.Popen[bytes]]
    logs: Path


@pytest.fixture(scope="module")
def agents(etcd: EtcdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agents]:
    """Two real agents (ttl 2, capacity 2) on one namespace shared by this module's agent tests."""
    root = tmp_path_factory.mktemp("agents")
    namespace, store = new_namespace(), str(root / "store")
    processes = []
    for host in ("h1", "h2"):
        with (root / f"{host}.log").open("wb") as log:
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        AGENT_BOOT,
                        "--no-dashboard",  # two agents on one machine: not both on the default port
                        "--etcd",
                        etcd.endpoint,
                        "--namespace",
                        namespace,
                        "--host-id",
                        host,
                        "--ttl",
                        "2",
                        "--capacity",
                        "2",
                        "--store",
                        store,
                        "--grace",
                        "1",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    registry = open_registry(etcd.url, retry_timeout=5.0)
    try:
        catalog = Catalog(registry, Keys(namespace))
        wait_until(lambda: len(catalog.hosts()) == 2, timeout=60, what="two agents to join")
        yield Agents(Cli(etcd.endpoint, namespace, store), processes, root)
    finally:
        registry.close()
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # the agent's workers, and the agent if it hung
            process.wait()


def put_records(registry: Registry, namespace: str, *records: EpisodeRecord) -> None:
    keys = Keys(namespace)
    registry.txn([], [Put(keys.episode(r.id), r.to_bytes()) for r in records])


def sample_records() -> list[EpisodeRecord]:
    now = time.time()
    return [
        EpisodeRecord(
            "0000000001-0000-t", EpisodeSpec("sleep", labels={"run": "a"}), created_at=now - 90, submitter="trainer"
        ),
        EpisodeRecord(
            "0000000001-0001-t",
            EpisodeSpec("gymnasium", {"env": "CartPole-v1"}, labels={"run": "b"}),
            state=State.RUNNING,
            attempt=2,
            owner="h1",
            claim="c1",
            created_at=now - 60,
            started_at=now - 5,
            history=(Attempt(1, "h2", now - 50, now - 40, "requeued", "host h2 died"), Attempt(2, "h1", now - 5)),
        ),
        EpisodeRecord(
            "0000000001-0002-t",
            EpisodeSpec("sleep", labels={"run": "a"}),
            state=State.FAILED,
            created_at=now - 30,
            started_at=now - 20,
            finished_at=now - 10,
            error="boom\nsecond line",
            history=(Attempt(1, "h2", now - 20, now - 10, "failed", "boom\nsecond line"),),
            result={"steps": 3},
        ),
    ]


def rows(result: Result) -> list[list[str]]:
    """The table's data rows, split on runs of spaces (none of our cells has two spaces inside)."""
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return [line.split() for line in lines[1:]]


# --- ls ----------------------------------------------------------------------------------------


def test_ls_empty_namespace(mesh: Cli) -> None:
    result = mesh.ok("ls")
    assert result.stdout.split() == ["ID", "STATE", "HOST", "ATTEMPT", "RUNTIME", "AGE", "DURATION", "ERROR"]
    assert json.loads(mesh.ok("ls", "-o", "json").stdout) == []
    assert mesh.ok("ls", "-o", "ids").stdout == ""


def test_ls_lists_filters_and_skips_a_corrupt_record(mesh: Cli, registry: Registry) -> None:
    pending, running, failed = sample_records()
    put_records(registry, mesh.namespace, pending, running, failed)
    registry.txn([], [Put(Keys(mesh.namespace).episode("0000000001-0001-u"), b"\xc1 not msgpack")])

    result = mesh.ok("ls")
    assert [r[0] for r in rows(result)] == [pending.id, running.id, failed.id]
    assert rows(result)[1][:5] == [running.id, "running", "h1", "2", "gymnasium"]
    assert (rows(result)[2][1], rows(result)[2][-1]) == ("failed", "boom")
    assert "second line" not in result.stdout  # ERROR shows the first line only
    assert "skipping corrupt record" in result.stderr and "0000000001-0001-u" in result.stderr

    def ids(*args: str) -> list[str]:
        return mesh.ok("ls", "-o", "ids", *args).stdout.split()

    assert ids("--state", "failed") == [failed.id]
    assert ids("--state", "failed", "--state", "pending") == [pending.id, failed.id]
    assert ids("--host", "h1") == [running.id]
    assert ids("--host", "h2") == [failed.id]
    assert ids("--runtime", "gymnasium") == [running.id]
    assert ids("--label", "run=a") == [pending.id, failed.id]
    assert ids("--label", "run=a", "--state", "pending") == [pending.id]
    assert ids("--limit", "2") == [pending.id, running.id]
    assert ids("--page-size", "1") == ids("--page-size", "0") == [pending.id, running.id, failed.id]

    wide = mesh.ok("ls", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-3:] == ["LABELS", "SUBMITTER", "RESULT"]
    assert "run=a" in wide[1] and "trainer" in wide[1] and '{"steps":3}' in wide[3]


def test_ls_json_fields(mesh: Cli, registry: Registry) -> None:
    records = sample_records()
    put_records(registry, mesh.namespace, *records)
    listed = json.loads(mesh.ok("ls", "-o", "json").stdout)
    assert [item["id"] for item in listed] == [r.id for r in records]
    running, failed = listed[1], listed[2]
    for field in (
        "id",
        "state",
        "host",
        "attempt",
        "runtime",
        "created_at",
        "started_at",
        "finished_at",
        "error",
        "labels",
        "submitter",
        "result",
    ):
        assert field in running, field
    assert (running["state"], running["host"], running["attempt"], running["runtime"]) == (
        "running",
        "h1",
        2,
        "gymnasium",
    )
    assert running["labels"] == {"run": "b"} and running["finished_at"] is None
    assert (failed["error"], failed["result"], failed["host"]) == ("boom\nsecond line", {"steps": 3}, "h2")
    assert listed[0]["submitter"] == "trainer" and listed[0]["host"] is None


def test_ls_watch_follows_changes_and_ctrl_c_exits_0(etcd: EtcdServer, registry: Registry) -> None:
    namespace = new_namespace()
    first, second, _ = sample_records()
    put_records(registry, namespace, first)
    process = subprocess.Popen(
        [
            sys.executable,
            "-X",
            "faulthandler",  # SIGABRT dumps every thread's stack: what a hang was doing
            "-m",
            "openrange_mesh.cli.main",
            "--etcd",
            etcd.endpoint,
            "--namespace",
            namespace,
            "ls",
            "--watch",
            "-o",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a test run started in the background (`cmd &` in a script) has
        # SIGINT ignored, children inherit that, and Python then never raises KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert process.stdout is not None
        assert json.loads(process.stdout.readline())["id"] == first.id
        put_records(registry, namespace, second)
        assert json.loads(process.stdout.readline())["id"] == second.id
        put_records(registry, namespace, first.replace(state=State.CANCELLED, error="cancelled"))
        changed = json.loads(process.stdout.readline())
        assert (changed["id"], changed["state"]) == (first.id, "cancelled")
        with MeshClient(registry, namespace=namespace) as client:  # a batch: one group record
            batch = client.submit([{"runtime": "sleep"}] * 3, batch=3)
        assert [json.loads(process.stdout.readline())["id"] for _ in batch] == batch
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            _, stderr = process.communicate(timeout=10)
            pytest.fail(f"ls --watch still ran 10 s after SIGINT; its threads:\n{stderr[-6000:]}")
        assert code == 0
    finally:
        process.kill()
        process.wait()


# --- hosts -------------------------------------------------------------------------------------


def test_hosts_json_names_the_leader(agents: Agents) -> None:
    def listed() -> list[dict[str, object]] | None:
        hosts: list[dict[str, object]] = json.loads(agents.cli.ok("hosts", "-o", "json").stdout)
        return hosts if sum(bool(h["leader"]) for h in hosts) == 1 else None

    hosts = wait_until(listed, timeout=15, what="a leader")
    assert hosts is not None
    assert sorted(str(h["id"]) for h in hosts) == ["h1", "h2"]
    assert all(h["capacity"] == 2 and h["version"] and h["pid"] for h in hosts)
    # agents refresh every loop_wait (ttl 2 / 8): a live host heartbeated within its ttl
    assert all(isinstance(h["heartbeat_age_s"], int) and 0 <= h["heartbeat_age_s"] <= 2 for h in hosts)
    leader = next(h["id"] for h in hosts if h["leader"])
    table = rows(agents.cli.ok("hosts"))
    assert {r[0]: r[1] for r in table}[str(leader)] == "yes"


def test_hosts_with_no_agent(mesh: Cli) -> None:
    result = mesh.ok("hosts", "-o", "json")
    assert json.loads(result.stdout) == []
    assert "no leader" in mesh.ok("hosts").stderr


# --- submit ------------------------------------------------------------------------------------


def test_submit_params_count_seed_and_options(mesh: Cli, registry: Registry) -> None:
    result = mesh.ok(
        "submit",
        "--runtime",
        "sleep",
        "-p",
        "seconds=0.5",
        "-p",
        "mode=ok",
        "-p",
        'result={"a": [1]}',
        "--count",
        "3",
        "--seed",
        "10",
        "--label",
        "run=x",
        "--timeout",
        "5",
        "--max-attempts",
        "2",
        "--batch",
        "2",
    )
    ids = result.stdout.split()
    assert len(ids) == 3
    catalog = Catalog(registry, Keys(mesh.namespace))
    specs = [catalog.get(i).spec for i in ids]
    assert [s.seed for s in specs] == [10, 11, 12]
    assert specs[0].params == {"seconds": 0.5, "mode": "ok", "result": {"a": [1]}}
    assert (specs[0].labels, specs[0].timeout, specs[0].max_attempts, specs[0].batch) == ({"run": "x"}, 5, 2, 2)
    assert all(catalog.get(i).state is State.PENDING for i in ids)

    as_json = json.loads(mesh.ok("submit", "--runtime", "sleep", "-o", "json").stdout)
    assert isinstance(as_json, list) and len(as_json) == 1 and catalog.get(as_json[0]).spec.seed is None


def test_submit_idempotency_key_returns_the_first_episode(mesh: Cli) -> None:
    first = mesh.ok("submit", "--runtime", "sleep", "--idempotency-key", "k1").stdout.strip()
    again = mesh.ok("submit", "--runtime", "sleep", "--idempotency-key", "k1").stdout.strip()
    assert first == again
    assert mesh("submit", "--runtime", "sleep", "--idempotency-key", "k2", "--count", "2").exit_code == 2


def test_submit_file_with_a_bad_line_submits_nothing(mesh: Cli, tmp_path: Path) -> None:
    good = '{"runtime": "sleep", "params": {"seconds": 0}, "seed": 1}'
    path = tmp_path / "specs.jsonl"
    path.write_text(f"{good}\n\n# a comment\n{good}\n" + '{"runtime": "nope"}\n')
    result = mesh("submit", "--file", str(path))
    assert result.exit_code == 1
    assert error_lines(result) == [
        f"openrange-mesh: invalid spec: {path} line 5: runtime: unknown runtime 'nope' "
        "(known: command, gymnasium, sleep)"
    ]
    path.write_text(f"{good}\nnot json\n")
    result = mesh("submit", "--file", str(path))
    assert result.exit_code == 1 and "line 2: not JSON" in result.stderr and len(error_lines(result)) == 1
    path.write_text(f'{good}\n{{"runtime": "sleep", "params": {{"seconds": -1}}}}\n')
    result = mesh("submit", "--file", str(path))
    assert result.exit_code == 1 and "line 2: params" in result.stderr
    assert mesh.ok("ls", "-o", "ids").stdout == ""  # nothing was submitted

    path.write_text(f"{good}\n{good}\n")
    ids = mesh.ok("submit", "--file", str(path)).stdout.split()
    assert len(ids) == 2 and mesh.ok("ls", "-o", "ids").stdout.split() == ids
    from_stdin = mesh.ok("submit", "--file", "-", stdin=good + "\n").stdout.split()
    assert len(from_stdin) == 1


def test_submit_bad_runtime_is_one_line_and_exit_1(mesh: Cli) -> None:
    result = mesh("submit", "--runtime", "nope", "-p", "x=1")
    assert result.exit_code == 1
    assert error_lines(result) == [
        "openrange-mesh: invalid spec: runtime: unknown runtime 'nope' (known: command, gymnasium, sleep)"
    ]
    bad_params = mesh("submit", "--runtime", "sleep", "-p", "mode=sideways")
    assert bad_params.exit_code == 1 and len(error_lines(bad_params)) == 1
    assert mesh.ok("ls", "-o", "ids").stdout == ""


def test_submit_usage_errors_exit_2(mesh: Cli, tmp_path: Path) -> None:
    assert mesh("submit", "--runtime", "sleep", "-p", "novalue").exit_code == 2
    assert mesh("submit").exit_code == 2
    path = tmp_path / "s.jsonl"
    path.write_text('{"runtime": "sleep"}\n')
    assert mesh("submit", "--file", str(path), "--runtime", "sleep").exit_code == 2


# --- wait, show, logs, cancel (real agents) ----------------------------------------------------


def test_wait_exits_0_when_all_succeed(agents: Agents) -> None:
    ids = agents.cli.ok("submit", "--runtime", "sleep", "-p", "seconds=0.1", "-n", "4").stdout
    result = agents.cli.ok("wait", "-", stdin=ids)
    assert "4/4 done (4 succeeded, 0 failed)" in result.stderr
    assert result.stdout == ""
    records = json.loads(agents.cli.ok("wait", *ids.split(), "-o", "json").stdout)  # already done: returns at once
    assert [r["state"] for r in records] == ["succeeded"] * 4


def test_wait_exits_1_when_one_fails(agents: Agents) -> None:
    ok = agents.cli.ok("submit", "--runtime", "sleep", "-p", "seconds=0.1", "-n", "2").stdout.split()
    bad = agents.cli.ok("submit", "--runtime", "sleep", "-p", "seconds=0.1", "-p", "mode=fail").stdout.strip()
    result = agents.cli("wait", *ok, bad)
    assert result.exit_code == 1, result.output
    assert error_lines(result)[-1] == "openrange-mesh: 1 of 3 episodes did not succeed"
    assert rows(result) == [[bad, "failed", *rows(result)[0][2:]]] and "asked to fail" in result.stdout


def test_wait_timeout_then_cancel(agents: Agents) -> None:
    slow = agents.cli.ok("submit", "--runtime", "sleep", "-p", "seconds=60").stdout.strip()
    started = time.monotonic()
    result = agents.cli("wait", slow, "--timeout", "1")
    assert result.exit_code == 1
    assert time.monotonic() - started < 10
    assert error_lines(result)[-1].startswith("openrange-mesh: timed out after 1.0s: 1 of 1 episodes not finished")

    wait_until(
        lambda: json.loads(agents.cli.ok("show", slow, "-o", "json").stdout)["state"] == "running",
        timeout=15,
        what="the slow episode to run",
    )
    cancelled = agents.cli.ok("cancel", slow)
    assert cancelled.stdout.startswith(f"{slow}: cancel requested")
    final = agents.cli("wait", slow, "--timeout", "20")
    assert final.exit_code == 1 and "1 of 1 episodes did not succeed" in final.stderr and "cancelled" in final.stdout
    again = agents.cli.ok("cancel", slow, "-o", "json")
    assert json.loads(again.stdout) == {slow: "cancelled"}


def test_cancel_pending_unknown_and_finished(mesh: Cli, registry: Registry) -> None:
    done = sample_records()[2]
    put_records(registry, mesh.namespace, done)
    pending = mesh.ok("submit", "--runtime", "sleep").stdout.strip()
    result = mesh("cancel", pending, "0000000000-0000-nope", done.id)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"{pending}: cancelled (it was pending)",
        "0000000000-0000-nope: no such episode",
        f"{done.id}: already failed: nothing to do",
    ]
    assert error_lines(result) == ["openrange-mesh: 1 of 3 episodes not found (first: 0000000000-0000-nope)"]
    assert json.loads(mesh.ok("show", pending, "-o", "json").stdout)["state"] == "cancelled"


def test_wait_all(mesh: Cli, registry: Registry) -> None:
    records = sample_records()
    finished = records[0].replace(state=State.SUCCEEDED, finished_at=time.time())
    put_records(registry, mesh.namespace, finished)
    assert mesh.ok("wait", "--all").stderr.strip().endswith("1/1 done (1 succeeded, 0 failed), 0 running, 0 pending")
    put_records(registry, mesh.namespace, records[2])
    assert mesh("wait", "--all").exit_code == 1
    assert mesh("wait").exit_code == 2
    assert mesh("wait", "0000000000-0000-nope").exit_code == 1


def test_show_and_logs(agents: Agents) -> None:
    cli = agents.cli
    episode = cli.ok(
        "submit",
        "--runtime",
        "sleep",
        "-p",
        "seconds=0.3",
        "-p",
        "events=3",
        "-p",
        'result={"r": 7}',
        "--label",
        "run=show",
    ).stdout.strip()
    cli.ok("wait", episode)

    text = cli.ok("show", episode).stdout
    for expected in (
        "state:     succeeded",
        "runtime:   sleep",
        "attempts:",
        "timeline:",
        "submitted by",
        "attempt 1 ended succeeded",
        '"r": 7',
        '"run": "show"',
        "artifacts:",
        f"{agents.cli.store}/episodes",
    ):
        assert expected in text, expected
    data = json.loads(cli.ok("show", episode, "-o", "json").stdout)
    assert data["state"] == "succeeded" and data["result"] == {"r": 7} and data["spec"]["params"]["events"] == 3
    assert data["history"][0]["outcome"] == "succeeded" and data["history"][0]["host"] in ("h1", "h2")
    # a short episode's few events are in its record
    assert data["artifacts"][0]["location"].endswith(f"episodes/{episode}/attempt-1/")
    assert data["artifacts"][0]["events_in_record"] == 5 and "shared_events" not in data["artifacts"][0]
    assert [t["event"].split()[0] for t in data["timeline"]] == ["submitted", "attempt", "attempt"]

    lines = cli.ok("logs", episode).stdout.splitlines()
    assert [line.split()[2] for line in lines] == ["reset", "tick", "tick", "tick", "terminal"]
    events = [json.loads(line) for line in cli.ok("logs", episode, "-o", "json").stdout.splitlines()]
    assert [e["type"] for e in events] == ["reset", "tick", "tick", "tick", "terminal"]
    assert cli.ok("logs", "-f", episode).stdout.splitlines() == lines
    missing = cli.ok("logs", episode, "--attempt", "2")
    assert missing.stdout == "" and "no events stored" in missing.stderr

    chatty = cli.ok("submit", "--runtime", "sleep", "-p", "events=20").stdout.strip()  # too many for its record
    cli.ok("wait", chatty)
    shown = json.loads(cli.ok("show", chatty, "-o", "json").stdout)
    assert shown["artifacts"][0]["shared_events"].endswith(f"shared/{shown['history'][0]['events']}.jsonl")
    assert [line.split()[2] for line in cli.ok("logs", chatty).stdout.splitlines()] == [
        "reset",
        *["tick"] * 20,
        "terminal",
    ]

    unknown = cli("show", "0000000000-0000-nope")
    assert unknown.exit_code == 1 and error_lines(unknown) == ["openrange-mesh: no episode '0000000000-0000-nope'"]


def test_logs_of_events_in_the_record_need_no_store(mesh: Cli, registry: Registry) -> None:
    now = time.time()
    events = [{"t": now - 2, "type": "reset"}, {"t": now - 1, "type": "terminal", "ok": True}]
    inline = EpisodeRecord(
        "0000000001-0000-t",
        EpisodeSpec("sleep"),
        state=State.SUCCEEDED,
        created_at=now - 3,
        started_at=now - 2,
        finished_at=now - 1,
        history=(Attempt(1, "h1", now - 2, now - 1, "succeeded", inline_events=events),),
    )
    chunked = inline.replace(id="0000000001-0001-t", history=(Attempt(1, "h1", now - 2, now - 1, "succeeded"),))
    put_records(registry, mesh.namespace, inline, chunked)
    # no agent ever recorded a store for this mesh, and none is given
    lines = mesh.ok("logs", inline.id).stdout.splitlines()
    assert [line.split()[2] for line in lines] == ["reset", "terminal"]
    assert mesh.ok("logs", "-f", inline.id).stdout.splitlines() == lines
    assert [json.loads(line) for line in mesh.ok("logs", inline.id, "-o", "json").stdout.splitlines()] == events
    needs = mesh("logs", chunked.id)  # its events are in chunks: only a store has them
    assert needs.exit_code == 2 and "no store" in needs.stderr


def test_logs_follow_returns_when_the_episode_ends(agents: Agents) -> None:
    episode = agents.cli.ok("submit", "--runtime", "sleep", "-p", "seconds=2.5", "-p", "events=3").stdout.strip()
    started = time.monotonic()
    result = agents.cli.ok("logs", "-f", episode)
    assert time.monotonic() - started < 20
    assert [line.split()[2] for line in result.stdout.splitlines()] == ["reset", "tick", "tick", "tick", "terminal"]


# --- errors, help ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [["ls"], ["hosts"], ["show", "x"], ["submit", "--runtime", "sleep"], ["wait", "--all"]]
)
def test_unreachable_etcd_exits_3_with_one_line(args: list[str]) -> None:
    dead = Cli(f"127.0.0.1:{free_port()}", "default")
    result = dead(*args, env={"OPENRANGE_RETRY_TIMEOUT": "0.5"})
    assert result.exit_code == 3, result.output
    assert len(error_lines(result)) == 1 and error_lines(result)[0].startswith("openrange-mesh: etcd unavailable at")


def test_no_etcd_given_is_a_usage_error() -> None:
    result = CliRunner(env={"OPENRANGE_ETCD": None}).invoke(cli, ["ls"])
    assert result.exit_code == 2 and "--etcd" in result.stderr


def test_help_documents_every_command() -> None:
    runner = CliRunner()
    top = runner.invoke(cli, ["--help"])
    assert top.exit_code == 0
    for expected in ("Exit status", "etcd unreachable", "_OPENRANGE_MESH_COMPLETE", "OPENRANGE_ETCD", "NO_COLOR"):
        assert expected in top.stdout
    for name in ("ls", "show", "logs", "hosts", "submit", "wait", "cancel", "up"):
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0 and "Examples:" in result.stdout, name


def test_completion_script_is_available() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "openrange_mesh.cli.main"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "_OPENRANGE_MESH_COMPLETE": "bash_source"},
    )
    assert result.returncode == 0 and "_openrange_mesh_completion" in result.stdout


def test_logs_and_show_of_batched_episodes(agents: Agents) -> None:
    """A batch's episodes share event chunks; logs and show still answer per episode."""
    ids = agents.cli.ok(
        "submit", "--runtime", "sleep", "-p", "seconds=0.05", "-p", "events=2", "--count", "4", "--batch", "4"
    ).stdout.split()
    agents.cli.ok("wait", *ids)
    for episode in (ids[0], ids[3]):
        lines = agents.cli.ok("logs", episode).stdout.splitlines()
        assert [line.split()[2] for line in lines] == ["reset", "tick", "tick", "terminal"]
        assert all(f'episode="{episode}"' in line for line in lines)
        followed = agents.cli.ok("logs", "-f", episode).stdout.splitlines()
        assert followed == lines
    shown = json.loads(agents.cli.ok("show", ids[1], "-o", "json").stdout)
    assert shown["history"][0]["batch"] and shown["artifacts"][0]["batch_events"].endswith("/")


def test_logs_of_episodes_that_keep_fewer_events(agents: Agents) -> None:
    """``--events summary`` keeps a batch's reset and terminal events; ``--events none`` keeps
    none, and logs says so (not an error: the spec asked for it), following or not."""
    run = ("submit", "--runtime", "sleep", "-p", "seconds=0.05", "-p", "events=3", "--count", "2", "--batch", "2")
    summary = agents.cli.ok(*run, "--events", "summary").stdout.split()
    none = agents.cli.ok(*run, "--events", "none").stdout.split()
    agents.cli.ok("wait", *summary, *none)
    lines = agents.cli.ok("logs", summary[1]).stdout.splitlines()
    assert [line.split()[2] for line in lines] == ["reset", "terminal"]
    for follow in ([], ["-f"]):
        quiet = agents.cli.ok("logs", *follow, none[0])
        assert quiet.stdout == "" and "were not kept: its spec has events='none'" in quiet.stderr
    shown = json.loads(agents.cli.ok("show", none[1], "-o", "json").stdout)
    assert shown["history"][0]["events"] == "(not kept)" and "batch_events" not in shown["artifacts"][0]
    assert "events: not kept: its spec has events='none'" in agents.cli.ok("show", none[1]).stdout


def test_show_counts_only_attempts_the_episode_spent(mesh: Cli, registry: Registry) -> None:
    """Attempts the infrastructure ended (outcome "released") do not count against max_attempts,
    and show says so instead of "attempt 3 of 2"."""
    now = time.time()
    record = EpisodeRecord(
        "0000000002-0000-t",
        EpisodeSpec("sleep", max_attempts=2),
        state=State.RUNNING,
        attempt=3,
        owner="h1",
        claim="c3",
        created_at=now - 60,
        started_at=now - 5,
        history=(
            Attempt(1, "h2", now - 50, now - 49, "released", "its worker could not start (bucket gone)"),
            Attempt(2, "h2", now - 40, now - 39, "released", "its worker could not start (bucket gone)"),
            Attempt(3, "h1", now - 5),
        ),
    )
    put_records(registry, mesh.namespace, record)
    out = mesh.ok("show", record.id).output
    assert "3 (1 of 2 counted; 2 released by failing hosts)" in out, out


def test_snapshot_artifacts_and_gc_from_the_shell(agents: Agents, tmp_path: Path) -> None:
    """The mesh's store found through etcd (no --store): a snapshot put by name, used by an
    episode that copies it into an artifact, the artifact listed and fetched, a dry-run gc."""
    cli = Cli(agents.cli.endpoint, agents.cli.namespace)  # no OPENRANGE_STORE
    (tmp_path / "world.txt").write_text("a small world\n")
    digest = cli.ok("snapshot", "put", str(tmp_path / "world.txt"), "--name", "world").stdout.strip()
    assert digest.startswith("sha256:") and len(digest) == 71
    listed = json.loads(cli.ok("snapshot", "ls", "-o", "json").stdout)
    assert [(n["name"], n["digest"]) for n in listed] == [("world", digest)]
    copy = 'cp "$OPENRANGE_SNAPSHOT" "$OPENRANGE_ARTIFACTS/copy.txt"'
    spec = {"runtime": "command", "params": {"argv": ["sh", "-c", copy]}, "snapshot": "world"}
    episode = cli.ok("submit", "--file", "-", stdin=json.dumps(spec) + "\n").stdout.strip()
    cli.ok("wait", episode)
    (artifact,) = json.loads(cli.ok("artifacts", episode, "-o", "json").stdout)
    assert artifact["name"] == "copy.txt" and artifact["size"] == len("a small world\n")
    cli.ok("artifacts", episode, "--get", "copy.txt", "--to", str(tmp_path / "got.txt"))
    assert (tmp_path / "got.txt").read_text() == "a small world\n"
    missing = cli("artifacts", episode, "--get", "nope.txt", "--to", str(tmp_path / "x"))
    assert missing.exit_code == 1 and len(error_lines(missing)) == 1
    dry = json.loads(cli.ok("gc", "--dry-run", "-o", "json").stdout)
    assert dry["dry_run"] is True and set(dry["store"]) >= {"episodes", "snapshots"}
    cli.ok("snapshot", "rm", "world")
    assert json.loads(cli.ok("snapshot", "ls", "-o", "json").stdout) == []
    gone = cli("snapshot", "rm", "world")
    assert gone.exit_code == 1 and "no snapshot named" in gone.stderr
