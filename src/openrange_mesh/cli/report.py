"""``openrange-mesh report``: what a namespace did, from one scan of etcd (no leader needed)."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from ..dashboard import report
from .common import Mesh, out_console, pass_mesh, span, stamp
from .safe import printable, safe_json
from .table import StreamTable

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_DURATIONS = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
ERRORS_SHOWN = 10
_SPARKS = "▁▂▃▄▅▆▇█"


def parse_since(text: str, now: float) -> float:
    """``--since``: a duration back from now (``90s``, ``30m``, ``2h``, ``1d12h``, ``1w``) or an
    ISO 8601 time (``2026-12-03T08:00:00Z``; without an offset, local time). Unix seconds."""
    value = text.strip()
    if _DURATIONS.fullmatch(value):
        return now - sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(value))
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: expected a duration (30m, 2h, 1d12h) or an ISO time (2026-12-03T08:00:00Z)",
            param_hint="--since",
        ) from None


@click.command("report", short_help="Summarise a run: states, hosts, durations, errors (text, -o FILE.html|.json).")
@click.option("--since", metavar="DURATION|ISO", help="Only episodes not finished before then (2h, 1d, an ISO time).")
@click.option(
    "-o",
    "--output",
    "output",
    metavar="FILE.html|FILE.json|-",
    help="Write the report to a file: .html (one self-contained page) or .json; '-' prints JSON.",
)
@pass_mesh
def command(mesh: Mesh, since: str | None, output: str | None) -> None:
    """Summarise what the namespace's episodes did, read from etcd at one revision (no agent
    needs to run): totals by state, per host (attempts, succeeded, failed, time busy),
    durations (p50/p90/p99/max), retries and lost episodes, errors grouped by reason, and
    throughput over time. Records stream through the tally page by page, so memory stays
    bounded whatever their number.

    With --since, the episodes not finished before then: those still pending or running, and
    those that finished since. The HTML report is one file with no external links (charts
    drawn by the vendored uPlot); open it anywhere, offline.

    \b
    Examples:
      openrange-mesh report
      openrange-mesh report --since 2h
      openrange-mesh report --since 2026-12-03T08:00:00Z -o run.html
      openrange-mesh report -o - | jq '.errors[:3]'
    """
    now = time.time()
    if output is not None and output != "-" and not output.lower().endswith((".html", ".json")):
        raise click.BadParameter(f"{output!r}: name a .html or .json file, or '-' for JSON", param_hint="-o")
    start = parse_since(since, now) if since else None
    data = report.build(mesh.registry(), mesh.keys, since=start, now=now)
    if output is None:
        print_summary(data)
    elif output == "-":
        click.echo(safe_json(report.to_json(data)), nl=False)  # the same JSON, no raw controls
    else:
        text = report.to_html(data) if output.lower().endswith(".html") else report.to_json(data)
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"wrote {printable(output)} ({data['total']} episodes)", err=True)


def print_summary(data: dict[str, Any]) -> None:
    """A short text report: a few tables, every cell escaped by StreamTable."""
    console = out_console()
    since = f", since {stamp(data['since'])}" if data["since"] else ""
    console.print(f"namespace {data['namespace']} at etcd revision {data['revision']}{since}: {data['total']} episodes")
    _table(["STATE", "EPISODES"], [[state, str(n)] for state, n in data["counts"].items()])
    _table(
        ["HOST", "RUNNING", "CAPACITY", "ATTEMPTS", "SUCCEEDED", "FAILED", "BUSY"],
        [_host_cells(h) for h in data["hosts"]],
    )
    d = data["durations"]
    console.print(
        f"durations of {d['count']} finished: p50 {span(d['p50'])}  p90 {span(d['p90'])}  "
        f"p99 {span(d['p99'])}  max {span(d['max'])}"
    )
    r = data["retries"]
    console.print(
        f"retries: {r['attempts']} attempts over {r['episodes']} episodes; "
        f"{r['released']} released (not counted); lost: {data['lost']}"
    )
    console.print(_throughput(data))
    errors = data["errors"]
    if errors:
        _table(
            ["COUNT", "REASON", "EXAMPLES"],
            [[str(e["count"]), e["reason"], " ".join(e["examples"][:3])] for e in errors[:ERRORS_SHOWN]],
        )
        if len(errors) > ERRORS_SHOWN:
            console.print(f"... {len(errors) - ERRORS_SHOWN} more reasons (-o FILE.html or -o - lists them all)")


def _table(columns: Sequence[str], rows: list[list[str]]) -> None:
    out_console().print()
    table = StreamTable(columns, out_console())
    table.write(rows)
    table.close()


def _host_cells(host: dict[str, Any]) -> list[str]:
    capacity = "-" if host["capacity"] is None else str(host["capacity"])
    name = host["id"] if host["live"] else f"{host['id']} (gone)"
    return [
        name,
        str(host["running"]),
        capacity,
        str(host["attempts"]),
        str(host["succeeded"]),
        str(host["failed"]),
        span(host["busy_s"]),
    ]


def _throughput(data: dict[str, Any]) -> str:
    """One line: finishes per second, mean and peak, and a sparkline of the last 60 buckets."""
    rates = [rate for _, rate in data["finished_per_s"]]
    if not any(rates):
        return "throughput: nothing finished"
    width = data["bucket_s"]
    mean = sum(rates) / len(rates)
    top = max(rates)
    line = "".join(_SPARKS[min(int(r / top * len(_SPARKS)), len(_SPARKS) - 1)] for r in rates[-60:])
    return f"throughput: {mean:.3g}/s mean, {top:.3g}/s peak ({span(width)} buckets)  {line}"
