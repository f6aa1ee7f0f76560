"""What the dashboard's handlers share (``State``): the config, the registry and store, the view
of the mesh, and the episode index while this agent leads."""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..keys import Keys
from ..registry import Registry
from ..store import Store
from .config import DashboardConfig
from .index import EpisodeIndex
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
