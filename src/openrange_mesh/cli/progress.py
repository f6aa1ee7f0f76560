"""Watching a set of episodes finish, with a live bar on a terminal or plain lines elsewhere
(shared by ``wait`` and ``up --demo``).

Completions stream from ``MeshClient.as_completed``. The running/pending split comes from the
claim keys (``claims/<host>/<claim>`` lists the episodes each claim runs), re-read once a second
by a helper thread: a small prefix, O(running episodes), never the records themselves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from ..client.client import MeshClient
from ..errors import EpisodeNotFound, RegistryError
from ..ledger.records import claim_episode_ids
from ..model import EpisodeRecord, State
from .common import PROG, err_console
from .safe import printable

CLAIMS_SECONDS = 1.0  # how often the running count is re-read
LINE_SECONDS = 2.0  # the most often a plain progress line is printed


@dataclass
class Tally:
    total: int
    succeeded: int = 0
    failed: int = 0  # failed, cancelled or lost: finished without success
    running: int = 0

    @property
    def done(self) -> int:
        return self.succeeded + self.failed

    @property
    def pending(self) -> int:
        return max(self.total - self.done - self.running, 0)

    def line(self) -> str:
        return (
            f"{self.done}/{self.total} done ({self.succeeded} succeeded, {self.failed} failed), "
            f"{self.running} running, {self.pending} pending"
        )


@dataclass
class Tracked:
    """How a wait ended: every finished record by id, and the ids still unfinished."""

    finished: dict[str, EpisodeRecord]
    unfinished: list[str]
    tally: Tally

    @property
    def failures(self) -> list[EpisodeRecord]:
        return [r for r in self.finished.values() if r.state is not State.SUCCEEDED]


class _View:
    """A rich progress bar on a terminal (stderr), else a plain line when the counts change."""

    def __init__(self, title: str, total: int) -> None:
        console = err_console()
        self.title = title
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self._last_line = ""
        self._last_at = 0.0
        if console.is_terminal:
            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=console,
            )
            self.task = self.progress.add_task(title, total=total, detail="")
            self.progress.start()

    def show(self, tally: Tally, *, final: bool = False) -> None:
        if self.progress is not None and self.task is not None:
            detail = (
                f"[green]{tally.succeeded} ok[/] [red]{tally.failed} failed[/] "
                f"[cyan]{tally.running} running[/] {tally.pending} pending"
            )
            self.progress.update(self.task, completed=tally.done, detail=detail)
            return
        line = tally.line()
        now = time.monotonic()
        if line != self._last_line and (final or now - self._last_at >= LINE_SECONDS):
            click.echo(f"{self.title}: {line}", err=True)
            self._last_line, self._last_at = line, now

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


@dataclass
class _Tracker:
    client: MeshClient
    tally: Tally
    remaining: set[str]
    view: _View
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    _failing: bool = False

    def count_running(self) -> None:
        """The helper thread: re-read the claims, redraw; until stopped."""
        next_read = 0.0
        while not self.stop.is_set():
            if time.monotonic() >= next_read:
                self._read_claims()
                next_read = time.monotonic() + CLAIMS_SECONDS
            with self.lock:
                self.view.show(self.tally)
            self.stop.wait(0.2)

    def _read_claims(self) -> None:
        keys = self.client.keys
        try:
            claims = self.client.registry.range(keys.claims())
        except RegistryError as exc:  # the watch side reports outages; here one line is enough
            if not self._failing:
                click.echo(f"{PROG}: warning: cannot read claims: {printable(str(exc))}", err=True)
            self._failing = True
            return
        self._failing = False
        claimed = {i for kv in claims.kvs for i in claim_episode_ids(kv)}
        with self.lock:
            self.tally.running = len(self.remaining & claimed)

    def finish(self, record: EpisodeRecord) -> None:
        with self.lock:
            if record.id not in self.remaining:
                return
            self.remaining.discard(record.id)
            if record.state is State.SUCCEEDED:
                self.tally.succeeded += 1
            else:
                self.tally.failed += 1
            self.tally.running = min(self.tally.running, len(self.remaining))  # the next claims read refines it
            self.view.show(self.tally)


def track(
    client: MeshClient,
    ids: Iterable[str],
    *,
    timeout: float | None = None,
    title: str = "wait",
    known: Mapping[str, EpisodeRecord] | None = None,
) -> Tracked:
    """Wait until every episode in ``ids`` is finished or ``timeout`` passes, showing progress.
    ``known`` may hold records already read (``wait --all`` has them from its listing)."""
    wanted = list(dict.fromkeys(ids))
    records = dict(known or {})
    unread = [i for i in wanted if i not in records]
    records.update({i: v.record for i, v in client.ledger.read(unread).items()})
    missing = [i for i in wanted if i not in records]
    if missing:
        raise EpisodeNotFound(missing[0])
    finished = {i: records[i] for i in wanted if records[i].state.is_terminal}
    tally = Tally(total=len(wanted))
    tally.succeeded = sum(r.state is State.SUCCEEDED for r in finished.values())
    tally.failed = len(finished) - tally.succeeded
    tally.running = sum(records[i].state is State.RUNNING for i in wanted if i not in finished)
    tracker = _Tracker(client, tally, {i for i in wanted if i not in finished}, _View(title, len(wanted)))
    helper = threading.Thread(target=tracker.count_running, name="wait-claims", daemon=True)
    helper.start()
    try:
        if tracker.remaining:
            for record in client.as_completed(sorted(tracker.remaining), timeout=timeout):
                finished[record.id] = record
                tracker.finish(record)
    finally:
        tracker.stop.set()
        helper.join()
        tracker.view.show(tally, final=True)
        tracker.view.close()
    unfinished = [i for i in wanted if i not in finished]
    return Tracked(finished, unfinished, tally)
