"""``openrange-mesh report`` and ``write_report``: records in a real etcd, the real command (click's
runner), the report's numbers; the HTML opened from ``file://`` in headless Chromium."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from openrange_mesh.cli.main import cli
from openrange_mesh.cli.report import parse_since
from openrange_mesh.client.client import MeshClient
from openrange_mesh.dashboard import report
from openrange_mesh.dashboard.tally import Tally
from openrange_mesh.keys import Keys
from openrange_mesh.model import Attempt, EpisodeRecord, EpisodeSpec, HostInfo, State
from openrange_mesh.registry import Put, open_registry
from openrange_mesh.store import open_store

from .etcdkit import EtcdServer

NOW = time.time()
SPEC = EpisodeSpec("sleep")
NASTY = "\x1b[2J</script><script>window.pwned=1</script><img src=x onerror=window.pwned=2> after 7 s \u202e\x9b"


def finished(k: int, state: State, host: str, seconds: float, error: str | None = None, **more: Any) -> EpisodeRecord:
    end = NOW - 600 + k
    history = (*more.pop("before", ()), Attempt(1, host, end - seconds, end, state.value, error))
    return EpisodeRecord(
        f"00000000{k:02d}-0000-t",
        SPEC,
        state,
        created_at=end - seconds - 1,
        started_at=end - seconds,
        finished_at=end,
        error=error,
        history=history,
        **more,
    )


def records() -> list[EpisodeRecord]:
    """10 succeeded (1..10 s) on h1 and h2, 3 timeouts on h2, 1 nasty error on h1, 1 lost
    after a retry, 1 running on h1, 1 finished long ago (for --since)."""
    out = [finished(k, State.SUCCEEDED, "h1" if k % 2 else "h2", float(k)) for k in range(1, 11)]
    out += [finished(k, State.FAILED, "h2", 30.0, f"timed out after {k} s\nTraceback") for k in (11, 12, 13)]
    out.append(finished(14, State.FAILED, "h1", 2.0, NASTY))
    retried = Attempt(1, "h3", NOW - 500, NOW - 490, "retried", "host h3 died")
    lost = finished(15, State.LOST, "h2", 5.0, "host h2 died; all 2 attempts spent", before=(retried,))
    out.append(lost.replace(attempt=2))
    out.append(
        EpisodeRecord(
            "0000000016-0000-t",
            SPEC,
            State.RUNNING,
            owner="h1",
            created_at=NOW - 20,
            started_at=NOW - 10,
            history=(Attempt(1, "h1", NOW - 10),),
        )
    )
    old = finished(17, State.SUCCEEDED, "h1", 4.0)
    out.append(old.replace(created_at=NOW - 86400, finished_at=NOW - 86000, started_at=NOW - 86004))
    return out


@pytest.fixture
def namespace(etcd: EtcdServer) -> Iterator[str]:
    """A namespace with ``records()``, a batch of 4 pending episodes (one group record) and a
    live host h1 of capacity 3."""
    name = f"rep-{uuid.uuid4().hex[:10]}"
    keys = Keys(name)
    registry = open_registry(etcd.url, retry_timeout=5.0)
    try:
        registry.txn([], [Put(keys.episode(r.id), r.to_bytes()) for r in records()])
        MeshClient(registry, namespace=name).submit([SPEC] * 4, batch=4)
        lease = registry.grant(30)
        registry.txn([], [Put(keys.host("h1"), HostInfo("h1", capacity=3, running=1).to_bytes(), lease=lease)])
        yield name
        registry.revoke(lease)
    finally:
        registry.close()


def run(etcd: EtcdServer, namespace: str, *args: str) -> Result:
    result = CliRunner().invoke(cli, ["--etcd", etcd.endpoint, "--namespace", namespace, "report", *args])
    assert result.exit_code == 0, f"{args}: exit {result.exit_code}\n{result.output}"
    return result


def test_report_json_numbers(etcd: EtcdServer, namespace: str) -> None:
    printed = run(etcd, namespace, "-o", "-").stdout
    assert "\u202e" not in printed and "\x9b" not in printed  # escaped for the terminal (safe.safe_json)
    data = json.loads(printed)
    assert any(reason.endswith(" \u202e\x9b") for reason in (e["reason"] for e in data["errors"]))
    assert data["namespace"] == namespace and data["total"] == 21 and data["revision"] > 0
    assert data["counts"] == {"pending": 4, "running": 1, "succeeded": 11, "failed": 4, "cancelled": 0, "lost": 1}
    hosts = {h["id"]: h for h in data["hosts"]}
    assert hosts["h1"] == {
        "id": "h1",
        "running": 1,
        "capacity": 3,
        "live": True,
        "attempts": 7,  # 5 odd successes, the nasty failure, the old success
        "succeeded": 6,
        "failed": 1,
        "busy_s": pytest.approx(1 + 3 + 5 + 7 + 9 + 2 + 4),
    }
    assert hosts["h2"]["live"] is False and hosts["h2"]["capacity"] is None
    assert (hosts["h2"]["attempts"], hosts["h2"]["succeeded"], hosts["h2"]["failed"]) == (9, 5, 3)
    assert hosts["h3"]["attempts"] == 1 and hosts["h3"]["busy_s"] == pytest.approx(10)
    durations = data["durations"]
    assert durations["count"] == 16 and durations["max"] == pytest.approx(30)
    assert durations["p50"] == pytest.approx(5.5, rel=0.044)  # 1..10 s, 2, 4, 5, 30 x 3: between 5 and 6
    assert data["retries"] == {"attempts": 1, "episodes": 1, "released": 0} and data["lost"] == 1
    errors = {e["reason"]: e for e in data["errors"]}
    assert errors["timed out after N s"] == {
        "reason": "timed out after N s",
        "count": 3,
        "examples": ["0000000013-0000-t", "0000000012-0000-t", "0000000011-0000-t"],
    }
    assert errors["host hN died; all N attempts spent"]["count"] == 1
    assert any(reason.startswith("\x1b[NJ</script><script>") for reason in errors)  # data, as it came
    assert sum(rate for _, rate in data["finished_per_s"]) * data["bucket_s"] == pytest.approx(16)
    assert data["states"][-1][1] == {k: v for k, v in data["counts"].items() if v}
    assert len(data["finished_per_s"]) <= report.MAX_BUCKETS
    assert sum(n for _, _, n in data["histogram"]) == 16 and data["histogram"][-1][2] == 3  # the 30 s ones
    assert data["histogram"][0][0] <= 1 < data["histogram"][0][1] and data["histogram"][-1][0] <= 30

    recent = json.loads(run(etcd, namespace, "--since", "1h", "-o", "-").stdout)
    assert recent["total"] == 20 and recent["counts"]["succeeded"] == 10
    assert recent["since"] == pytest.approx(recent["generated_at"] - 3600, abs=5)  # NOW is import time
    assert recent["finished_per_s"][0][0] <= recent["since"] < recent["finished_per_s"][1][0]


def test_report_text_escapes_episode_text(etcd: EtcdServer, namespace: str) -> None:
    out = run(etcd, namespace).stdout
    assert f"namespace {namespace} at etcd revision" in out and ": 21 episodes" in out
    assert re.search(r"^succeeded\s+11$", out, re.M) and re.search(r"^h1\s+1\s+3\s+7\s+6\s+1\s+31s$", out, re.M)
    assert "durations of 16 finished: p50" in out and "lost: 1" in out
    assert re.search(r"^3\s+timed out after N s\s+0000000013-0000-t", out, re.M)
    assert "\x1b" not in out and "\\x1b[NJ</script>" in out  # shown escaped, never sent to the terminal
    assert "throughput:" in out


def test_report_to_files_and_bad_arguments(etcd: EtcdServer, namespace: str, tmp_path: Path) -> None:
    result = run(etcd, namespace, "-o", str(tmp_path / "r.json"))
    assert json.loads((tmp_path / "r.json").read_text())["total"] == 21 and "21 episodes" in result.stderr
    run(etcd, namespace, "--since", "2026-01-01T00:00:00Z", "-o", str(tmp_path / "r.html"))
    assert (tmp_path / "r.html").read_text().startswith("<!doctype html>")
    for args in (["-o", str(tmp_path / "r.txt")], ["--since", "yesterday"], ["--since", "30"]):
        bad = CliRunner().invoke(cli, ["--etcd", etcd.endpoint, "--namespace", namespace, "report", *args])
        assert bad.exit_code == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.output


def test_parse_since() -> None:
    assert parse_since("90s", 1000.0) == 910.0
    assert parse_since("1h30m", 10_000.0) == 10_000.0 - 5400
    assert parse_since("1.5d", 200_000.0) == 200_000.0 - 129_600
    assert parse_since("2026-12-03T08:00:00Z", 0) == 1796284800.0
    assert parse_since("2026-12-03T09:00:00+01:00", 0) == 1796284800.0


def test_write_report_puts_both_files_in_the_store(etcd: EtcdServer, namespace: str, tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    registry = open_registry(etcd.url, retry_timeout=5.0)
    try:
        paths = report.write_report(registry, Keys(namespace), store, now=NOW)
        again = report.build(registry, Keys(namespace), now=NOW)
    finally:
        registry.close()
    assert paths == ["reports/latest.html", "reports/latest.json"]  # the page first: see write_report
    assert store.list("reports/") == sorted(paths)
    assert json.loads(store.get_bytes("reports/latest.json")) == json.loads(report.to_json(again))
    page = store.get_bytes("reports/latest.html").decode()
    assert data_of(page) == json.loads(report.to_json(again))


def json_text(page: str) -> str:
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert match is not None
    return match.group(1)


def data_of(page: str) -> Any:
    return json.loads(json_text(page))


def test_html_is_self_contained_and_keeps_episode_text_inside_its_script(
    etcd: EtcdServer, namespace: str, tmp_path: Path
) -> None:
    run(etcd, namespace, "-o", str(tmp_path / "r.html"))
    page = (tmp_path / "r.html").read_text()
    banner = "/*! https://github.com/leeoniya/uPlot (v1.6.32) */"  # uPlot's licence comment
    assert page.count(banner) == 1
    assert not re.search(r"https?://", page.replace(banner, ""))
    markup = page.replace(json_text(page), "")  # what the data says is text, not markup
    assert not re.search(r"""\b(?:src|href|action)\s*=""", markup, re.I)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert page.lower().count("<script") == page.lower().count("</script") == 3  # data, uPlot, the page's
    assert "</script><script>window.pwned" not in page and NASTY_IN_JSON in page
    errors = {e["reason"] for e in data_of(page)["errors"]}
    assert any(reason.startswith("\x1b[NJ</script>") for reason in errors)
    assert "default-src 'none'" in page and "'unsafe-inline'" not in page.split("script-src", 1)[1].split(";")[0]


NASTY_IN_JSON = "\\u001b[NJ\\u003c/script\\u003e\\u003cscript\\u003ewindow.pwned=N\\u003c/script\\u003e"


def test_html_renders_offline_in_chromium(etcd: EtcdServer, namespace: str, tmp_path: Path) -> None:
    from .browserkit import open_page

    run(etcd, namespace, "-o", str(tmp_path / "r.html"))
    for scheme in ("light", "dark"):
        with open_page(tmp_path / "r.html", color_scheme=scheme) as page:
            sizes = page.evaluate("[...document.querySelectorAll('canvas')].map(c => [c.width, c.height])")
            assert len(sizes) == 3 and all(w > 0 and h > 0 for w, h in sizes), sizes
            assert page.evaluate("window.pwned") is None  # the nasty error stayed text
            reasons = page.locator("#errors td.reason").all_text_contents()
            assert any(r.startswith("\x1b[NJ</script><script>window.pwned=N") for r in reasons), reasons
            assert page.locator("#errors img").count() == 0
            assert page.locator("#counts .n").all_text_contents() == ["4", "1", "11", "4", "0", "1"]
            page.screenshot(path=str(tmp_path / f"report-{scheme}.png"), full_page=True)
    assert (tmp_path / "report-light.png").stat().st_size > 10_000


def test_report_is_listed_and_documented() -> None:
    top = CliRunner().invoke(cli, ["--help"])
    assert top.exit_code == 0 and "report" in top.stdout
    result = CliRunner().invoke(cli, ["report", "--help"])
    assert result.exit_code == 0 and "Examples:" in result.stdout and "--since" in result.stdout


def test_an_empty_namespace_reports_nothing_and_renders(etcd: EtcdServer, tmp_path: Path) -> None:
    from .browserkit import open_page

    empty = f"rep-{uuid.uuid4().hex[:10]}"
    out = run(etcd, empty).stdout
    assert ": 0 episodes" in out and "throughput: nothing finished" in out and "durations of 0 finished" in out
    data = json.loads(run(etcd, empty, "-o", "-").stdout)
    assert data["total"] == 0 and data["hosts"] == [] and data["errors"] == [] and data["histogram"] == []
    run(etcd, empty, "-o", str(tmp_path / "empty.html"))
    with open_page(tmp_path / "empty.html") as page:
        assert page.locator("#duration-summary").text_content() == "no finished episodes"
        assert page.locator("#histogram").text_content() == "no data"
        assert page.locator("#hosts").text_content() == "none"
        page.screenshot(path=str(tmp_path / "empty.png"), full_page=True)


def test_real_agents_a_watched_tally_and_the_report_agree(etcd: EtcdServer, tmp_path: Path) -> None:
    """Episodes run by two real agents (singles and a batch, some failing); a Tally kept from a
    watch of ``episodes/`` (group records expanded, each member's old value from the watch's
    previous value, as the dashboard's child does) equals one built from a scan, and the
    report's numbers say what ran."""
    from openrange_mesh.ledger.catalog import Catalog
    from openrange_mesh.model import decode_records
    from openrange_mesh.registry import KeyValue

    from .helpers import current_revision
    from .meshkit import Mesh

    mesh = Mesh(etcd.url, tmp_path / "mesh")
    try:
        watch = mesh.registry.watch(mesh.keys.episodes(), current_revision(mesh.registry) + 1, prev_kv=True)
        mesh.start(2, capacity=2)
        ids = mesh.client.submit(
            [EpisodeSpec("sleep", {"seconds": 0.2})] * 4 + [EpisodeSpec("sleep", {"mode": "fail"})] * 2
        )
        ids += mesh.client.submit([EpisodeSpec("sleep", {"seconds": 0.05})] * 6, batch=3)
        done = mesh.client.wait(ids, timeout=60)
        assert sorted(r.state.value for r in done) == ["failed"] * 2 + ["succeeded"] * 10
        revision = current_revision(mesh.registry)

        def members(kv: KeyValue | None) -> dict[str, EpisodeRecord]:
            return {r.id: r for r in decode_records(kv.value)} if kv is not None and kv.value else {}

        watched, scanned, seen = Tally(), Tally(), 0
        while seen < revision:
            batch = watch.next(5.0)
            for event in batch.events:
                before, after = members(event.prev), members(event.kv) if event.type == "put" else {}
                for episode in before.keys() | after.keys():
                    if before.get(episode) != after.get(episode):
                        watched.update(before.get(episode), after.get(episode), NOW)
            seen = max(seen, batch.revision)
        watch.cancel()
        for record, _ in Catalog(mesh.registry, mesh.keys).episodes(revision=revision):
            scanned.add(record, NOW)
        assert watched.summary(NOW) == scanned.summary(NOW)

        data = json.loads(run(etcd, mesh.namespace, "-o", "-").stdout)
        assert data["counts"]["succeeded"] == 10 and data["counts"]["failed"] == 2 and data["total"] == 12
        assert [(e["reason"], e["count"]) for e in data["errors"]] == [("sleep runtime asked to fail", 2)]
        hosts = {h["id"]: h for h in data["hosts"]}
        assert set(hosts) == {"h1", "h2"} and all(h["live"] and h["capacity"] == 2 for h in hosts.values())
        assert sum(h["attempts"] for h in hosts.values()) == 12
        assert sum(h["succeeded"] for h in hosts.values()) == 10
        assert data["durations"]["count"] == 12 and 0.15 < data["durations"]["max"] < 5
    finally:
        mesh.close()
