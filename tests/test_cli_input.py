"""Bad input to ``openrange-mesh``: one line that says what and where, the documented exit
status, and nothing submitted. Run for real against a real etcd (click's runner)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from openrange_mesh.cli.main import cli
from openrange_mesh.keys import Keys
from openrange_mesh.registry import Put, Registry, open_registry

from .etcdkit import EtcdServer
from .test_cli import Cli, error_lines, new_namespace


@pytest.fixture
def mesh(etcd: EtcdServer) -> Cli:
    return Cli(etcd.endpoint, new_namespace())


@pytest.fixture
def etcd_registry(etcd: EtcdServer) -> Iterator[Registry]:
    registry = open_registry(etcd.url, retry_timeout=5.0)
    yield registry
    registry.close()


def one_line(result: Result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("openrange-mesh: "), lines
    assert "internal error" not in lines[0]
    return lines[0]


@pytest.mark.parametrize("batch", ["0", "251", "x"])
def test_a_batch_out_of_range_is_a_usage_error_in_one_line(mesh: Cli, batch: str) -> None:
    line = one_line(mesh("submit", "--runtime", "sleep", "--batch", batch), 2)
    assert "--batch" in line and "openrange-mesh submit -h" in line
    assert mesh.ok("ls", "-o", "ids").stdout == ""


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (
            b'{"runtime": "sleep", "params": {"result": ' + b"[" * 1000 + b"]" * 1000 + b"}}\n",
            "JSON nested deeper than 65 levels at column 106",
        ),
        (b'{"runtime": "sleep", "labels": {"a": "caf\xe9"}}\n', "not UTF-8 at column 42 (byte 0xe9)"),
        (b'{"runtime": "sleep", "seed": 1,,}\n', "not JSON at column 32"),
        (b'{"runtime": "sleep", "params": {"seconds": "soon"}}\n', "params.seconds: must be a number"),
        (b'{"runtime": "sleep", "timeout": 1e999}\n', "timeout: must be a positive number"),
        (b'{"runtime": "sleep", "params": {"result": {"a": ' + b"[" * 80 + b"]" * 80 + b"}}}\n", "nested deeper"),
        (b'{"runtime": "sleep", "snapshot": "a/b"}\n', "snapshot: 'a/b' must be one name"),
        (b'{"runtime": "sleep", "seed": ' + b"9" * 5000 + b"}\n", "not JSON"),
        (b'["runtime", "sleep"]\n', "expected a JSON object"),
    ],
)
def test_a_bad_spec_file_is_one_line_naming_file_and_line(mesh: Cli, tmp_path: Path, content: bytes, says: str) -> None:
    path = tmp_path / "specs.jsonl"
    path.write_bytes(b'{"runtime": "sleep"}\n' + content)
    line = one_line(mesh("submit", "--file", str(path)), 1)  # a bad spec: exit 1, as documented
    assert line.startswith(f"openrange-mesh: invalid spec: {path} line 2") and says in line, line
    assert mesh.ok("ls", "-o", "ids").stdout == ""  # nothing was submitted


def test_a_missing_spec_file_is_a_usage_error(mesh: Cli, tmp_path: Path) -> None:
    line = one_line(mesh("submit", "--file", str(tmp_path / "nope.jsonl")), 2)
    assert "nope.jsonl" in line


def test_show_of_a_corrupt_record_says_so(mesh: Cli, etcd_registry: Registry, tmp_path: Path) -> None:
    keys = Keys(mesh.namespace)
    ids = mesh.ok("submit", "--runtime", "sleep", "--count", "2").stdout.split()
    etcd_registry.txn([], [Put(keys.episode(ids[0]), b"\xc1\x1b[2J garbage")])

    line = one_line(mesh("show", ids[0]), 1)
    assert line.startswith(f"openrange-mesh: corrupt record at {keys.episode(ids[0]).decode()}: "), line
    assert "\x1b" not in line
    logs = one_line(mesh("logs", ids[0], "--store", str(tmp_path)), 1)
    assert logs == line
    missing = one_line(mesh("show", "0000000000-0000-nope"), 1)
    assert missing == "openrange-mesh: no episode '0000000000-0000-nope'"
    listed = mesh.ok("ls")
    assert [row.split()[0] for row in listed.stdout.splitlines()[1:]] == [ids[1]]
    assert "skipping corrupt record" in listed.stderr


def test_a_param_nested_too_deep_to_parse_is_a_usage_error(mesh: Cli) -> None:
    line = one_line(mesh("submit", "--runtime", "sleep", "-p", "result=" + "[" * 1000 + "]" * 1000), 2)
    assert "--param" in line and "nested" in line
    assert mesh.ok("ls", "-o", "ids").stdout == ""


@pytest.mark.parametrize("command", ["cancel", "wait"])
def test_ids_on_stdin_that_are_not_utf8_are_unknown_ids(mesh: Cli, command: str) -> None:
    result = CliRunner(env={"OPENRANGE_STORE": None}).invoke(
        cli, ["--etcd", mesh.endpoint, "--namespace", mesh.namespace, command, "-"], input=b"caf\xe9\x1b[2J\n"
    )
    line = one_line(result, 1)
    assert "caf\ufffd\\x1b[2J" in line, line  # the bad byte replaced, the escape escaped
