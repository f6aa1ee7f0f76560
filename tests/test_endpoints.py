"""etcd endpoints as etcd users write them, against real etcd processes (plain, TLS with client
certificates, IPv6): every form opens and works, and every way of not reaching etcd names its cause
in one line. The parsing rules are in test_endpoints_parse.py."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from openrange_mesh.cli.main import cli
from openrange_mesh.client.client import MeshClient
from openrange_mesh.config import registry_url
from openrange_mesh.errors import EpisodeNotFound, TlsError, TlsRequired, Unavailable
from openrange_mesh.keys import Keys
from openrange_mesh.ledger.catalog import Catalog
from openrange_mesh.registry import Put, Registry, open_registry
from openrange_mesh.service import EpisodeService

from .etcdkit import EtcdServer, TlsFiles, free_port, make_tls, start_etcd
from .helpers import wait_until

MESH = "import sys; from openrange_mesh.cli.main import main; sys.argv[0] = 'openrange-mesh'; main()"
AGENT = "import sys; from openrange_mesh.cli.agent import main; sys.argv[0] = 'openrange-agent'; main()"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory, tls: TlsFiles) -> Iterator[EtcdServer]:
    """An etcd that serves TLS only and wants a client certificate."""
    server = start_etcd(tmp_path_factory.mktemp("secure"), tls=tls)
    yield server
    server.stop()


@pytest.fixture
def silent() -> Iterator[str]:
    """host:port of a loopback socket that accepts connections and never says a word."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as sock:
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def put_and_get(registry: Registry) -> None:
    key = f"/endpoints/{uuid.uuid4().hex}".encode()
    revision = registry.txn([], [Put(key, b"v")]).revision
    kv, _ = registry.get(key)
    assert kv is not None and (kv.value, kv.mod_revision) == (b"v", revision)


def use(url: str, retry_timeout: float = 2.0) -> None:
    registry = open_registry(url, retry_timeout=retry_timeout)
    try:
        put_and_get(registry)
    finally:
        registry.close()


# -- every form opens and works


@pytest.mark.parametrize(
    "form", ["http://{ep}", "{ep}", "http://{ep}/", "http://{ep},http://{ep}", "{dead},http://{ep}", "etcd://{ep}"]
)
def test_plain_forms_work(etcd: EtcdServer, form: str) -> None:
    use(form.format(ep=etcd.endpoint, dead=f"127.0.0.1:{free_port()}"))


def test_ipv6_forms_work(tmp_path: Path) -> None:
    server = start_etcd(tmp_path / "etcd", listen=["[::1]"])
    try:
        for url in (f"[::1]:{server.client_port}", f"http://[::1]:{server.client_port}"):
            use(url)
    finally:
        server.stop()


def test_https_with_a_cacert_and_client_certificates(secure: EtcdServer, tls: TlsFiles) -> None:
    files = {"cacert": str(tls.ca), "cert": str(tls.client_cert), "key": str(tls.client_key)}
    use(registry_url(f"https://{secure.endpoint}", files, env={}))
    use(registry_url(secure.endpoint, files, env={}))  # bare endpoints and TLS files: https, as etcdctl does
    use(registry_url(f"https://{secure.endpoint},https://{secure.endpoint}", files, env={}))


def test_client_and_service_take_endpoints(etcd: EtcdServer, tmp_path: Path) -> None:
    client = MeshClient(f"http://{etcd.endpoint}", namespace="endpoints", retry_timeout=2.0)
    try:
        with pytest.raises(EpisodeNotFound):
            client.get("no-such-episode")
    finally:
        client.close()
    service = EpisodeService(etcd.endpoint, namespace="endpoints", host_id="h", store=str(tmp_path / "store"))
    try:
        with pytest.raises(EpisodeNotFound):
            service.get("no-such-episode")
    finally:
        service.close()


# -- every cause of not reaching etcd, in one line


def failure(url: str, retry_timeout: float = 1.0) -> tuple[Exception, float]:
    registry = open_registry(url, retry_timeout=retry_timeout)
    started = time.monotonic()
    try:
        put_and_get(registry)
    except Exception as exc:
        return exc, time.monotonic() - started
    finally:
        registry.close()
    raise AssertionError(f"{url} worked")


def test_https_to_a_plain_etcd_is_a_handshake_failure(etcd: EtcdServer) -> None:
    error, took = failure(f"https://{etcd.endpoint}")
    assert type(error) is TlsError and took < 1.0  # not retried: it cannot get better
    assert str(error).startswith(f"TLS handshake with {etcd.endpoint} failed: ")
    assert "plain http? then use http://" in str(error)


def test_plain_http_to_a_tls_etcd_says_it_serves_tls(secure: EtcdServer) -> None:
    for url in (f"http://{secure.endpoint}", secure.endpoint):
        error, took = failure(url)
        assert isinstance(error, TlsRequired) and took < 1.0
        assert str(error) == f"etcd at {secure.endpoint} serves TLS, not plain http: use https://{secure.endpoint}"


def test_an_unknown_ca_and_a_missing_client_certificate(secure: EtcdServer, tls: TlsFiles) -> None:
    error, _ = failure(f"https://{secure.endpoint}")
    assert isinstance(error, TlsError) and "certificate verify failed: unable to get local issuer" in str(error)
    error, _ = failure(registry_url(f"https://{secure.endpoint}", {"cacert": str(tls.ca)}, env={}))
    assert isinstance(error, TlsError) and "client certificate" in str(error)


def test_an_unresolvable_name() -> None:
    error, _ = failure("no-such-host.invalid:2379", retry_timeout=0.5)
    assert isinstance(error, Unavailable)
    assert "cannot resolve host no-such-host.invalid" in error.reason and "refused" not in str(error)


def test_a_refused_port_and_each_endpoints_cause() -> None:
    dead = f"127.0.0.1:{free_port()}"
    error, _ = failure(dead, retry_timeout=0.5)
    assert isinstance(error, Unavailable) and error.reason == f"connection refused by {dead}"
    error, _ = failure(f"{dead},no-such-host.invalid", retry_timeout=0.5)
    assert isinstance(error, Unavailable)
    assert error.reason.startswith(f"connection refused by {dead}; cannot resolve host no-such-host.invalid")


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_silent_endpoint_did_not_answer(silent: str, scheme: str) -> None:
    error, took = failure(f"{scheme}://{silent}", retry_timeout=0.6)
    assert isinstance(error, Unavailable) and took < 1.5
    assert re.fullmatch(rf"{silent} did not answer within 0\.\d+ s", error.reason), error.reason


def test_watch_streams_name_the_cause_too(etcd: EtcdServer) -> None:
    """Watches stream through requests, not our connections: the same causes, worded the same."""
    cases = [
        (f"https://{etcd.endpoint}", TlsError, f"TLS handshake with {etcd.endpoint} failed: the server closed"),
        ("no-such-host.invalid:1", Unavailable, "etcd unavailable at no-such-host.invalid:1: cannot resolve host"),
    ]
    for url, kind, expected in cases:
        registry = open_registry(url, retry_timeout=0.5)
        try:
            with pytest.raises(kind) as failed:
                registry.watch(b"/endpoints/", 1).next(5.0)
            assert str(failed.value).startswith(expected), failed.value
        finally:
            registry.close()


# -- the CLI: one line on stderr, exit 3; flags and environment in their order


def clean_env(**env: str) -> dict[str, str]:
    """This process's environment without any OPENRANGE_* or ETCDCTL_* variable, plus ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENRANGE_", "ETCDCTL_"))}
    return {**clean, **env}


def cli_run(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-c", MESH, *args],
        env=clean_env(OPENRANGE_RETRY_TIMEOUT="1", **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout, done.stderr


def test_cli_reads_etcdctls_environment_below_its_own(etcd: EtcdServer, secure: EtcdServer, tls: TlsFiles) -> None:
    dead = f"127.0.0.1:{free_port()}"
    code, _, err = cli_run(["hosts"], {"ETCDCTL_ENDPOINTS": f"http://{etcd.endpoint}"})
    assert code == 0, err
    code, _, err = cli_run(["hosts"], {"ETCDCTL_ENDPOINTS": f"http://{etcd.endpoint}", "OPENRANGE_ETCD": dead})
    assert code == 3 and err.strip() == f"openrange-mesh: etcd unavailable at {dead}: connection refused by {dead}"
    code, _, err = cli_run(["--endpoints", f"http://{etcd.endpoint}", "hosts"], {"OPENRANGE_ETCD": dead})
    assert code == 0, err

    etcdctl = {"ETCDCTL_ENDPOINTS": f"https://{secure.endpoint}", "ETCDCTL_CACERT": str(tls.ca)}
    etcdctl |= {"ETCDCTL_CERT": str(tls.client_cert), "ETCDCTL_KEY": str(tls.client_key)}
    code, _, err = cli_run(["hosts"], etcdctl)
    assert code == 0, err
    code, _, err = cli_run(["--endpoints", etcd.endpoint, "hosts"], etcdctl)  # a plain etcd named apart
    assert code == 0, err
    other_ca = make_tls(tls.ca.parent.parent / f"other-{uuid.uuid4().hex[:6]}").ca
    code, _, err = cli_run(["hosts"], {**etcdctl, "OPENRANGE_CACERT": str(other_ca)})  # ours wins
    assert code == 3 and len(err.splitlines()) == 1 and "certificate verify failed" in err
    code, _, err = cli_run(["--cacert", str(tls.ca), "hosts"], {**etcdctl, "OPENRANGE_CACERT": str(other_ca)})
    assert code == 0, err


def test_cli_https_trusts_the_system_cas(secure: EtcdServer, tls: TlsFiles) -> None:
    args = ["--endpoints", f"https://{secure.endpoint}", "--cert", str(tls.client_cert), "--key", str(tls.client_key)]
    code, _, err = cli_run([*args, "hosts"], {"SSL_CERT_FILE": str(tls.ca)})  # what OpenSSL takes as the system's
    assert code == 0, err


@pytest.mark.parametrize(
    ("endpoints", "expected"),
    [
        ("https://{plain}", "TLS handshake with {plain} failed: the server closed the connection mid-handshake"),
        ("http://{secure}", "etcd at {secure} serves TLS, not plain http: use https://{secure}"),
        ("no-such-host.invalid:2379", "etcd unavailable at no-such-host.invalid:2379: cannot resolve host"),
        ("{dead}", "etcd unavailable at {dead}: connection refused by {dead}"),
        ("{silent}", "etcd unavailable at {silent}: {silent} did not answer within"),
    ],
)
def test_cli_names_the_cause_in_one_line_and_exits_3(
    endpoints: str, expected: str, etcd: EtcdServer, secure: EtcdServer, silent: str
) -> None:
    names = {"plain": etcd.endpoint, "secure": secure.endpoint, "dead": f"127.0.0.1:{free_port()}", "silent": silent}
    runner = CliRunner(env={"OPENRANGE_RETRY_TIMEOUT": "0.6", "OPENRANGE_ETCD": None, "ETCDCTL_ENDPOINTS": None})
    result = runner.invoke(cli, ["--endpoints", endpoints.format(**names), "hosts"])
    lines = result.stderr.splitlines()
    assert result.exit_code == 3 and len(lines) == 1, result.output
    assert lines[0].startswith("openrange-mesh: " + expected.format(**names)), lines


def test_cli_unreadable_tls_files_are_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    result = CliRunner().invoke(cli, ["--endpoints", "https://127.0.0.1:1", "--cacert", str(missing), "hosts"])
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1, result.output
    assert result.stderr.startswith(f"openrange-mesh: cannot load etcd TLS files {missing}: No such file")


def test_cli_user_flag_never_shows_the_password(etcd: EtcdServer) -> None:
    runner = CliRunner(env={"OPENRANGE_RETRY_TIMEOUT": "0.5"})
    for args in (["--user", "root:s3cret"], ["--user", "root", "--password", "s3cret"]):
        result = runner.invoke(cli, ["--endpoints", f"127.0.0.1:{free_port()}", *args, "--debug", "hosts"])
        assert result.exit_code == 3 and "s3cret" not in result.output, result.output
    result = runner.invoke(cli, ["--endpoints", "memory://x", "--user", "root:s3cret", "hosts"])
    assert result.exit_code == 1 and "s3cret" not in result.output


# -- the agent


def test_agent_joins_over_tls_from_etcdctls_environment(secure: EtcdServer, tls: TlsFiles, tmp_path: Path) -> None:
    namespace = f"ep-{uuid.uuid4().hex[:8]}"
    files = {"ETCDCTL_CACERT": str(tls.ca), "ETCDCTL_CERT": str(tls.client_cert), "ETCDCTL_KEY": str(tls.client_key)}
    args = ["--namespace", namespace, "--host-id", "h1", "--ttl", "2", "--capacity", "1", "--grace", "1"]
    env = clean_env(ETCDCTL_ENDPOINTS=f"https://{secure.endpoint}", **files)
    with (tmp_path / "agent.log").open("wb") as log:
        agent = subprocess.Popen(
            [sys.executable, "-c", AGENT, *args, "--no-dashboard", "--store", str(tmp_path / "store")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    access = {"cacert": str(tls.ca), "cert": str(tls.client_cert), "key": str(tls.client_key)}
    registry = open_registry(registry_url(secure.endpoint, access, env={}), retry_timeout=2.0)
    try:
        catalog = Catalog(registry, Keys(namespace))
        wait_until(lambda: catalog.hosts() or agent.poll() is not None, timeout=60, what="the agent to join")
        assert agent.poll() is None, (tmp_path / "agent.log").read_text()
    finally:
        registry.close()
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=15)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(agent.pid, signal.SIGKILL)  # its workers, and the agent if it hung
            agent.wait()


def test_agent_names_the_cause_and_exits_3(etcd: EtcdServer, tmp_path: Path) -> None:
    args = ["--endpoints", f"https://{etcd.endpoint}", "--host-id", "h1", "--store", str(tmp_path / "store")]
    done = subprocess.run(
        [sys.executable, "-c", AGENT, *args, "--no-dashboard"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr
    assert done.stderr.splitlines()[-1].startswith(f"openrange-agent: TLS handshake with {etcd.endpoint} failed: ")
