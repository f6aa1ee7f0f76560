"""``openrange-mesh show ID``: one episode's record, attempts, timeline and artifact locations."""

from __future__ import annotations

import time
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from ..client.client import get_record
from ..errors import StoreError
from ..ledger.records import spent_attempts
from ..model import EpisodeRecord
from ..model.views import detail
from ..store import Store
from ..store.events import NOT_KEPT, NOT_STORED
from ..store.layout import attempt_prefix, batch_prefix, shared_events_path
from .common import (
    Mesh,
    ago,
    dump_json,
    out_console,
    output_option,
    pass_mesh,
    span,
    stamp,
    store_option,
)
from .logs import NOT_KEPT_WHY, sources
from .records import STATE_STYLES, duration_of, state_style, timeline
from .safe import printable
from .table import StreamTable


@click.command("show", short_help="Show one episode: record, attempts, timeline, artifacts.")
@click.argument("episode_id", metavar="ID")
@store_option()
@output_option("text", "json")
@pass_mesh
def command(mesh: Mesh, episode_id: str, store_url: str | None, output: str) -> None:
    """Show one episode: state, attempts (host, start, finish, outcome, error), owner, timeline,
    spec, result, and where each attempt's events and artifacts are (in the mesh's store, or
    --store).

    \b
    Examples:
      openrange-mesh show 000000002a-0003-gpu7
      openrange-mesh show 000000002a-0003-gpu7 --store /mnt/nfs/openrange -o json
    """
    record = get_record(mesh.catalog(), episode_id)
    store = mesh.store(store_url, required=False)
    artifacts = None
    if store is not None:
        try:
            artifacts = attempt_files(store, record)
        except StoreError as exc:  # the record still shows: only where its files are does not
            click.echo(f"(its files in the store cannot be listed: {printable(str(exc))})", err=True)
    if output == "json":
        data = detail(record)
        data["timeline"] = [{"at": at, "event": what} for at, what in timeline(record)]
        data["artifacts"] = artifacts
        click.echo(dump_json(data))
        return
    _print(out_console(), record, artifacts)


_NO_FILE = {NOT_STORED: "not stored: its host's store refused them", NOT_KEPT: f"not kept: {NOT_KEPT_WHY}"}


_WHERE_EVENTS = (("batch_events", "its batch's events"), ("shared_events", "its events"), ("events", "events"))


def attempt_files(store: Store, record: EpisodeRecord) -> list[dict[str, Any]]:
    """For every attempt: where its directory is, and the objects in it."""
    out = []
    for n in range(1, record.attempt + 1):
        prefix = attempt_prefix(record.id, n)
        files = [path[len(prefix) :] for path in store.list(prefix)]
        item: dict[str, Any] = {"attempt": n, "location": store.location(prefix), "files": files}
        batch, shared, inline = sources(record, n)
        if inline is not None:  # a short attempt: its record holds its events
            item["events_in_record"] = len(inline)
        if shared in _NO_FILE:  # its record says why there are none; no location to name
            item["events"] = _NO_FILE[shared]
        elif shared is not None:  # a short attempt: its events are in its worker's shared file
            item["shared_events"] = store.location(shared_events_path(shared))
        elif batch is not None:  # its events are in the batch's shared chunks
            item["batch_events"] = store.location(batch_prefix(batch))
        out.append(item)
    return out


def _print(console: Console, record: EpisodeRecord, artifacts: list[dict[str, Any]] | None) -> None:
    now = time.time()
    spec = record.spec
    fields: list[tuple[str, str | Text]] = [
        ("id", record.id),
        ("state", Text(record.state.value, style=STATE_STYLES[record.state])),
        ("runtime", spec.runtime),
        ("attempt", _attempts(record)),
        ("owner", (record.owner or "-") + (f" (claim {record.claim})" if record.claim else "")),
        ("submitter", record.submitter or "-"),
        ("created", f"{stamp(record.created_at)} ({ago(record.created_at, now)} ago)"),
        ("started", stamp(record.started_at)),
        ("finished", stamp(record.finished_at)),
        ("duration", span(duration_of(record, now))),
        ("acked", stamp(record.acked_at)),
    ]
    if record.error:  # its later lines indented under its first
        fields.append(("error", Text(printable(record.error, lines=True).replace("\n", "\n" + " " * 11))))
    for name, value in fields:  # a str holds what the record says: escaped
        shown = printable(value) if isinstance(value, str) else value
        console.print(Text.assemble((f"{name + ':':<11}", "bold"), shown))
    _section(console, "spec", dump_json(spec.to_dict()))
    _section(console, "result", dump_json(record.result) if record.result is not None else "-")
    if record.history:
        console.print(Text("attempts:", style="bold"))
        table = StreamTable(
            ["  #", "OUTCOME", "HOST", "STARTED", "FINISHED", "DURATION", "ERROR"], console, style=state_style
        )
        table.write(
            [
                [
                    f"  {a.n}",
                    a.outcome or "running",
                    a.host,
                    stamp(a.started_at),
                    stamp(a.finished_at),
                    span((a.finished_at or now) - a.started_at),
                    (a.error or "-").splitlines()[0],
                ]
                for a in record.history
            ]
        )
    console.print(Text("timeline:", style="bold"))
    for at, what in timeline(record):
        console.print(f"  {stamp(at)}  {printable(what)}")
    if artifacts is not None:
        console.print(Text("artifacts:", style="bold"))
        for item in artifacts:
            listing = f"{len(item['files'])} files" if item["files"] else "nothing stored"
            console.print(f"  attempt {item['attempt']}: {printable(item['location'])} ({listing})")
            for key, what in _WHERE_EVENTS:
                if key in item:
                    console.print(f"    {what}: {printable(item[key])}")


def _section(console: Console, name: str, body: str) -> None:
    console.print(Text(f"{name}:", style="bold"))
    console.print("\n".join("  " + line for line in printable(body, lines=True).split("\n")))


def _attempts(record: EpisodeRecord) -> str:
    """ "2 of 3", or with attempts the infrastructure ended, which do not count (ledger.release):
    "4 (2 of 3 counted; 2 released by failing hosts)"."""
    spent = spent_attempts(record)
    released = record.attempt - spent
    if not released:
        return f"{record.attempt} of {record.spec.max_attempts}"
    return f"{record.attempt} ({spent} of {record.spec.max_attempts} counted; {released} released by failing hosts)"
