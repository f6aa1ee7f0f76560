"""The run report: one scan of a namespace's records into a Tally, as data, JSON or one HTML file.

Needs no leader: it reads etcd (records paged at one revision, streamed into the Tally, so
memory stays bounded whatever the number of episodes) and the live host records. The HTML is
one self-contained file: the vendored uPlot and the page's own script inlined, the data as JSON
in a ``<script type="application/json">``, and a Content-Security-Policy that lets the page load
nothing and run only those two scripts (by hash). The page sets every string from an episode
as text (``textContent``), never as HTML (design/dashboard.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from ..keys import Keys
from ..ledger.catalog import Catalog
from ..model import EpisodeRecord
from ..registry import Registry
from ..store import Store
from .tally import Tally

# Keys per range request: etcd counts the rest of the range on every page, so bigger pages
# cost less in all (cli/ls.py, scripts/bench_ls.py); 2000 records decoded are a few MB.
PAGE_SIZE = 2000
MAX_BUCKETS = 360  # points per chart over time
REPORT_JSON, REPORT_HTML = "reports/latest.json", "reports/latest.html"
_PACKAGE = resources.files(__package__)
_MARKER = re.compile(r"/\*(CSP|UPLOT_CSS|UPLOT_JS|PAGE_JS|DATA)\*/")


def build(registry: Registry, keys: Keys, *, since: float | None = None, now: float | None = None) -> dict[str, Any]:
    """The report's data: ``Tally.summary`` at one revision, its ``hosts`` widened with each
    host's attempts, outcomes and busy seconds (and whether it is live now), plus the duration
    histogram. ``since``: only episodes not finished before it (still pending or running, or
    finished at or after it); earlier moves count as one starting point."""
    now = time.time() if now is None else now
    catalog = Catalog(registry, keys)
    revision = registry.get(keys.root)[1]  # one revision for every page
    tally = Tally(window_seconds=None, bucket_seconds=1.0, max_buckets=MAX_BUCKETS, since=since)
    for record, _ in catalog.episodes(_since(since), revision=revision, page_size=PAGE_SIZE):
        tally.add(record, now)
    live = {host.id: host.capacity for host in catalog.hosts()}
    data = tally.summary(now, hosts=live, revision=revision)
    data["hosts"] = [
        {**stats, "capacity": live.get(stats["id"]), "live": stats["id"] in live}
        for stats in _with_idle(tally.host_stats(), live)
    ]
    data["histogram"] = tally.durations.rows()
    return {
        "namespace": keys.namespace,
        "generated_at": now,
        "since": since,
        "total": sum(data["counts"].values()),
        **data,
    }


def _since(since: float | None) -> Callable[[EpisodeRecord], bool] | None:
    if since is None:
        return None
    return lambda record: record.finished_at is None or record.finished_at >= since


def _with_idle(stats: list[dict[str, Any]], live: dict[str, int]) -> list[dict[str, Any]]:
    """Per-host stats, with live hosts that ran nothing in the report's span as zeros."""
    seen = {s["id"] for s in stats}
    idle = [
        {"id": h, "attempts": 0, "succeeded": 0, "failed": 0, "busy_s": 0.0, "running": 0}
        for h in live
        if h not in seen
    ]
    return sorted([*stats, *idle], key=lambda s: str(s["id"]))


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, allow_nan=False, indent=1, sort_keys=True) + "\n"


def to_html(data: dict[str, Any]) -> str:
    """One self-contained page (see the module docstring)."""
    vendor = _PACKAGE / "static" / "vendor"
    uplot_js = _inline(vendor.joinpath("uPlot.iife.min.js").read_text("utf-8"), "script")
    uplot_css = _inline(vendor.joinpath("uPlot.min.css").read_text("utf-8"), "style")
    page_js = _inline(_PACKAGE.joinpath("static", "report.js").read_text("utf-8"), "script")
    page = _PACKAGE.joinpath("templates", "report.html").read_text("utf-8")
    parts = {
        "CSP": f"default-src 'none'; script-src {_hash(uplot_js)} {_hash(page_js)}; "
        "style-src 'unsafe-inline'; img-src data:",
        "UPLOT_CSS": uplot_css,
        "UPLOT_JS": uplot_js,
        "PAGE_JS": page_js,
        "DATA": script_json(data),
    }
    # one pass over the template: nothing inserted (episode text included) is read as a marker
    return _MARKER.sub(lambda match: parts[match.group(1)], page)


def script_json(data: dict[str, Any]) -> str:
    """JSON safe inside a ``<script>`` element: ``<``, ``>`` and ``&`` as JSON escapes, so no
    episode text can close the element (``</script>``) or open a comment (``<!--``) there.
    ``JSON.parse`` reads the same strings back."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _inline(text: str, element: str) -> str:
    """A vendored or packaged file's text, checked to stay inside its element."""
    if f"</{element}" in text.lower():
        raise ValueError(f"an inlined file would close its <{element}> element")
    return text


def _hash(script: str) -> str:
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return f"'sha256-{digest}'"


def write_report(
    registry: Registry, keys: Keys, store: Store, since: float | None = None, *, now: float | None = None
) -> list[str]:
    """Build the report and put it in the shared store as ``reports/latest.json`` and
    ``reports/latest.html`` (each replaced atomically for readers: ``Store.put_bytes``).
    Returns the store paths written. For the leader, every ``--report-interval`` and at a drain.
    The page goes first: a reader that sees a new JSON finds the page of the same run beside it."""
    data = build(registry, keys, since=since, now=now)
    store.put_bytes(REPORT_HTML, to_html(data).encode("utf-8"))
    store.put_bytes(REPORT_JSON, to_json(data).encode("utf-8"))
    return [REPORT_HTML, REPORT_JSON]
