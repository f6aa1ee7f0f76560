"""``openrange-mesh hosts``: the live agents and which one leads."""

from __future__ import annotations

import time
from collections.abc import Sequence

import click

from ..model import HostInfo
from ..model.seat import read_seat
from ..model.views import host_summary
from ..registry import Registry
from .common import Mesh, ago, dump_json, out_console, output_option, pass_mesh
from .safe import printable
from .table import StreamTable

COLUMNS = ["HOST", "LEADER", "CAPACITY", "RUNNING", "LABELS", "VERSION", "PID", "HEARTBEAT", "STARTED"]


@click.command("hosts", short_help="List live hosts and the leader.")
@output_option("table", "json")
@pass_mesh
def command(mesh: Mesh, output: str) -> None:
    """List live hosts: capacity, running episodes, labels, version, and the leader.

    A host is listed while its agent's lease is alive; an agent that stopped refreshing drops
    out within ttl seconds. HEARTBEAT is how long ago it last refreshed its lease (whole
    seconds, read from the lease's remaining ttl); STARTED is when the agent joined. A draining
    agent (SIGTERM) finishes what it runs and takes nothing new: CAPACITY says "(draining)". An
    agent that drains itself because it keeps failing (its store refuses writes, its workers
    cannot start) says why: "(draining: <reason>)"; it claims again once its checks pass.

    \b
    Examples:
      openrange-mesh hosts
      openrange-mesh hosts -o json | jq '.[] | select(.leader) | .id'
    """
    beats = sorted(mesh.catalog().heartbeats(), key=lambda item: item[0].id)
    hosts = [h for h, _ in beats]
    leader = leader_of(mesh.registry(), mesh.keys.leader())
    if output == "json":
        click.echo(dump_json([{**host_summary(h, leader), "heartbeat_age_s": age} for h, age in beats]))
        return
    table = StreamTable(COLUMNS, out_console(), style=_style)
    now = time.time()
    table.write([_cells(h, age, leader, now) for h, age in beats])
    table.close()
    if leader is None:
        click.echo("no leader elected", err=True)
    elif leader not in {h.id for h in hosts}:
        click.echo(f"leader {printable(leader)} is not among the live hosts (its record is gone)", err=True)


def leader_of(registry: Registry, key: bytes) -> str | None:
    """The host holding the leader key (a value we cannot read means unknown)."""
    kv, _ = registry.get(key)
    seat = read_seat(kv.value) if kv is not None else None
    return seat.host if seat else None


def _cells(host: HostInfo, heartbeat: int | None, leader: str | None, now: float) -> list[str]:
    labels = ",".join(f"{k}={v}" for k, v in sorted(host.labels.items())) or "-"
    return [
        host.id,
        "yes" if host.id == leader else "-",
        _capacity(host),
        str(host.running),
        labels,
        host.version or "-",
        str(host.pid or "-"),
        "expired" if heartbeat is None else f"{heartbeat}s ago",
        f"{ago(host.started_at, now)} ago" if host.started_at else "-",
    ]


def _capacity(host: HostInfo) -> str:
    if not host.draining:
        return str(host.capacity)
    return f"{host.capacity} (draining: {host.reason})" if host.reason else f"{host.capacity} (draining)"


def _style(row: Sequence[str]) -> dict[int, str]:
    return {0: "bold", 1: "bold green"} if row[1] == "yes" else {}
