"""``openrange-mesh artifacts ID [--get NAME]``: what an episode's runtime wrote, from the store."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

from ..client import artifacts
from ..client.artifacts import open_artifact
from ..client.client import get_record
from .common import Mesh, dump_json, fail, out_console, output_option, pass_mesh, store_option
from .safe import printable
from .table import StreamTable


@click.command("artifacts", short_help="List or fetch an episode's artifacts.")
@click.argument("episode_id", metavar="ID")
@click.option("--get", "name", metavar="NAME", help="Fetch this artifact (to --to PATH, else stdout).")
@click.option("--to", "out", metavar="PATH", help="With --get: write here instead of stdout.")
@store_option()
@output_option("table", "json")
@pass_mesh
def command(mesh: Mesh, episode_id: str, name: str | None, out: str | None, store_url: str | None, output: str) -> None:
    """List the files the attempt that ended an episode wrote into its artifacts directory
    ($OPENRANGE_ARTIFACTS while it ran), with their sizes and sha256, or fetch one (streamed).

    \b
    Examples:
      openrange-mesh artifacts 000000002a-0003-gpu7
      openrange-mesh artifacts 000000002a-0003-gpu7 --get video.mp4 --to ep3.mp4
      openrange-mesh artifacts 000000002a-0003-gpu7 -o json
    """
    record = get_record(mesh.catalog(), episode_id)
    if name is None:
        found = artifacts.listed(record)
        if output == "json":
            click.echo(
                dump_json([{"name": a.name, "size": a.size, "sha256": a.sha256, "attempt": a.attempt} for a in found])
            )
            return
        table = StreamTable(["NAME", "SIZE", "SHA256"], out_console())
        table.write([[a.name, f"{a.size:,}", a.sha256] for a in found])
        table.close()
        if not record.state.is_terminal:
            click.echo(
                f"{printable(episode_id)} has not ended: artifacts are listed once its attempt is committed", err=True
            )
        return
    store = mesh.store(store_url)
    assert store is not None  # required
    if out is None and sys.stdout.isatty():
        fail("refusing to write an artifact to a terminal: pass --to PATH (or pipe it)")
    with open_artifact(store, record, name) as reader:
        if out is None:
            shutil.copyfileobj(reader, sys.stdout.buffer)
        else:
            with Path(out).open("wb") as sink:
                shutil.copyfileobj(reader, sink)
