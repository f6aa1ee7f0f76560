"""``openrange-mesh gc``: collect now what the leader collects on its own: acked records past
their retention, and store objects no record needs (ledger/retention.py, ledger/storage_gc.py)."""

from __future__ import annotations

import click

from ..client import snapshots
from ..ledger import storage_gc
from ..ledger.retention import collect_garbage
from .common import Mesh, dump_json, output_option, pass_mesh, store_option

DAY = 86400.0


@click.command("gc", short_help="Collect old acked records and unneeded store objects now.")
@click.option(
    "--retention",
    type=click.FloatRange(min=0),
    default=7 * DAY,
    show_default=True,
    help="Seconds an acked finished record is kept (0: keep all).",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    help="Seconds a store object must be unwritten before it can go.",
)
@click.option("--dry-run", is_flag=True, help="Say what would go; delete nothing.")
@store_option()
@output_option("text", "json")
@pass_mesh
def command(mesh: Mesh, retention: float, grace: float, dry_run: bool, store_url: str | None, output: str) -> None:
    """Delete acked finished records older than --retention, then store objects that no record
    needs and that nobody wrote for --grace: the files of collected episodes, a fenced-off
    owner's late artifacts, unreferenced batch and short-episode event files, and snapshot blobs
    that no name and no pending or running episode refers to. The mesh's leader does the same
    every --store-gc-interval; this is for a mesh without agents, or now.

    \b
    Examples:
      openrange-mesh gc --dry-run
      openrange-mesh gc --retention 86400 --grace 600
    """
    registry, keys = mesh.registry(), mesh.keys
    records = 0 if dry_run or not retention else collect_garbage(registry, keys, retention)
    store = mesh.store(store_url, required=False)
    gone: dict[str, int] = {}
    if store is not None:
        names = [n.digest for n in snapshots.names(registry, keys)]
        gone = storage_gc.collect(store, storage_gc.needed(registry, keys, names), grace, dry_run=dry_run)
    if output == "json":
        click.echo(dump_json({"records": records, "store": gone, "dry_run": dry_run}))
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(
        f"records: {records} acked records older than {retention:g} s removed" if not dry_run else "records: (dry run)"
    )
    if store is None:
        click.echo("store: none recorded for this mesh (pass --store)")
    else:
        click.echo(f"store: {verb} " + ", ".join(f"{n} {kind}" for kind, n in gone.items()))
