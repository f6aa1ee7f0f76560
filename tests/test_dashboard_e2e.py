"""The dashboard's HTTP side with real agents on a real etcd (design/dashboard.md): the URL in etcd,
followers' redirects, paging at a revision, the live stream's resume, cancel's guards, and the
URL moving when the leader is killed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from openrange_mesh.cli.main import cli
from openrange_mesh.errors import MeshError
from openrange_mesh.model import State
from openrange_mesh.store import open_store

from .etcdkit import EtcdServer
from .helpers import wait_until
from .meshkit import MakeMesh

TTL = 2


def get(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(url, timeout=10, follow_redirects=False, **kwargs)


def answering(url: str) -> httpx.Response | None:
    try:
        response = get(url)
    except httpx.HTTPError:
        return None
    return response if response.status_code == 200 else None


def test_every_agent_says_who_leads_and_followers_redirect(make_mesh: MakeMesh, etcd: EtcdServer) -> None:
    mesh = make_mesh(etcd.url)
    mesh.start(3, dashboard=True)
    leader = mesh.seat()
    result = CliRunner().invoke(cli, ["--etcd", etcd.endpoint, "--namespace", mesh.namespace, "dashboard"])
    assert result.exit_code == 0 and result.output.strip() == leader.url, result.output
    urls = {h: info.url for h in mesh.agents if (info := mesh.host_info(h)) is not None and info.url}
    assert len(urls) == 3
    seated = {"host": leader.host, "url": leader.url, "term": leader.term}
    for host, url in urls.items():  # a follower's dashboard hears of the seat from its own watch
        wait_until(lambda url=url: get(f"{url}/api/leader").json() == seated, 10, what=f"{host} to name {leader.host}")
        hosts = get(f"{url}/api/hosts?x=1&y=2")
        if host == leader.host:
            assert hosts.status_code == 200 and {h["id"] for h in hosts.json()["hosts"]} == set(urls)
        else:  # the same path and query at the leader
            assert hosts.status_code == 307 and hosts.headers["location"] == f"{leader.url}/api/hosts?x=1&y=2"

    # nobody has asked for the episode index yet: the hosts' running counts come from the claims
    mesh.submit_sleeps(3, 5.0)
    wait_until(lambda: sum(len(mesh.running_on(h)) for h in urls) == 3, 20, what="three episodes running")
    counts = {h["id"]: h["running"] for h in get(f"{leader.url}/api/hosts").json()["hosts"]}
    assert counts == {h: len(mesh.running_on(h)) for h in urls} and sum(counts.values()) == 3


def test_episodes_page_at_one_revision_and_errors_are_one_line(make_mesh: MakeMesh, etcd: EtcdServer) -> None:
    mesh = make_mesh(etcd.url)
    mesh.start(2, dashboard=True)
    url = mesh.seat().url
    ids = mesh.submit_sleeps(9, 0.05)
    mesh.wait_finished(ids)
    api = f"{url}/api/episodes"
    wait_until(lambda: get(api).json().get("total") == 9, 10, what="the leader's index to hold 9 episodes")

    first = get(f"{api}?limit=4").json()
    more = mesh.submit_sleeps(3, 0.05)  # arrive between pages: not in this listing
    seen = [e["id"] for e in first["episodes"]]
    cursor = first["next"]
    while cursor:
        page = get(api, params={"limit": 4, "cursor": cursor}).json()
        assert page["total"] == 9 and page["revision"] == first["revision"]
        seen += [e["id"] for e in page["episodes"]]
        cursor = page["next"]
    assert seen == sorted(ids, reverse=True), "every episode once, newest first, none of the later ones"
    mesh.wait_finished(more)

    wait_until(lambda: get(api, params={"state": "succeeded"}).json()["total"] == 12, 10, what="all 12 listed")
    same_submission = get(api, params={"state": "succeeded", "q": ids[0][:11], "limit": 500}).json()
    assert {e["id"] for e in same_submission["episodes"]} == set(ids), "an id prefix finds that submission's"
    one = get(f"{api}/{ids[0]}").json()["record"]
    assert one["id"] == ids[0] and one["state"] == "succeeded" and one["history"][0]["host"] in mesh.agents
    token = one["history"][0]["token"]  # its claim's fencing token, recorded as the attempt closed
    now = mesh.registry.get(b"/no-such-key")[1]
    assert isinstance(token, int) and 0 < token <= now, one["history"]  # the index may lag: not its revision
    for bad, status in [
        ("?state=bogus", 400),
        ("?limit=0", 400),
        ("?cursor=nonsense", 400),
        ("?since=yesterday", 400),
        ("/0000000000-0000-nobody", 404),
    ]:
        answer = get(api + bad)
        assert answer.status_code == status and list(answer.json()) == ["error"], (bad, answer.text)
        assert "\n" not in answer.json()["error"]


def read_stream(url: str, until: Callable[[list[tuple[str, str, Any]]], bool], **headers: str) -> list[Any]:
    """(event, id, data) messages of ``/api/stream`` until ``until`` says enough."""
    got: list[tuple[str, str, Any]] = []
    with httpx.stream("GET", f"{url}/api/stream", headers=headers, timeout=20) as response:
        assert response.status_code == 200
        event, ident = "message", ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("id:"):
                ident = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                got.append((event, ident, json.loads(line.partition(":")[2])))
                if until(got):
                    return got
    return got


def test_the_stream_resumes_from_a_revision_with_no_gap_and_no_duplicate(make_mesh: MakeMesh, etcd: EtcdServer) -> None:
    mesh = make_mesh(etcd.url)
    mesh.start(2, dashboard=True)
    url = mesh.seat().url
    hello = read_stream(url, lambda got: any(e == "hosts" for e, _, _ in got))
    since = hello[0][1]
    assert hello[0][0] == "hello" and since.isdigit()
    ids = mesh.submit_sleeps(6, 0.05)
    mesh.wait_finished(ids)

    def done(got: list[tuple[str, str, Any]]) -> bool:
        final = {s["id"] for e, _, batch in got if e == "episodes" for s in batch if s["state"] == "succeeded"}
        return final >= set(ids)

    resumed = read_stream(url, done, **{"Last-Event-ID": since})
    revisions = [int(i) for e, i, _ in resumed if e == "episodes"]
    assert revisions == sorted(set(revisions)) and revisions[0] > int(since), "in order, each revision once"
    states = {s["id"]: s["state"] for e, _, batch in resumed if e == "episodes" for s in batch}
    assert set(states) == set(ids) and set(states.values()) == {"succeeded"}
    batches = [[s["id"] for s in batch] for e, _, batch in resumed if e == "episodes"]
    assert all(len(b) == len(set(b)) for b in batches), "a message holds each episode's latest change once"


def test_cancel_needs_the_token_and_the_same_origin(make_mesh: MakeMesh, etcd: EtcdServer) -> None:
    mesh = make_mesh(etcd.url)
    mesh.start_agent("h1", dashboard=True)  # no token: read-only
    url = mesh.seat().url
    (pending,) = mesh.client.submit([{"runtime": "sleep", "params": {"seconds": 30}}])
    body = {"ids": [pending]}
    read_only = httpx.post(f"{url}/api/cancel", json=body, headers={"Origin": url}, timeout=10)
    assert read_only.status_code == 403 and "read-only" in read_only.json()["error"]
    mesh.agents["h1"].stop()

    mesh.start_agent("h2", dashboard=True, token="s3cret")
    url = mesh.seat(other_than="h1").url
    cases = [({}, 401), ({"Authorization": "Bearer wrong", "Origin": url}, 403)]
    cases += [({"Authorization": "Bearer s3cret", "Origin": "http://evil.example"}, 403)]
    for headers, status in cases:
        refused = httpx.post(f"{url}/api/cancel", json=body, headers=headers, timeout=10)
        assert refused.status_code == status, (headers, refused.text)
    ok = httpx.post(f"{url}/api/cancel", json=body, headers={"Authorization": "Bearer s3cret", "Origin": url})
    assert ok.status_code == 200 and ok.json()["outcomes"][pending] in ("cancelled", "requested"), ok.text
    record = mesh.wait_finished([pending])[pending]
    assert record.state is State.CANCELLED


def test_the_url_moves_when_the_leader_is_killed(make_mesh: MakeMesh, etcd: EtcdServer) -> None:
    mesh = make_mesh(etcd.url)
    mesh.start(3, dashboard=True)
    old = mesh.seat()
    mesh.agents[old.host].kill()
    killed_at = time.monotonic()
    new = mesh.seat(other_than=old.host)
    wait_until(lambda: answering(f"{new.url}/api/hosts"), 10, what="the new leader's API")
    took = time.monotonic() - killed_at
    assert took <= TTL + 2, f"a new dashboard URL answered {took:.1f} s after the kill"
    assert new.term > old.term
    assert answering(f"{old.url}/api/leader") is None, "the killed leader's server is gone with it"
    hosts = wait_until(
        lambda: (a := answering(f"{new.url}/api/hosts")) and old.host not in {h["id"] for h in a.json()["hosts"]} and a,
        10,
        what="the dead host to leave the list",
    )
    assert old.host in {h["id"] for h in hosts.json()["left"]}


def test_a_leader_that_stops_stops_serving_once_its_lease_may_have_expired(
    make_mesh: MakeMesh, etcd: EtcdServer
) -> None:
    """Only the agent is stopped (its server process runs on): the server must not go on serving
    a dashboard it no longer leads; it redirects to the new leader once there is one."""
    mesh = make_mesh(etcd.url)
    mesh.start(2, dashboard=True)
    old = mesh.seat()
    agent = mesh.agents[old.host]
    os.kill(agent.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        wait_until(lambda: get(f"{old.url}/api/hosts").status_code != 200, TTL + 1, what="the old leader to stop")
        assert time.monotonic() - stopped_at <= TTL + 1
        new = mesh.seat(other_than=old.host)
        moved = wait_until(
            lambda: (r := get(f"{old.url}/api/episodes?limit=3")).status_code == 307 and r, 10, what="a redirect"
        )
        assert moved.headers["location"] == f"{new.url}/api/episodes?limit=3"
    finally:
        os.kill(agent.pid, signal.SIGCONT)


def test_every_agent_serves_its_own_metrics_at_its_dashboard_port(make_mesh: MakeMesh, etcd: EtcdServer) -> None:
    mesh = make_mesh(etcd.url)
    mesh.start(2, dashboard=True)
    leader = mesh.seat()
    mesh.wait_finished(mesh.submit_sleeps(4, 0.05))
    leading = {}
    for host in mesh.agents:
        info = mesh.host_info(host)
        assert info is not None and info.url
        text = get(f"{info.url}/metrics").text  # a follower answers too: metrics are not redirected
        assert "# TYPE openrange_episodes_started_total counter" in text, text[:500]
        line = next(x for x in text.splitlines() if x.startswith("openrange_is_leader"))
        leading[host] = float(line.split()[-1])
    assert leading == {h: float(h == leader.host) for h in mesh.agents}


def test_summary_counts_what_the_records_say(make_mesh: MakeMesh, etcd: EtcdServer) -> None:
    """/api/summary from the leader's watch equals what the records say, for singles and a
    batch whose members are rewritten in one group record."""
    mesh = make_mesh(etcd.url)
    mesh.start(2, dashboard=True)
    url = mesh.seat().url
    fine = {"runtime": "sleep", "params": {"seconds": 0.01}}
    failing = {"runtime": "sleep", "params": {"seconds": 0.01, "mode": "fail"}}
    ids = mesh.client.submit([fine] * 6 + [failing] * 2)
    ids += mesh.client.submit([fine] * 10, batch=5)
    records = mesh.wait_finished(ids)
    wanted = {"succeeded": 16, "failed": 2}

    def counted() -> dict[str, Any] | None:
        answer = get(f"{url}/api/summary").json()
        return answer if {k: v for k, v in answer["counts"].items() if v} == wanted else None

    answer = wait_until(counted, 10, what=f"the summary to count {wanted}")
    assert answer["durations"]["count"] == 18
    assert sum(g["count"] for g in answer["errors"]) == 2
    assert {h["id"]: h["capacity"] for h in answer["hosts"]} == {"h1": 2, "h2": 2}
    assert sum(n for _, n in answer["finished_per_s"]) * answer["bucket_s"] == pytest.approx(18)
    assert len(records) == 18


def test_the_leader_writes_the_run_report_to_the_store_and_at_its_drain(make_mesh: MakeMesh, etcd: EtcdServer) -> None:
    mesh = make_mesh(etcd.url)
    leader = mesh.start_agent("h1", dashboard=True, options=["--report-interval", "1"])
    mesh.seat()
    store = open_store(str(mesh.store))
    ids = mesh.submit_sleeps(3, 0.05)
    mesh.wait_finished(ids)

    def reported(count: int) -> dict[str, Any] | None:
        with contextlib.suppress(MeshError, ValueError):
            data = json.loads(store.get_bytes("reports/latest.json"))
            return data if data["counts"]["succeeded"] == count else None
        return None

    wait_until(lambda: reported(3), 15, what="a report of 3 episodes in the store")
    assert b"<script" in store.get_bytes("reports/latest.html")
    more = mesh.submit_sleeps(2, 0.05)
    mesh.wait_finished(more)
    leader.terminate()  # a drain: the leader's last report, whatever the interval
    assert leader.wait(30) == 0
    assert reported(5) is not None


def test_an_agent_that_knows_no_leader_yet_asks_a_browser_to_retry() -> None:
    """A page opened on an agent before it has seen the leader (a mesh just started) reloads
    itself each second until it is redirected; the API says so in one JSON line."""
    import asyncio

    from openrange_mesh.dashboard.app import build_app
    from openrange_mesh.dashboard.config import DashboardConfig
    from openrange_mesh.dashboard.state import State
    from openrange_mesh.model.seat import Seat
    from openrange_mesh.registry import Put, open_registry

    config = DashboardConfig("memory://no-leader", "default", "h1", "", "127.0.0.1", 0)
    state = State(config, False, open_registry("memory://no-leader"), None)

    async def ask() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=build_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as http:
            return await http.get("/?state=failed"), await http.get("/api/episodes")

    page, api = asyncio.run(ask())
    assert page.status_code == 503 and page.headers["retry-after"] == "1"
    assert 'http-equiv="refresh"' in page.text
    assert api.status_code == 503 and "no leader" in api.json()["error"]

    # The leader itself, between keepalives (its lease not surely alive): the same for a browser.
    registry = state.registry
    registry.txn([], [Put(state.keys.leader(), Seat("h1", "http://127.0.0.1:1").to_bytes(), registry.grant(10))])
    state.view.start()
    try:
        wait_until(lambda: state.view.leader() is not None, 5, what="the view to see the leader key")
        page, api = asyncio.run(ask())
    finally:
        state.view.stop()
    assert page.status_code == 503 and 'http-equiv="refresh"' in page.text
    assert api.status_code == 503 and "not surely alive" in api.json()["error"]
