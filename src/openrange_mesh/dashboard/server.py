"""The child process every agent runs for HTTP (design §11a): uvicorn serving the Starlette app.

``main`` binds the port itself (so ``0`` means a free port, told to the agent before anything
else), opens the registry read-only (no lease) and the store, follows ``ctl/`` always, and the
episodes only while the agent says it leads (``serving``). Leadership can come and go: the index
is built when this agent starts to lead and dropped when it stops.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from ..cli.local_mesh import die_with_parent
from ..keys import Keys
from ..registry import Registry, open_registry
from ..store import Store, open_store
from .index import EpisodeIndex
from .process import DashboardConfig
from .report import write_report
from .view import MeshView

log = logging.getLogger(__name__)


class State:
    """What the app's handlers share. ``index`` exists while this agent leads.

    Threads: uvicorn's event loop runs the handlers; ``watch_serving`` (a thread) starts and
    stops the index as the agent's ``serving`` flag changes; the view and the index have
    threads of their own."""

    def __init__(self, config: DashboardConfig, serving: Any, registry: Registry, store: Store | None) -> None:
        self.config = config
        self.keys = Keys(config.namespace)
        self.registry = registry
        self.store = store
        self.view = MeshView(registry, self.keys)
        self._serving = serving
        self.index: EpisodeIndex | None = None
        self.standalone_url: str | None = None  # one process's own dashboard: it leads itself
        self._stop = threading.Event()

    @property
    def serving(self) -> bool:
        return bool(self._serving)

    def start(self) -> None:
        self.view.start()
        threading.Thread(target=self._watch_serving, name="serving", daemon=True).start()
        if self.config.report_interval and self.store is not None:
            threading.Thread(target=self._write_reports, name="reports", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self.view.stop()
        if self.index is not None:
            self.index.stop()

    def _watch_serving(self) -> None:
        """The index follows leadership, checked every 0.2 s: a new leader's page needs it
        within a second; a deposed one's memory goes back."""
        while not self._stop.wait(0.2):
            if self.serving and self.index is None:
                log.info("leading: indexing episodes")
                self.index = EpisodeIndex(self.registry, self.keys)
                self.index.start()
            elif not self.serving and self.index is not None:
                log.info("no longer leading: index dropped")
                index, self.index = self.index, None
                index.stop()

    def _write_reports(self) -> None:
        """The run report in the shared store every ``report_interval`` while leading: here,
        not in the agent, since building one reads every record (seconds at 100k)."""
        assert self.store is not None
        while not self._stop.wait(self.config.report_interval):
            if not self.serving:
                continue
            try:
                paths = write_report(self.registry, self.keys, self.store)
            except Exception as exc:  # a store or etcd hiccup: the next interval tries again
                log.warning("could not write the run report: %s", exc)
            else:
                log.info("run report written: %s", ", ".join(self.store.location(p) for p in paths))


def main(config: DashboardConfig, conn: Connection, serving: Any) -> None:
    """The child's entry point: bind, say the port, serve until the agent goes."""
    die_with_parent()
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        sock = _bind(config.bind_host, config.port)
    except OSError as exc:
        conn.send(f"{exc.strerror or exc}")
        return
    conn.send(sock.getsockname()[1])
    conn.close()
    registry = open_registry(config.registry)
    store = _store(config.store)
    state = State(config, serving, registry, store)
    state.start()
    asyncio.run(_serve(state, sock))


async def _serve(state: State, sock: socket.socket) -> None:
    import uvicorn

    from .app import build_app

    server = uvicorn.Server(uvicorn.Config(build_app(state), log_level="warning", lifespan="off"))
    await server.serve(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, reuse_port=False)
    sock.set_inheritable(True)
    return sock


def _store(url: str) -> Store | None:
    """The store for events pages; a store that cannot be opened leaves them out, not the page."""
    if not url:
        return None
    try:
        return open_store(url)
    except Exception as exc:  # the agent checked it; a page without events beats no page
        log.warning("events will not be shown: %s", exc)
        return None
