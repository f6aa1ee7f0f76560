"""Real meshes for end-to-end tests: ``openrange-agent`` processes on a real etcd, a MeshClient,
and checkers for the invariants every run must keep.

* ``AgentProcess`` is one agent as a child process (its own session, its log in a file). Every
  process it starts (forkserver, workers, command-runtime children) inherits ``MARKER_ENV``, so
  ``marked_processes`` finds leftovers even after they were re-parented to init.
* ``Mesh`` is N agents on a unique namespace plus a client. Episodes of the ``command`` runtime
  append ``<seed> <host> <agent marker>`` to a shared file when they complete, so a test counts
  real executions (and which incarnation of an agent ran them) next to committed results.
* Checkers (``check_exactly_once``, ``check_clean``) raise AssertionError with the facts.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openrange_mesh.client.client import MeshClient
from openrange_mesh.errors import RegistryError
from openrange_mesh.keys import Keys
from openrange_mesh.ledger.records import claim_episode_ids
from openrange_mesh.lifetime import die_with_parent
from openrange_mesh.model import EpisodeRecord, HostInfo, State, decode_or_none, unpack
from openrange_mesh.model.seat import Seat, read_seat
from openrange_mesh.registry import KeyValue, Registry, open_registry

from .helpers import wait_until

MakeMesh = Callable[..., "Mesh"]  # the make_mesh fixture (conftest.py): make(url, ttl=2) -> Mesh
MARKER_ENV = "OPENRANGE_E2E_MARKER"  # inherited by every process an agent starts
HOST_ENV = "OPENRANGE_E2E_HOST"  # the agent's host id, for the command episodes' evidence file
AGENT_MAIN = "from openrange_mesh.cli.agent import main; main()"
JOIN_TIMEOUT = 30.0
_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")  # the agent's log format
# A command episode: sleep, then append "<seed> <host> <marker>" to the evidence file (one O_APPEND write).
RECORD_RUN = (
    "import os, sys, time\n"
    "time.sleep(float(sys.argv[2]))\n"
    "env = os.environ\n"
    "line = ' '.join([env['OPENRANGE_SEED'], env['" + HOST_ENV + "'], env['" + MARKER_ENV + "']])\n"
    "line = (line + '\\n').encode()\n"
    "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
    "os.write(fd, line)\n"
    "sys.stdout.write('step\\n' * int(sys.argv[3]))\n"  # log events: past 14, more than a record holds
)


@dataclass
class HeldRequest:
    """A request ``LossyProxy`` held in flight, and etcd's answer once it was let through."""

    path: str
    body: dict[str, Any]
    raw: bytes
    held_at: float  # monotonic
    status: int = 0  # etcd's HTTP status, once released
    answer: dict[str, Any] = field(default_factory=dict)
    released_at: float = 0.0


class LossyProxy:
    """A TCP proxy in front of one etcd endpoint that can lose an answer: the request matching
    ``lose_answer_once``'s predicate is forwarded, given time to be applied, and then the
    connection drops before the answer comes back (a network failing at the worst moment).
    Or it can hold one: the request matching ``hold_once``'s predicate is kept in flight, and
    from then on nothing else is forwarded either (keepalives included, so the sender's lease
    expires), until ``release()`` sends the held request to etcd and returns its answer.
    Everything else is relayed as is, watch streams included."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.lost: list[dict[str, Any]] = []  # the requests whose answers were lost
        self.held: HeldRequest | None = None
        self.withheld = 0  # requests never forwarded while one was held
        self._predicate: Callable[[str, dict[str, Any]], bool] | None = None
        self._hold: Callable[[str, dict[str, Any]], bool] | None = None
        self._holding = threading.Event()  # set from the held request until release()
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        threading.Thread(target=self._accept, name="proxy", daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def lose_answer_once(self, predicate: Callable[[str, dict[str, Any]], bool]) -> None:
        """``predicate(path, json body)`` picks the request whose answer is lost."""
        self._predicate = predicate

    def hold_once(self, predicate: Callable[[str, dict[str, Any]], bool]) -> None:
        """``predicate(path, json body)`` picks the request to hold (``held``)."""
        self._released.clear()
        self._hold = predicate

    def release(self, timeout: float = 10.0) -> HeldRequest:
        """Send the held request to etcd on a connection of its own (its sender may have given
        up on it long ago), record etcd's answer, then forward again."""
        held = self.held
        assert held is not None, "no request was held"
        with socket.create_connection(self.target, timeout) as conn:
            conn.sendall(held.raw)
            response = http.client.HTTPResponse(conn)
            response.begin()
            data = response.read()
        held.status, held.released_at = response.status, time.monotonic()
        parsed = json.loads(data) if data else {}
        held.answer = parsed if isinstance(parsed, dict) else {"answer": parsed}
        self._holding.clear()
        self._released.set()
        return held

    def close(self) -> None:
        self._released.set()
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        relaying = threading.Event()
        relaying.set()
        answered = threading.Event()
        with client, socket.create_connection(self.target) as upstream:
            threading.Thread(target=self._answers, args=(upstream, client, relaying, answered), daemon=True).start()
            reader = client.makefile("rb")
            while (request := _read_request(reader)) is not None:
                path, body, raw = request
                if self._held_back(path, body, raw):
                    self._released.wait()  # the sender times out meanwhile; it gets no answer
                    return
                if self._take(path, body):
                    relaying.clear()  # etcd applies it; its answer is dropped
                    upstream.sendall(raw)
                    # Close only once etcd has answered: dropping the connection earlier can
                    # cancel the request inside etcd's gateway, and then nothing was applied.
                    answered.wait(10)
                    return
                upstream.sendall(raw)

    def _held_back(self, path: str, body: dict[str, Any], raw: bytes) -> bool:
        with self._lock:
            if self._holding.is_set():
                self.withheld += 1
                return True
            if self._hold is None or not self._hold(path, body):
                return False
            self._hold = None
            self.held = HeldRequest(path, body, raw, time.monotonic())
            self._holding.set()
            return True

    def _take(self, path: str, body: dict[str, Any]) -> bool:
        with self._lock:
            if self._predicate is None or not self._predicate(path, body):
                return False
            self._predicate = None
            self.lost.append(body)
            return True

    @staticmethod
    def _answers(
        upstream: socket.socket, client: socket.socket, relaying: threading.Event, answered: threading.Event
    ) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if not relaying.is_set():
                    answered.set()
                    return
                client.sendall(data)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_RDWR)


def _read_request(reader: Any) -> tuple[str, dict[str, Any], bytes] | None:
    """One HTTP request (the etcd client sends Content-Length bodies): (path, JSON body, raw bytes)."""
    try:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = reader.readline()
            if not line:
                return None
            head += line
        lengths = [h.split(b":", 1)[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")]
        length = int(lengths[0]) if lengths else 0
        body = reader.read(length) if length else b""
    except (OSError, ValueError):
        return None
    path = head.split(b" ", 2)[1].decode()
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        parsed = {}
    return path, parsed if isinstance(parsed, dict) else {}, head + body


def _puts(txn: dict[str, Any]) -> list[dict[str, Any]]:
    """The puts of a txn's success branch (a JSON body), nested txns' success branches included."""
    out: list[dict[str, Any]] = []
    for op in txn.get("success", []):
        if "request_put" in op:
            out.append(op["request_put"])
        elif "request_txn" in op:
            out += _puts(op["request_txn"])
    return out


def txn_puts_under(prefix: bytes) -> Callable[[str, dict[str, Any]], bool]:
    """A ``LossyProxy`` predicate: a txn that puts a key under ``prefix``."""

    def matches(path: str, body: dict[str, Any]) -> bool:
        return path.endswith("/kv/txn") and any(base64.b64decode(p["key"]).startswith(prefix) for p in _puts(body))

    return matches


def _is_commit(txn: dict[str, Any], claims: bytes, episodes: bytes) -> bool:
    """A txn (one level, not its nested ones) that compares the create_revision of a claim key
    under ``claims`` with a token, and puts a record under ``episodes``: a fenced commit."""
    fenced = any(
        c.get("target") == "CREATE"
        and int(c.get("create_revision", 0)) != 0
        and base64.b64decode(c["key"]).startswith(claims)
        for c in txn.get("compare", [])
    )
    return fenced and bool(_record_keys(txn, episodes))


def _txns(txn: dict[str, Any]) -> list[dict[str, Any]]:
    """A txn and the txns nested in its success branch, depth first."""
    out = [txn]
    for op in txn.get("success", []):
        if "request_txn" in op:
            out += _txns(op["request_txn"])
    return out


def commit_under(claims: bytes, episodes: bytes) -> Callable[[str, dict[str, Any]], bool]:
    """A ``LossyProxy`` predicate: a txn request holding a fenced commit (``_is_commit``) of a
    claim under ``claims``, and nothing that applies whatever the compares say and names a
    lease (a host record riding along): held until that lease has expired, such a put would
    have etcd refuse the whole request ("lease not found") before any compare is judged."""

    def matches(path: str, body: dict[str, Any]) -> bool:
        if not path.endswith("/kv/txn") or not any(_is_commit(t, claims, episodes) for t in _txns(body)):
            return False
        unconditional = [] if body.get("compare") else body.get("success", [])
        return not any(int(op["request_put"].get("lease", 0)) for op in unconditional if "request_put" in op)

    return matches


def committed_in(txn: dict[str, Any], claims: bytes, episodes: bytes) -> list[str]:
    """The record keys that the fenced commits in a txn request (nested ones too) put."""
    return [key for t in _txns(txn) if _is_commit(t, claims, episodes) for key in _record_keys(t, episodes)]


def _record_keys(txn: dict[str, Any], episodes: bytes) -> list[str]:
    """The keys under ``episodes`` that a txn (one level) puts."""
    keys = [base64.b64decode(op["request_put"]["key"]) for op in txn.get("success", []) if "request_put" in op]
    return [key.decode() for key in keys if key.startswith(episodes)]


def commit_outcomes(
    txn: dict[str, Any], answer: dict[str, Any], claims: bytes, episodes: bytes
) -> list[tuple[list[str], bool]]:
    """For each fenced commit in a txn request (nested ones too): the record keys it puts, and
    whether etcd applied it, by etcd's answer to that request (a JSON body). etcd's gateway
    leaves out fields at their default, so a refused compare reads as no ``succeeded`` at all."""
    out: list[tuple[list[str], bool]] = []
    applied = bool(answer.get("succeeded", False))
    if _is_commit(txn, claims, episodes):
        out.append((_record_keys(txn, episodes), applied))
    branch = txn.get("success", []) if applied else txn.get("failure", [])
    for op, response in zip(branch, answer.get("responses", []), strict=False):
        if "request_txn" in op:
            out += commit_outcomes(op["request_txn"], response.get("response_txn", {}), claims, episodes)
    return out


def claimed_in(txn: dict[str, Any], prefix: bytes) -> list[str]:
    """The episode ids a claim txn (a JSON body a ``LossyProxy`` saw) put under ``prefix``."""
    puts = _puts(txn)
    return [
        str(i)
        for p in puts
        if base64.b64decode(p["key"]).startswith(prefix)
        for i in unpack(base64.b64decode(p["value"]))
    ]


def marked_processes(marker: str) -> list[tuple[int, str]]:
    """(pid, command line) of live processes whose environment carries ``marker`` (a prefix)."""
    found = []
    needle = f"{MARKER_ENV}={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(item.startswith(needle) for item in environ.split(b"\0")):
            found.append((int(entry.name), cmdline.strip()))
    return found


class AgentProcess:
    """``openrange-agent`` as a child process. ``stop()`` is idempotent and safe in teardown."""

    def __init__(
        self,
        registry: str,
        host_id: str,
        namespace: str,
        store: Path | str,
        log_path: Path,
        marker: str,
        *,
        capacity: int = 2,
        ttl: int = 2,
        grace: float | None = None,
        wrapper: Sequence[str] = (),
        dashboard: bool = False,
        token: str = "",
        options: Sequence[str] = (),
    ) -> None:
        self.registry = registry
        self.host_id = host_id
        self.namespace = namespace
        self.store = store
        self.log_path = log_path
        self.marker = marker
        self.capacity = capacity
        self.ttl = ttl
        self.grace = grace
        self.dashboard = dashboard
        self.token = token
        self.wrapper = list(wrapper)  # runs the agent under it, e.g. ``ip netns exec NS`` (which execs: same pid)
        self.options = list(options)  # more flags for openrange-agent
        self.proc: subprocess.Popen[bytes] | None = None
        self.joined_at = 0.0  # wall clock time the mesh saw it join

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"agent {self.host_id} was never started"
        return self.proc.pid

    def argv(self) -> list[str]:
        argv = [
            *self.wrapper,
            sys.executable,
            "-c",
            AGENT_MAIN,
            "--etcd",
            self.registry,
            "--host-id",
            self.host_id,
            "--namespace",
            self.namespace,
            "--capacity",
            str(self.capacity),
            "--store",
            str(self.store),
            "--ttl",
            str(self.ttl),
            "--log-level",
            "INFO",
            "--cache-dir",  # a cache of its own, under the test's directory: each agent a host of its own
            str(self.log_path.parent / f"cache-{self.host_id}"),
        ]
        if self.dashboard:  # on loopback, a free port: many agents share this machine
            argv += ["--dashboard-host", "127.0.0.1", "--dashboard-port", "0"]
            argv += ["--dashboard-token", self.token] if self.token else []
        else:
            argv.append("--no-dashboard")  # most tests need no HTTP: one process less per agent
        return argv + (["--grace", str(self.grace)] if self.grace is not None else []) + self.options

    def start(self) -> AgentProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENRANGE_")}
        env.update({MARKER_ENV: self.marker, HOST_ENV: self.host_id, "PYTHONUNBUFFERED": "1"})
        with self.log_path.open("ab") as log:
            log.write(f"--- starting agent {self.host_id} at {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
            )
        return self

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.is_running():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL and reap (a reaped pid reads as dead to the next incarnation)."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP the agent process (not its workers): a hung agent or a partitioned host."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def terminate(self) -> None:
        """SIGTERM: drain."""
        self.signal(signal.SIGTERM)

    def interrupt_group(self) -> None:
        """SIGINT to the agent's process group, as Ctrl-C in its terminal: its workers get it too."""
        if self.is_running():
            os.killpg(self.pid, signal.SIGINT)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """Drain and wait; SIGKILL if it does not exit in ``timeout``. Returns the exit status."""
        self.begin_stop()
        return self.end_stop(timeout)

    def begin_stop(self) -> None:
        if self.is_running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            self.proc.send_signal(signal.SIGTERM)

    def end_stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def log_size(self) -> int:
        """Where the log ends now: ``log_since`` reads what is written after."""
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int, until: int | None = None) -> str:
        with contextlib.suppress(OSError), self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read(-1 if until is None else until - offset).decode(errors="replace")
        return ""


def tracebacks(log: str) -> list[tuple[str, list[str]]]:
    """The records of an agent's log (as ``--log-level INFO`` writes it) that carried a traceback:
    each record's first line, and the exception line that ends each traceback printed with it (a
    chained exception prints one traceback per link)."""
    found: list[tuple[str, list[str]]] = []
    head = ""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if _LOG_RECORD.match(line):
            head = line
        elif line.startswith("Traceback (most recent call last)"):
            if not found or found[-1][0] != head:
                found.append((head, []))
            end = next((x for x in lines[i + 1 :] if x and not x[0].isspace()), "?")
            found[-1][1].append(end)
    return found


class Mesh:
    """N agents on one namespace, a client, and the invariant checkers."""

    def __init__(self, registry_url: str, root: Path, *, consumer: str = "trainer", ttl: int = 2) -> None:
        self.url = registry_url
        self.root = root
        self.ttl = ttl
        self.namespace = f"e2e-{uuid.uuid4().hex[:10]}"
        self.keys = Keys(self.namespace)
        self.store = root / "store"
        self.runs_path = root / "runs.log"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.marker = uuid.uuid4().hex
        self.agents: dict[str, AgentProcess] = {}
        self.retired: list[AgentProcess] = []  # earlier incarnations, for their logs
        self.registry: Registry = open_registry(registry_url, retry_timeout=10.0)
        self.client = MeshClient(self.registry, namespace=self.namespace, consumer=consumer)
        self.seeds: dict[str, int] = {}  # episode id -> seed, for command episodes
        self._next_seed = 0

    # --- agents --------------------------------------------------------------------------

    def start(
        self, count: int = 3, *, capacity: int = 2, grace: float | None = None, dashboard: bool = False
    ) -> list[AgentProcess]:
        agents = [
            self.start_agent(f"h{i + 1}", capacity=capacity, grace=grace, wait=False, dashboard=dashboard)
            for i in range(count)
        ]
        for agent in agents:
            self.wait_joined(agent)
        return agents

    def start_agent(
        self,
        host: str,
        *,
        capacity: int = 2,
        grace: float | None = None,
        wait: bool = True,
        registry: str | None = None,
        store: str | None = None,
        wrapper: Sequence[str] = (),
        dashboard: bool = False,
        token: str = "",
        options: Sequence[str] = (),
    ) -> AgentProcess:
        """Start agent ``host`` (a restart if it ran before); ``registry`` and ``store`` override
        the mesh's, ``wrapper`` runs it under a command (``ip netns exec NS``), ``options`` are
        more flags for it."""
        if host in self.agents:
            self.retired.append(self.agents[host])
        incarnation = sum(1 for a in self.retired if a.host_id == host)
        agent = AgentProcess(
            registry or self.url,
            host,
            self.namespace,
            store or self.store,
            self.logs / f"{host}.log",
            f"{self.marker}:{host}:{incarnation};",
            capacity=capacity,
            ttl=self.ttl,
            grace=grace,
            wrapper=wrapper,
            dashboard=dashboard,
            token=token,
            options=options,
        )
        self.agents[host] = agent.start()
        if wait:
            self.wait_joined(agent)
        return agent

    def wait_joined(self, agent: AgentProcess, timeout: float = JOIN_TIMEOUT) -> HostInfo:
        def joined() -> HostInfo | None:
            assert agent.is_running(), f"agent {agent.host_id} exited:\n{agent.log_tail()}"
            info = self.host_info(agent.host_id)
            return info if info is not None and info.pid == agent.pid else None

        info = wait_until(joined, timeout, what=f"agent {agent.host_id} to join")
        agent.joined_at = time.time()
        return info

    def host_kv(self, host: str) -> KeyValue | None:
        return self.registry.get(self.keys.host(host))[0]

    def host_info(self, host: str) -> HostInfo | None:
        kv = self.host_kv(host)
        return decode_or_none(HostInfo.from_bytes, kv.value, kv.key) if kv else None

    def leader(self) -> tuple[str, int] | None:
        """(leader host, the lease its key is bound to), or None when the seat is vacant."""
        kv = self.registry.get(self.keys.leader())[0]
        if kv is None:
            return None
        value = unpack(kv.value)
        return str(value["host"]), kv.lease

    def claims_of(self, host: str) -> dict[str, list[str]]:
        """claim id -> episode ids, for the claims ``host`` holds now."""
        prefix = self.keys.host_claims(host)
        return {self.keys.name_of(kv.key, prefix): claim_episode_ids(kv) for kv in self.registry.range(prefix).kvs}

    def running_on(self, host: str) -> list[str]:
        return [i for ids in self.claims_of(host).values() for i in ids]

    def episode_processes(self, agent: AgentProcess) -> list[int]:
        """Pids of the command episodes ``agent`` is executing right now."""
        return [pid for pid, cmdline in marked_processes(agent.marker) if RECORD_RUN in cmdline]

    def orphans(self) -> list[tuple[int, str]]:
        return marked_processes(f"{self.marker}:")

    def orphans_of(self, agent: AgentProcess) -> list[tuple[int, str]]:
        return [p for p in marked_processes(agent.marker) if p[0] != agent.pid]

    def wait_no_orphans(self, agent: AgentProcess | None = None, timeout: float = 10.0) -> None:
        def gone() -> bool:
            return not (self.orphans() if agent is None else self.orphans_of(agent))

        try:
            wait_until(gone, timeout, interval=0.1, what="the agents' processes to exit")
        except AssertionError:
            left = self.orphans() if agent is None else self.orphans_of(agent)
            raise AssertionError(f"processes outlived their agent: {left}") from None

    def close(self) -> None:
        """Stop every agent, then check that none left a process behind."""
        try:
            for agent in self.agents.values():
                agent.begin_stop()
            for agent in self.agents.values():
                agent.end_stop()
            self.wait_no_orphans()
        finally:
            for pid, _ in self.orphans():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            self.client.close()
            self.registry.close()

    def report(self) -> str:
        parts = []
        for agent in [*self.retired, *self.agents.values()]:
            status = "running" if agent.is_running() else f"exited {agent.proc.returncode if agent.proc else '-'}"
            parts.append(
                f"===== agent {agent.host_id} (pid {agent.proc.pid if agent.proc else '-'}, {status})\n"
                f"{agent.log_tail(60)}"
            )
        return "\n".join(parts)

    # --- episodes ------------------------------------------------------------------------

    def command_specs(
        self, count: int, seconds: float | Sequence[float] = 0.3, *, lines: int = 0, **spec: Any
    ) -> list[dict[str, Any]]:
        """Command episodes that sleep, then record their execution and print ``lines`` lines
        (log events; past 14 they go to the store, not the record); each gets a fresh seed."""
        durations = [seconds] * count if isinstance(seconds, int | float) else list(seconds)
        specs = []
        for duration in durations:
            argv = [sys.executable, "-S", "-c", RECORD_RUN, str(self.runs_path), f"{duration:g}", str(lines)]
            specs.append({"runtime": "command", "params": {"argv": argv}, "seed": self._next_seed, **spec})
            self._next_seed += 1
        return specs

    def submit(self, specs: Iterable[Mapping[str, Any]]) -> list[str]:
        specs = list(specs)
        ids = self.client.submit(specs)
        for episode_id, spec in zip(ids, specs, strict=True):
            if spec["runtime"] == "command" and "seed" in spec:
                self.seeds[episode_id] = int(spec["seed"])
        return ids

    def submit_commands(
        self, count: int, seconds: float | Sequence[float] = 0.3, *, lines: int = 0, **spec: Any
    ) -> list[str]:
        return self.submit(self.command_specs(count, seconds, lines=lines, **spec))

    def submit_sleeps(self, count: int, seconds: float = 0.2, mode: str = "ok", **spec: Any) -> list[str]:
        return self.submit([{"runtime": "sleep", "params": {"seconds": seconds, "mode": mode}, **spec}] * count)

    def records(self, ids: Sequence[str]) -> dict[str, EpisodeRecord]:
        return {i: v.record for i, v in self.client.ledger.read(ids).items()}

    def seat(self, other_than: str | None = None, timeout: float = 20.0) -> Seat:
        """The leader once its key names a dashboard URL (and, if asked, a host other than
        ``other_than``)."""

        def ready() -> Seat | None:
            kv, _ = self.registry.get(self.keys.leader())
            found = read_seat(kv.value, kv.create_revision) if kv else None
            return found if found and found.url and found.host != other_than else None

        return wait_until(ready, timeout, interval=0.05, what="a leader with a dashboard URL")

    def wait_finished(self, ids: Sequence[str], timeout: float = 60.0) -> dict[str, EpisodeRecord]:
        """Poll until every episode is terminal; registry outages meanwhile are tolerated."""

        def finished() -> dict[str, EpisodeRecord] | None:
            try:
                records = self.records(ids)
            except RegistryError:
                return None
            return records if len(records) == len(ids) and all(r.state.is_terminal for r in records.values()) else None

        try:
            return wait_until(finished, timeout, interval=0.1, what=f"{len(ids)} episodes to finish")
        except AssertionError:
            with contextlib.suppress(RegistryError):
                states = Counter(r.state.value for r in self.records(ids).values())
                raise AssertionError(f"episodes not finished after {timeout} s: {dict(states)}") from None
            raise

    def executions(self) -> dict[int, list[str]]:
        """seed -> hosts, one entry per completed execution of a command episode."""
        runs: dict[int, list[str]] = defaultdict(list)
        for seed, host, _ in self.execution_lines():
            runs[seed].append(host)
        return runs

    def execution_lines(self) -> list[tuple[int, str, str]]:
        """(seed, host, agent marker) per completed execution of a command episode."""
        if not self.runs_path.exists():
            return []
        return [
            (int(seed), host, marker)
            for seed, host, marker in (line.split() for line in self.runs_path.read_text().splitlines())
        ]

    def episode_of(self, seed: int) -> str:
        return next(i for i, s in self.seeds.items() if s == seed)

    # --- invariants ----------------------------------------------------------------------

    def check_exactly_once(self, records: Mapping[str, EpisodeRecord], state: State = State.SUCCEEDED) -> None:
        """Every episode ended in ``state`` with exactly one attempt committed; earlier attempts
        are recorded (closed as retried), and for command episodes the runs that completed
        are no more than the attempts, and include the committed one."""
        runs = self.executions()
        for record in records.values():
            facts = f"{record.id}: {record.state.value} attempt {record.attempt} history {record.history}"
            assert record.state is state, facts
            assert [a.n for a in record.history] == list(range(1, record.attempt + 1)), facts
            assert all(a.finished_at is not None for a in record.history), facts
            outcomes = [a.outcome for a in record.history]
            assert outcomes[-1] == state.value and set(outcomes[:-1]) <= {"retried", "released"}, facts
            assert record.owner == record.history[-1].host, facts
            if record.id in self.seeds:
                done_on = runs.get(self.seeds[record.id], [])
                assert len(done_on) <= len(record.history), f"{facts}: ran {len(done_on)} times on {done_on}"
                if state is State.SUCCEEDED:
                    assert record.history[-1].host in done_on, f"{facts}: committed run not on record ({done_on})"

    def check_clean(self) -> None:
        """Nothing left in the queue, no claims, no cancel markers."""
        for name, prefix in (
            ("queue", self.keys.queue()),
            ("claims", self.keys.claims()),
            ("cancel", self.keys.cancels()),
        ):
            left = [kv.key.decode() for kv in self.registry.range(prefix).kvs]
            assert not left, f"{name} keys left behind: {left}"
