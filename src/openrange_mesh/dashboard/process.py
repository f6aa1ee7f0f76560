"""The agent's side of its HTTP server: a child process (design/dashboard.md).

A child, not a thread: following every record of the mesh and serving pages is Python work that
would take the GIL from the agent's loop. The agent shares two cells with it (``Serving``):
whether it leads, which its loop sets, and until when its lease surely lives
(``time.monotonic()``, one clock for every process of a Linux machine), which its lease keeper
moves on each refresh. The child serves only while both say so: a deposed leader stops serving
at once, whatever its child's own watch has seen yet, and so does one that is stopped
(SIGSTOP) or whose loop hangs, the moment its lease may have expired. The child dies with the
agent (PR_SET_PDEATHSIG), so a killed leader's dashboard goes with it. Its registry shares the
agent's table of when etcd last answered (``Registry.share_answers``): the agent's keepalive
proves the endpoint alive to the child's quiet watches, so an idle child sends etcd nothing.
"""

from __future__ import annotations

import logging
import multiprocessing
import socket
import time
from multiprocessing.process import BaseProcess
from typing import Any

from ..errors import ConfigError
from .config import DashboardConfig

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0  # seconds for the child to import its server stack and bind its port
_CONTEXT = multiprocessing.get_context("spawn")  # a clean process: the agent's threads stay behind


class DashboardProcess:
    """Threads: the agent's loop only."""

    def __init__(self, config: DashboardConfig, advertise: str = "", answers: Any = None) -> None:
        self.config = config
        self.advertise = advertise
        self.answers = answers  # the agent's registry's table of etcd's answers (Registry.share_answers)
        self.url = ""
        self.serving = Serving(_CONTEXT.RawValue("b", 0), _CONTEXT.RawValue("d", 0.0))
        self._process: BaseProcess | None = None

    def start(self) -> str:
        """Start the child; its URL once it listens. ``ConfigError`` when it cannot (the port
        is taken, the host cannot be bound)."""
        from .server import main  # the child imports the server stack, not the agent

        receive, send = _CONTEXT.Pipe(duplex=False)
        self._process = _CONTEXT.Process(
            target=main, args=(self.config, send, self.serving, self.answers), name="dashboard", daemon=True
        )
        self._process.start()
        send.close()
        if not receive.poll(START_TIMEOUT):
            self.stop()
            raise ConfigError(f"the dashboard did not start within {START_TIMEOUT:g} s")
        try:
            port = receive.recv()
        except EOFError:
            port = None
        if not isinstance(port, int):
            self.stop()
            where = f"{self.config.bind_host}:{self.config.port}"
            raise ConfigError(f"the dashboard cannot listen on {where}: {port or 'it exited'}")
        self.url = self.advertise.rstrip("/") or f"http://{_reachable(self.config.bind_host)}:{port}"
        log.info("dashboard server at %s", self.url)
        return self.url

    def stop(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(5)


class Serving:
    """Whether this agent's server may serve the dashboard: it leads (the loop writes), and its
    lease surely lives (the lease keeper writes). Two cells, one writer each: no lock."""

    def __init__(self, leading: Any, lease_until: Any) -> None:
        self._leading = leading
        self._lease_until = lease_until

    def lead(self, leading: bool) -> None:
        if bool(self._leading.value) != leading:
            self._leading.value = int(leading)

    def lease_lives_until(self, monotonic: float) -> None:
        self._lease_until.value = monotonic

    def __bool__(self) -> bool:
        return bool(self._leading.value) and time.monotonic() < self._lease_until.value


def _reachable(bind_host: str) -> str:
    """The name peers and browsers use for this host when it listens on every address."""
    if bind_host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return f"[{bind_host}]" if ":" in bind_host else bind_host
