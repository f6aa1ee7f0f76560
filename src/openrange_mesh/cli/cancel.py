"""``openrange-mesh cancel ID...``: stop episodes, saying per id what happened."""

from __future__ import annotations

import click

from ..errors import EpisodeNotFound
from .common import Mesh, dump_json, fail, output_option, pass_mesh, read_ids
from .safe import printable

MEANING = {
    "cancelled": "cancelled (it was pending)",
    "requested": "cancel requested (it is running; its owner stops it and records it cancelled)",
    "not found": "no such episode",
}


@click.command("cancel", short_help="Cancel pending or running episodes.")
@click.argument("ids", nargs=-1, required=True)
@output_option("text", "json")
@pass_mesh
def command(mesh: Mesh, ids: tuple[str, ...], output: str) -> None:
    """Cancel episodes. A pending one is cancelled at once; a running one is stopped by its owner;
    a finished one is left as it is. IDS may include '-' to read ids from stdin, one per line.
    Exits 1 if any id does not exist.

    \b
    Examples:
      openrange-mesh cancel 000000002a-0003-gpu7
      openrange-mesh ls --state pending --label run=ppo-7 -o ids | openrange-mesh cancel -
    """
    client = mesh.client()
    outcomes: dict[str, str] = {}
    for episode_id in read_ids(ids):
        try:
            outcomes.update(client.cancel([episode_id]))
        except EpisodeNotFound:
            outcomes[episode_id] = "not found"
        if output == "text":
            outcome = outcomes[episode_id]
            click.echo(f"{printable(episode_id)}: {MEANING.get(outcome, f'already {outcome}: nothing to do')}")
    if output == "json":
        click.echo(dump_json(outcomes))
    missing = [i for i, outcome in outcomes.items() if outcome == "not found"]
    if missing:
        fail(f"{len(missing)} of {len(outcomes)} episodes not found (first: {missing[0]})")
