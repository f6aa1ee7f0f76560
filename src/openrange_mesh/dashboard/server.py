"""The child process every agent runs for HTTP (design/dashboard.md): uvicorn serving the Starlette app.

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
from multiprocessing.connection import Connection
from typing import Any

from ..lifetime import die_with_parent
from ..registry import open_registry
from ..store import Store, open_store
from .app import build_app
from .config import DashboardConfig
from .state import State

log = logging.getLogger(__name__)


def main(config: DashboardConfig, conn: Connection, serving: Any, answers: Any = None) -> None:
    """The child's entry point: bind, say the port, serve until the agent goes. ``answers``:
    the agent's registry's table of etcd's answers, shared (process.py)."""
    die_with_parent()
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        sock = bind(config.bind_host, config.port)
    except OSError as exc:
        conn.send(f"{exc.strerror or exc}")
        return
    conn.send(sock.getsockname()[1])
    conn.close()
    registry = open_registry(config.registry, answers=answers)
    store = _store(config.store)
    state = State(config, serving, registry, store)
    state.start()
    asyncio.run(_serve(state, sock))


async def _serve(state: State, sock: socket.socket) -> None:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(build_app(state), log_level="warning", lifespan="off"))
    await server.serve(sockets=[sock])


def bind(host: str, port: int) -> socket.socket:
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
