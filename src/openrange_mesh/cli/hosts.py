"""``openrange-mesh hosts``: the live agents and which one leads."""

from __future__ import annotations

import time
from collections.abc import Sequence

import click

from ..model import HostInfo, unpack
from ..registry import Registry
from .common import Mesh, ago, dump_json, out_console, output_option, pass_mesh
from .records import host_summary
from .table import StreamTable

COLUMNS = ["HOST", "LEADER", "CAPACITY", "RUNNING", "LABELS", "VERSION", "PID", "STARTED"]


@click.command("hosts", short_help="List live hosts and the leader.")
@output_option("table", "json")
@pass_mesh
def command(mesh: Mesh, output: str) -> None:
    """List live hosts: capacity, running episodes, labels, version, and the leader.

    A host is listed while its agent's lease is alive, so every listed host has heartbeated
    within its ttl; an agent that stopped refreshing drops out within ttl seconds. STARTED is
    the time the agent last wrote its host record (the registry does not expose a lease's
    remaining ttl to clients, so no per-host heartbeat age is shown).

    \b
    Examples:
      openrange-mesh hosts
      openrange-mesh hosts -o json | jq '.[] | select(.leader) | .id'
    """
    hosts = sorted(mesh.catalog().hosts(), key=lambda h: h.id)
    leader = leader_of(mesh.registry(), mesh.keys.leader())
    if output == "json":
        click.echo(dump_json([host_summary(h, leader) for h in hosts]))
        return
    table = StreamTable(COLUMNS, out_console(), style=_style)
    now = time.time()
    table.write([_cells(h, leader, now) for h in hosts])
    table.close()
    if leader is None:
        click.echo("no leader elected", err=True)
    elif leader not in {h.id for h in hosts}:
        click.echo(f"leader {leader} is not among the live hosts (its record is gone)", err=True)


def leader_of(registry: Registry, key: bytes) -> str | None:
    """The host holding the leader key (tolerant: a value we cannot read means unknown)."""
    kv, _ = registry.get(key)
    if kv is None:
        return None
    try:
        data = unpack(kv.value)
    except Exception:  # CorruptRecord or worse: the leader is unknown, not an error
        return None
    host = data.get("host") if isinstance(data, dict) else None
    return str(host) if host else None


def _cells(host: HostInfo, leader: str | None, now: float) -> list[str]:
    labels = ",".join(f"{k}={v}" for k, v in sorted(host.labels.items())) or "-"
    return [
        host.id,
        "yes" if host.id == leader else "-",
        str(host.capacity),
        str(host.running),
        labels,
        host.version or "-",
        str(host.pid or "-"),
        f"{ago(host.started_at, now)} ago" if host.started_at else "-",
    ]


def _style(row: Sequence[str]) -> dict[int, str]:
    return {0: "bold", 1: "bold green"} if row[1] == "yes" else {}
