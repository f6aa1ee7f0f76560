"""``openrange-mesh snapshot put|ls|rm``: worlds and checkpoints in the mesh's store, by content."""

from __future__ import annotations

import sys
import time

import click

from ..client import snapshots
from .common import Mesh, ago, dump_json, fail, out_console, output_option, pass_mesh, store_option
from .table import StreamTable


@click.group("snapshot", short_help="Put, list and remove snapshots (worlds, checkpoints) in the store.")
def command() -> None:
    """Snapshots live in the mesh's store by content (sha256) and are uploaded once; a name
    points at one. A spec names a snapshot by its digest or its name ("snapshot": "world-v3");
    submit pins a name to the digest it points at then. Each host downloads a snapshot at most
    once, into its cache (openrange-agent --cache-dir, --cache-size).

    \b
    Examples:
      openrange-mesh snapshot put ./worlds/maze-7 --name maze-7
      openrange-mesh snapshot put policy.pt --name ppo-7-iter-120
      openrange-mesh snapshot ls
      openrange-mesh snapshot rm maze-7
    """


@command.command("put")
@click.argument("path", type=click.Path(exists=True, dir_okay=True, allow_dash=True))
@click.option("--name", help="Point this name at it (a name moved later does not move submitted episodes).")
@store_option()
@output_option("text", "json")
@pass_mesh
def put(mesh: Mesh, path: str, name: str | None, store_url: str | None, output: str) -> None:
    """Store a file, a directory (packed the same way every time: the same tree, the same digest)
    or '-' (stdin), once, and print its digest."""
    store = mesh.store(store_url)
    assert store is not None  # required
    source = sys.stdin.buffer if path == "-" else path
    done = snapshots.put(mesh.registry(), mesh.keys, store, source, name)
    if output == "json":
        click.echo(dump_json({"digest": done.digest, "size": done.size, "kind": done.kind, "name": name}))
    else:
        click.echo(done.digest)


@command.command("ls")
@output_option("table", "json")
@pass_mesh
def ls(mesh: Mesh, output: str) -> None:
    """List snapshot names and the digests they point at."""
    named = snapshots.names(mesh.registry(), mesh.keys)
    if output == "json":
        click.echo(
            dump_json(
                [
                    {"name": n.name, "digest": n.digest, "size": n.size, "kind": n.kind, "created_at": n.created_at}
                    for n in named
                ]
            )
        )
        return
    table = StreamTable(["NAME", "DIGEST", "SIZE", "KIND", "AGE"], out_console())
    now = time.time()
    table.write([[n.name, n.digest, f"{n.size:,}", n.kind, ago(n.created_at, now)] for n in named])
    table.close()


@command.command("rm")
@click.argument("name")
@pass_mesh
def rm(mesh: Mesh, name: str) -> None:
    """Remove a name. Its blob stays while a pending or running episode uses it, and goes with
    the leader's next collection after its grace period once nothing refers to it."""
    if not snapshots.remove(mesh.registry(), mesh.keys, name):
        fail(f"no snapshot named {name!r}")
