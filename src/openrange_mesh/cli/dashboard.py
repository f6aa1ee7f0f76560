"""``openrange-mesh dashboard``: where the mesh's dashboard is now (the leader's URL)."""

from __future__ import annotations

import click

from ..model.seat import read_seat
from .common import Mesh, dump_json, fail, output_option, pass_mesh
from .safe import printable


@click.command("dashboard", short_help="Print the URL of the mesh's dashboard (the leader's).")
@output_option("url", "json")
@pass_mesh
def command(mesh: Mesh, output: str) -> None:
    """Print the URL of the dashboard the mesh's leader serves. It moves when the leader does:
    ask again (or let an open page follow by itself).

    \b
    Exit status: 0 with a URL; 1 when there is no leader or it serves no dashboard; 3 when
    etcd cannot be reached.

    \b
    Examples:
      openrange-mesh dashboard
      xdg-open "$(openrange-mesh dashboard)"
      openrange-mesh dashboard -o json
    """
    kv, _ = mesh.registry().get(mesh.keys.leader())
    seat = read_seat(kv.value, kv.create_revision) if kv else None
    if seat is None:
        fail("no leader elected in namespace " + mesh.namespace + (": its key cannot be read" if kv else ""))
    if seat.url is None:
        fail(f"the leader {seat.host} serves no dashboard (started with --no-dashboard, or an older version)")
    if output == "json":
        click.echo(dump_json({"url": seat.url, "host": seat.host, "term": seat.term}))
    else:
        click.echo(printable(seat.url))
