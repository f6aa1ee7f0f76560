"""What the dashboard's handlers share (``State``): the config, the registry and store, the view
of the mesh, and the episode index while this agent leads."""

from __future__ import annotations

import logging
import math
import threading
import time
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
    """What the app's handlers share. ``index`` exists while this agent leads and someone has
    asked for it within ``config.index_keep`` seconds (``want_index``).

    Threads: uvicorn's event loop runs the handlers, which call ``want_index`` (it writes
    ``_asked_at``, one float); ``watch_serving`` (a thread) is the only writer of ``index``: it
    starts and stops it as the agent's ``serving`` flag and the asks say; the view and the index
    have threads of their own."""

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
        self._asked = threading.Event()  # wakes ``_watch_serving`` when a request wants the index
        self._asked_at = -math.inf  # time.monotonic() of the last request that wanted it

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
        self._asked.set()
        self.view.stop()
        if self.index is not None:
            self.index.stop()

    def want_index(self) -> None:
        """A request needs the index: keep it, or have it built now (``answers.wait_index``
        then waits for its first listing)."""
        self._asked_at = time.monotonic()
        if self.index is None:
            self._asked.set()

    def _watch_serving(self) -> None:
        """The index follows leadership and the asks, checked every 0.2 s and at once when a
        request wants an index there is not: a deposed leader's memory goes back, and so does
        an idle one's."""
        while not self._stop.is_set():
            self._asked.wait(0.2)
            self._asked.clear()
            wanted = time.monotonic() - self._asked_at < self.config.index_keep
            if self.serving and wanted and self.index is None and not self._stop.is_set():
                log.info("leading and asked: indexing episodes")
                self.index = EpisodeIndex(self.registry, self.keys)
                self.index.start()
            elif self.index is not None and not (self.serving and wanted):
                log.info("index dropped: %s", "no longer leading" if not self.serving else "nobody asked for a while")
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
