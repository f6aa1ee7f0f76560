"""``openrange-mesh wait``: block until episodes finish; succeed only if they all succeeded."""

from __future__ import annotations

import time

import click

from ..model import EpisodeRecord
from ..model.views import host_of, summary
from .common import Mesh, dump_json, fail, out_console, output_option, pass_mesh, read_ids, span
from .progress import Tracked, track
from .records import cells, state_style
from .table import StreamTable

SHOWN_FAILURES = 20


@click.command("wait", short_help="Wait for episodes with live progress; exit 0 if all succeeded.")
@click.argument("ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every episode in the namespace (as listed now).")
@click.option("--timeout", type=click.FloatRange(min=0), metavar="SECONDS", help="Give up after this long (exit 1).")
@output_option("table", "json")
@pass_mesh
def command(mesh: Mesh, ids: tuple[str, ...], everything: bool, timeout: float | None, output: str) -> None:
    """Wait for episodes to finish, with live progress (done, running, pending, failed).

    IDS may include '-' to read ids from stdin, one per line. Exits 0 only if every awaited
    episode succeeded; 1 if any failed, was cancelled or lost, or --timeout passed first.
    With -o json, prints the awaited episodes' records as a JSON array at the end.

    \b
    Examples:
      openrange-mesh wait 000000002a-0000-gpu7 000000002a-0001-gpu7
      openrange-mesh submit --runtime sleep -p seconds=1 -n 8 | openrange-mesh wait -
      openrange-mesh wait --all --timeout 600
    """
    if everything == bool(ids):
        raise click.UsageError("give episode IDS or --all (not both)")
    known: dict[str, EpisodeRecord] = {}
    if everything:
        known = {r.id: r for r, _ in mesh.catalog().episodes()}
        wanted = list(known)
    else:
        wanted = read_ids(ids)
    if not wanted:
        click.echo("nothing to wait for", err=True)
        return
    tracked = track(mesh.client(), wanted, timeout=timeout, known=known)
    report(tracked, output)
    if tracked.unfinished:
        fail(
            f"timed out after {span(timeout)}: {len(tracked.unfinished)} of {len(wanted)} episodes not finished "
            f"(first: {tracked.unfinished[0]})"
        )
    if tracked.failures:
        fail(f"{len(tracked.failures)} of {len(wanted)} episodes did not succeed")


def report(tracked: Tracked, output: str) -> None:
    """Print what the caller needs after a wait: every record (json), or the failures (table)."""
    if output == "json":
        click.echo(dump_json([summary(r) for r in tracked.finished.values()]))
        return
    failures = sorted(tracked.failures, key=lambda r: r.id)
    if not failures:
        return
    now = time.time()
    table = StreamTable(["ID", "STATE", "HOST", "ERROR"], out_console(), style=state_style)
    table.write([[r.id, r.state.value, host_of(r) or "-", cells(r, now)[-1]] for r in failures[:SHOWN_FAILURES]])
    if len(failures) > SHOWN_FAILURES:
        click.echo(f"... and {len(failures) - SHOWN_FAILURES} more (openrange-mesh ls --state failed)")
