"""``openrange-mesh logs ID``: an episode's events from the store, optionally followed."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import click

from ..client.client import get_record
from ..ledger.catalog import Catalog
from ..model import EpisodeRecord
from ..store import Store
from ..store.events import NOT_KEPT, NOT_STORED, decode_events, inline_events, read_events, tagged_for
from ..store.layout import attempt_prefix, batch_prefix, parse_events_path, shared_events_path
from .common import Mesh, compact_json, output_option, pass_mesh, stamp, store_option
from .safe import printable

POLL_SECONDS = 0.5
INLINE = "(in the record)"  # what _print_new's ``seen`` holds once it printed a record's events
NOT_KEPT_WHY = "its spec has events='none'"


@click.command("logs", short_help="Print an episode's events from the store (-f follows).")
@click.argument("episode_id", metavar="ID")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events until the episode finishes.")
@click.option("--attempt", type=click.IntRange(min=1), help="This attempt (default: the latest).")
@store_option()
@output_option("text", "json")
@pass_mesh
def command(mesh: Mesh, episode_id: str, follow: bool, attempt: int | None, store_url: str | None, output: str) -> None:
    """Print an episode's events (one per line) from the store.

    With -o json each event is printed as the JSON line it is stored as. -f follows the running
    attempt as its event chunks land, moves on to the next attempt if the episode is requeued
    (unless --attempt is given), and returns once the episode has finished.

    \b
    Examples:
      openrange-mesh logs 000000002a-0003-gpu7
      openrange-mesh logs 000000002a-0003-gpu7 --store /mnt/nfs/openrange
      OPENRANGE_STORE=s3://bucket/mesh openrange-mesh logs -f 000000002a-0003-gpu7
      openrange-mesh logs 000000002a-0003-gpu7 --attempt 1 -o json | jq .type
    """
    catalog = mesh.catalog()
    record = get_record(catalog, episode_id)
    store = Lazy(mesh, store_url)
    if not follow:
        batch, shared, inline = sources(record, attempt or record.attempt)
        which = attempt or record.attempt if batch or shared or inline is not None else attempt
        if shared == NOT_STORED:
            raise click.ClickException(
                f"the events of {printable(episode_id)} attempt {which} were not stored: its host's store refused them"
            )
        if shared == NOT_KEPT:  # not an error: the spec asked for none
            click.echo(f"the events of {printable(episode_id)} attempt {which} were not kept: {NOT_KEPT_WHY}", err=True)
            return
        if inline is not None:  # in the record: a mesh without a store has these too
            events = inline_events(inline)
        else:
            events = read_events(store.get(), episode_id, which, batch=batch, shared=shared)
        for event in events:
            click.echo(render(event, output))
        if not events:
            click.echo(
                f"no events stored for {printable(episode_id)}{f' attempt {attempt}' if attempt else ''}", err=True
            )
        return
    with contextlib.suppress(KeyboardInterrupt):  # stopping a follow is not an error
        _follow(catalog, store, record, attempt, output)


class Lazy:
    """The store, found (and required) only once an attempt's events are not in its record."""

    def __init__(self, mesh: Mesh, url: str | None) -> None:
        self._mesh, self._url = mesh, url
        self._store: Store | None = None

    def get(self) -> Store:
        if self._store is None:
            self._store = self._mesh.store(self._url)
            assert self._store is not None  # required: it raised otherwise
        return self._store


def _follow(catalog: Catalog, store: Lazy, record: EpisodeRecord, pinned: int | None, output: str) -> None:
    current = pinned or record.attempt
    seen: set[str] = set()
    while True:
        record = catalog.get(record.id)  # before listing: once it reads finished, every chunk is stored
        if pinned is None and record.attempt > current:
            _print_new(store, record, current, seen, output)
            current = record.attempt
            click.echo(f"--- attempt {current} ---", err=True)
        _print_new(store, record, current, seen, output)
        if record.state.is_terminal or (pinned is not None and record.attempt > pinned):
            return
        time.sleep(POLL_SECONDS)


def _print_new(lazy: Lazy, record: EpisodeRecord, attempt: int, seen: set[str], output: str) -> None:
    batch, shared, inline = sources(record, attempt)
    if inline is not None:  # a short attempt whose events its record holds
        if INLINE not in seen:
            seen.add(INLINE)
            for event in inline_events(inline):
                click.echo(render(event, output))
        return
    if shared == NOT_KEPT:
        if NOT_KEPT not in seen:
            seen.add(NOT_KEPT)
            click.echo(f"(attempt {attempt}: its events were not kept: {NOT_KEPT_WHY})", err=True)
        return
    store = lazy.get()
    if shared == NOT_STORED:
        if NOT_STORED not in seen:
            seen.add(NOT_STORED)
            click.echo(f"(attempt {attempt}: its events were not stored: its host's store refused them)", err=True)
        paths = []
    elif shared is not None:  # a short attempt: its events are in its worker's shared file
        path = shared_events_path(shared)
        paths = [path] if path not in seen else []
    elif batch is not None:  # a batched attempt: its events are in the batch's shared chunks
        paths = sorted(p for p in store.list(batch_prefix(batch)) if p.endswith(".jsonl") and p not in seen)
    else:
        chunks = []
        for path in store.list(attempt_prefix(record.id, attempt)):
            parsed = parse_events_path(path)
            if parsed is not None and path not in seen:
                chunks.append((parsed[2], path))
        paths = [path for _, path in sorted(chunks)]
    for path in paths:
        seen.add(path)
        for event in decode_events(store.get_bytes(path), source=store.location(path)):
            tagged = batch is not None or shared is not None
            if not tagged or tagged_for(event, record.id, attempt):
                click.echo(render(event, output))


def sources(record: EpisodeRecord, attempt: int) -> tuple[str | None, str | None, list[Any] | None]:
    """Where an attempt's events are when not in its own chunks: (the batch claim it ran in,
    the shared file of a short attempt, the events its record holds)."""
    found = record.tried(attempt)
    return (found.batch, found.events, found.inline_events) if found is not None else (None, None, None)


def render(event: dict[str, Any], output: str) -> str:
    """One event as one line: its JSON, or time, type and the other fields (escaped: the
    episode wrote them)."""
    if output == "json":
        return compact_json(event)
    rest = " ".join(f"{k}={compact_json(v)}" for k, v in event.items() if k not in ("t", "type"))
    when = stamp(event["t"]) if isinstance(event.get("t"), int | float) else "-"
    kind = event.get("type", "?")
    return printable(f"{when}  {kind if isinstance(kind, str) else compact_json(kind):<10} {rest}".rstrip())
