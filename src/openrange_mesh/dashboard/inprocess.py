"""The dashboard for one process's own episodes: ``EpisodeService(dashboard=...)`` (design/dashboard.md).

A ``memory://`` registry lives in its process, so no child can read it: the same app runs here,
uvicorn in a thread, always serving (there is no election on one host; ``/api/leader`` names this
server). The GIL is shared with the caller's episodes, which single-host mode accepts: its
episodes run in the caller's threads anyway.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from ..errors import ConfigError
from ..registry import Registry
from ..store import Store
from .app import build_app
from .config import DashboardConfig
from .server import bind
from .state import State

START_TIMEOUT = 20.0


class _Always:
    def __bool__(self) -> bool:
        return True


class InProcessDashboard:
    def __init__(
        self, registry: Registry, namespace: str, host_id: str, store: Store | None, bind: str = "127.0.0.1:0"
    ) -> None:
        host, _, port = bind.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"bad dashboard address {bind!r}: expected host:port (port 0: a free one)")
        self._config = DashboardConfig("", namespace, host_id, "", host.strip("[]"), int(port))
        self._state = State(self._config, _Always(), registry, store)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> str:
        import uvicorn

        try:
            sock = bind(self._config.bind_host, self._config.port)
        except OSError as exc:
            raise ConfigError(f"the dashboard cannot listen on {self._config.bind_host}: {exc}") from exc
        self.url = f"http://{self._config.bind_host}:{sock.getsockname()[1]}"
        self._state.standalone_url = self.url
        self._state.start()
        self._server = uvicorn.Server(uvicorn.Config(build_app(self._state), log_level="warning", lifespan="off"))
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve(sockets=[sock])), name="dashboard", daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(5)
        self._state.stop()
