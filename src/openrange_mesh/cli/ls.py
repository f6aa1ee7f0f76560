"""``openrange-mesh ls``: every episode in the namespace, read from etcd at one revision."""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterable, Iterator

import click

from ..ledger.catalog import EpisodeFilter
from ..model import EpisodeRecord, State
from ..model.views import summary
from .common import Mesh, compact_json, out_console, output_option, parse_pairs, pass_mesh
from .records import COLUMNS, WIDE_COLUMNS, cells, state_style
from .safe import printable
from .table import StreamTable

FLUSH_SECONDS = 0.25  # a selective filter still shows its first rows promptly
# Keys per etcd range request. etcd counts every key left in the range on each paged request, so
# small pages cost O(n^2 / page) over the listing: 500 took 3.3 s for 100k keys, 2000 took 2.1 s,
# one request for everything 2.2 s (and 7x the memory). See scripts/bench_ls.py.
LS_PAGE_SIZE = 2000


@click.command("ls", short_help="List episodes cluster-wide (filters, -o json, --watch).")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in State]),
    help="Only episodes in this state (repeatable).",
)
@click.option("--host", "hosts", multiple=True, help="Only episodes running or last run on this host (repeatable).")
@click.option("--runtime", "runtimes", multiple=True, help="Only episodes of this runtime (repeatable).")
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Only episodes with this label (repeatable).")
@click.option("--submitter", help="Only episodes submitted by this client.")
@click.option("--limit", type=click.IntRange(min=1), help="Stop after this many episodes.")
@output_option("table", "wide", "json", "ids")
@click.option("-w", "--watch", is_flag=True, help="Keep following changes (Ctrl-C to stop).")
@click.option(
    "--page-size",
    type=click.IntRange(min=0),
    default=LS_PAGE_SIZE,
    show_default=True,
    hidden=True,
    help="Keys per etcd range request (0: all in one request).",
)
@pass_mesh
def command(
    mesh: Mesh,
    states: tuple[str, ...],
    hosts: tuple[str, ...],
    runtimes: tuple[str, ...],
    labels: tuple[str, ...],
    submitter: str | None,
    limit: int | None,
    output: str,
    watch: bool,
    page_size: int,
) -> None:
    """List episodes, cluster-wide, straight from etcd (no agent needs to run).

    Every page is read at the revision of the first, so the listing is one moment in time; rows
    stream page by page, so 100k episodes list in bounded memory. HOST is the owner of a running
    episode, else the host of its last attempt; AGE counts from submission; DURATION is the
    current attempt's run time.

    \b
    Examples:
      openrange-mesh ls
      openrange-mesh ls --state failed -o wide
      openrange-mesh ls --label run=ppo-7 --state pending --state running
      openrange-mesh ls -o json | jq '.[] | select(.error) | .id'
      openrange-mesh ls --state pending -o ids | openrange-mesh cancel -
      openrange-mesh ls --watch --host gpu7
    """
    where = EpisodeFilter(
        states=frozenset(State(s) for s in states),
        hosts=frozenset(hosts),
        runtimes=frozenset(runtimes),
        labels=parse_pairs(labels, "--label"),
        submitter=submitter,
    )
    if limit and page_size:
        page_size = min(page_size, max(limit, 100))  # --limit 5 need not fetch 2000 records
    catalog = mesh.catalog()
    revision = mesh.registry().get(mesh.keys.root)[1]
    records: Iterator[EpisodeRecord] = (r for r, _ in catalog.episodes(where, revision=revision, page_size=page_size))
    if limit:
        records = itertools.islice(records, limit)
    if not watch:
        render(records, output, page_size or LS_PAGE_SIZE)
        return
    from .ls_watch import follow

    follow(mesh, where, records, revision, output, limit)


def render(records: Iterable[EpisodeRecord], output: str, batch: int) -> None:
    """Print ``records`` as they arrive, flushing every ``batch`` rows or FLUSH_SECONDS."""
    if output == "json":
        _render_json(records, batch)
        return
    if output == "ids":
        for chunk in batches(records, batch):
            sys.stdout.write("".join(printable(r.id) + "\n" for r in chunk))
        return
    wide = output == "wide"
    table = StreamTable(WIDE_COLUMNS if wide else COLUMNS, out_console(), style=state_style)
    for chunk in batches(records, batch):
        now = time.time()
        table.write([cells(r, now, wide=wide) for r in chunk])
    table.close()


def _render_json(records: Iterable[EpisodeRecord], batch: int) -> None:
    first = True
    for chunk in batches(records, batch):
        lines = [compact_json(summary(r)) for r in chunk]
        sys.stdout.write(("[\n" if first else ",\n") + ",\n".join(lines))
        sys.stdout.flush()
        first = False
    sys.stdout.write("[]\n" if first else "\n]\n")


def batches(records: Iterable[EpisodeRecord], size: int) -> Iterator[list[EpisodeRecord]]:
    """Lists of at most ``size`` records, cut early when FLUSH_SECONDS pass between rows."""
    chunk: list[EpisodeRecord] = []
    started = time.monotonic()
    for record in records:
        chunk.append(record)
        if len(chunk) >= size or time.monotonic() - started >= FLUSH_SECONDS:
            yield chunk
            chunk, started = [], time.monotonic()
    if chunk:
        yield chunk
