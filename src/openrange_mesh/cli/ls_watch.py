"""``ls --watch``: the listing, then its changes, followed through the registry from the listing's
revision. On a terminal the table is redrawn in place (the newest rows that fit, and counts per
state); elsewhere each changed episode is printed as one more row (one more JSON line with
``-o json``), as ``kubectl get --watch`` does. Ctrl-C ends it with exit status 0."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..ledger.catalog import EpisodeFilter
from ..model import EpisodeRecord, decode_or_none, decode_records
from ..model.views import summary
from ..registry.follow import Follower
from .common import Mesh, compact_json, out_console
from .records import COLUMNS, STATE_STYLES, WIDE_COLUMNS, cells
from .safe import printable
from .table import StreamTable

POLL_SECONDS = 0.5


def follow(
    mesh: Mesh,
    where: EpisodeFilter,
    initial: Iterable[EpisodeRecord],
    revision: int,
    output: str,
    limit: int | None,
) -> None:
    follower = Follower(mesh.registry(), mesh.keys.episodes(), prev_kv=True)  # a deleted group's members
    follower.start(revision)
    console = out_console()
    try:
        if console.is_terminal and output in ("table", "wide"):
            _redraw(console, follower, where, initial, output == "wide", limit)
        else:
            _append(console, follower, where, initial, output)
    except KeyboardInterrupt:
        pass  # the way to stop watching: not an error
    finally:
        follower.close()


def _changes(follower: Follower, where: EpisodeFilter) -> Iterator[tuple[str, EpisodeRecord | None]]:
    """(episode id, its record if it now matches, else None), forever."""
    prefix = follower.prefix
    while True:
        for event in follower.poll(POLL_SECONDS):
            if event.type == "put":
                records = decode_or_none(decode_records, event.kv.value, event.kv.key) or []
                for record in records:
                    yield record.id, record if where(record) else None
                continue
            gone = event.prev.value if event.prev is not None else b""
            ids = [r.id for r in decode_or_none(decode_records, gone, event.kv.key) or []] if gone else []
            for episode_id in ids or [event.kv.key[len(prefix) :].decode(errors="replace")]:
                yield episode_id, None
        yield "", None  # a heartbeat: lets the redraw refresh ages with no change


def _append(
    console: Console, follower: Follower, where: EpisodeFilter, initial: Iterable[EpisodeRecord], output: str
) -> None:
    wide = output == "wide"
    table = StreamTable(WIDE_COLUMNS if wide else COLUMNS, console)

    def emit(records: list[EpisodeRecord]) -> None:
        if output == "json":
            sys.stdout.write("".join(compact_json(summary(r)) + "\n" for r in records))
        elif output == "ids":
            sys.stdout.write("".join(printable(r.id) + "\n" for r in records))
        else:
            now = time.time()
            table.write([cells(r, now, wide=wide) for r in records])
        sys.stdout.flush()

    emit(list(initial))
    for _, record in _changes(follower, where):
        if record is not None:
            emit([record])


def _redraw(
    console: Console,
    follower: Follower,
    where: EpisodeFilter,
    initial: Iterable[EpisodeRecord],
    wide: bool,
    limit: int | None,
) -> None:
    shown: dict[str, EpisodeRecord] = {r.id: r for r in initial}
    with Live(_view(console, shown, wide, limit), console=console, auto_refresh=False) as live:
        last = time.monotonic()
        for episode_id, record in _changes(follower, where):
            if record is not None:
                shown[episode_id] = record
            elif episode_id:
                shown.pop(episode_id, None)
            if time.monotonic() - last >= POLL_SECONDS or not episode_id:
                live.update(_view(console, shown, wide, limit), refresh=True)
                last = time.monotonic()


def _view(console: Console, shown: dict[str, EpisodeRecord], wide: bool, limit: int | None) -> Group:
    room = max(console.size.height - 4, 1)
    newest = sorted(shown)[-min(room, limit or room) :]
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in WIDE_COLUMNS if wide else COLUMNS:
        table.add_column(column, no_wrap=True, overflow="ellipsis")
    now = time.time()
    for episode_id in newest:
        record = shown[episode_id]
        row = [Text(printable(cell)) for cell in cells(record, now, wide=wide)]
        row[1].stylize(STATE_STYLES[record.state])
        table.add_row(*row)
    counts = Counter(r.state.value for r in shown.values())
    status = "  ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "no episodes"
    more = f" (showing the newest {len(newest)})" if len(newest) < len(shown) else ""
    return Group(table, Text(f"{len(shown)} episodes: {status}{more}   watching, Ctrl-C to stop", style="dim"))
