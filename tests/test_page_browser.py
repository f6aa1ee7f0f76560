"""The dashboard page (static/: index.html, app.js ...) in headless Chromium against real agents on
a real etcd (design/dashboard.md): the views, filters in the URL, episode text shown as text, events
paged, cancel's confirmation and refusals, and a tab following the leader when it is killed.

Chromium and Playwright as tests/browserkit finds them (a skip without them, a failure under CI).
Every request the page makes must go to the mesh's own agents: nothing is loaded from outside."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from openrange_mesh.cli.main import cli
from openrange_mesh.model import State
from openrange_mesh.model.seat import Seat

from .browserkit import ARGS, _unavailable, chromium
from .etcdkit import EtcdServer
from .helpers import wait_until
from .meshkit import Mesh

if TYPE_CHECKING:
    from playwright.sync_api import APIResponse, Browser, Page, Route

TTL = 2
TOKEN = "p4ge-t0ken"
HOSTILE = "<img src=x onerror=window.__pwned=1>"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install playwright)")
    executable = chromium()
    driver = sync_playwright().start()
    launched = driver.chromium.launch(executable_path=executable, args=ARGS)
    yield launched
    launched.close()
    driver.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    tab.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    tab.on("request", lambda r: None if urlsplit(r.url).hostname == "127.0.0.1" else problems.append(r.url))
    yield tab
    context.close()
    assert not problems, problems


@pytest.fixture
def artifacts() -> Path:
    """Where screenshots go: $OPENRANGE_TEST_ARTIFACTS, else test-artifacts/ at the top of the tree
    (git ignores it), for a person to look at after a run."""
    where = Path(
        os.environ.get("OPENRANGE_TEST_ARTIFACTS") or Path(__file__).resolve().parent.parent / "test-artifacts"
    )
    where.mkdir(parents=True, exist_ok=True)
    return where


@pytest.fixture
def mesh(tmp_path: Path, etcd: EtcdServer) -> Iterator[Mesh]:
    made = Mesh(etcd.url, tmp_path / "mesh", ttl=TTL)
    yield made
    print(made.report())
    made.close()


def start(mesh: Mesh, count: int) -> Seat:
    agents = [mesh.start_agent(f"h{i + 1}", wait=False, dashboard=True, token=TOKEN) for i in range(count)]
    for agent in agents:
        mesh.wait_joined(agent)
    return mesh.seat()


def text_of(page: Page, selector: str) -> str:
    return page.locator(selector).first.text_content() or ""


def location(page: Page) -> str:
    """Where the page is, asked of the page: the sync API's ``page.url`` changes only when a call
    into Playwright takes in its events, and a wait that only reads it would never see it move."""
    from playwright.sync_api import Error

    try:
        return str(page.evaluate("location.href"))
    except Error:  # a navigation under way destroyed the page's context: not there yet
        return ""


def until(check: Callable[[], object], what: str, timeout: float = 15) -> object:
    return wait_until(check, timeout, interval=0.1, what=what)


def test_overview_filters_live_in_the_url_and_episode_text_is_text(page: Page, mesh: Mesh) -> None:
    url = start(mesh, 2).url
    ok = mesh.submit_sleeps(3, 0.05, labels={"kind": "ok"})
    (bad,) = mesh.client.submit(
        [
            {
                "runtime": "command",
                "params": {"argv": ["sh", "-c", f"echo '{HOSTILE}' >&2; exit 3"]},
                "labels": {"kind": "bad", "note": "<b>bold</b>"},
            }
        ]
    )
    mesh.wait_finished([*ok, bad])
    page.goto(url + "/")
    until(lambda: page.locator("table.hosts tbody tr").count() == 2, "both hosts listed")
    assert "leader" in text_of(page, "table.hosts")
    until(lambda: re.search(r"succeeded\s*3failed\s*1cancelled", text_of(page, ".counts")), "the summary's counts")
    until(lambda: page.locator("figure.chart canvas").count() >= 4, "the four charts drawn")
    errors = page.locator("table.errors tbody tr")
    until(lambda: errors.count() == 1 and bad in (errors.first.text_content() or ""), "the error, its id listed")
    assert page.locator(f'table.errors a[href="/episodes/{bad}"]').count() == 1
    until(lambda: page.locator("table.episodes tbody tr").count() == 4, "four episodes listed")

    page.select_option(".filters select[name=state]", "failed")
    page.click(".filters button[type=submit]")
    until(lambda: location(page).endswith("/?state=failed"), "the filter in the URL")
    until(lambda: page.locator("table.episodes tbody tr").count() == 1, "only the failed one")
    row = text_of(page, "table.episodes tbody tr")
    assert bad in row and HOSTILE in row and "note=<b>bold</b>" in row, row
    assert page.locator("table.episodes img, table.episodes b").count() == 0

    page.go_back()
    until(lambda: page.locator("table.episodes tbody tr").count() == 4, "back: every episode again")
    assert page.locator(".filters select[name=state]").input_value() == ""

    page.goto(f"{url}/?state=failed&since=yesterday")
    until(lambda: "since must be unix seconds" in text_of(page, "#message"), "the server's 400 in the message bar")
    page.goto(f"{url}/episodes/0000000000-0000-nobody")
    until(lambda: "not found" in text_of(page, "main"), "the not-found view")

    page.goto(f"{url}/episodes/{bad}")
    until(lambda: page.locator("table.attempts tbody tr").count() == 1, "the attempt listed")
    assert HOSTILE in text_of(page, "dl.fields") and "<b>bold</b>" in text_of(page, "section.two")
    assert page.locator("#view img, #view b:not(.stat b)").count() == 0
    assert page.evaluate("window.__pwned === undefined")


def test_events_are_paged_and_only_the_rows_in_view_are_drawn(page: Page, mesh: Mesh) -> None:
    url = start(mesh, 1).url
    (episode,) = mesh.client.submit([{"runtime": "sleep", "params": {"seconds": 0.5, "events": 3000}}])
    mesh.wait_finished([episode])
    page.goto(f"{url}/episodes/{episode}")
    until(lambda: re.search(r"500 of 3,00\d loaded", text_of(page, "#view h2:has(select)")), "the first page of 500")
    scroller = page.locator(".events-scroll")
    deadline = time.monotonic() + 30
    while not (done := re.search(r"^(3,00\d) events$", text_of(page, "#view h2:has(select) .muted"))):
        assert time.monotonic() < deadline, text_of(page, "#view h2:has(select)")
        scroller.evaluate("el => el.scrollTop = el.scrollHeight")
        time.sleep(0.1)
    rows = page.locator(".events-row")
    assert 0 < rows.count() < 60, f"{rows.count()} rows in the DOM for 3000 events"
    last = int(done.group(1).replace(",", "")) - 1
    assert str(rows.last.locator(".ev-n").text_content()) == str(last), "scrolled to the very last event"


def test_cancel_by_filter_confirms_then_says_why_it_is_refused(page: Page, mesh: Mesh) -> None:
    url = start(mesh, 1).url
    long = mesh.submit_sleeps(3, 60, labels={"kind": "long"})
    until(lambda: mesh.records(long)[long[0]].state is State.RUNNING, "the first one running")
    page.goto(f"{url}/?label=kind=long")
    until(lambda: page.locator("table.episodes tbody tr").count() == 3, "the three listed")
    page.click("text=Cancel matching...")
    go = page.locator("dialog .danger")
    until(lambda: go.text_content() == "Cancel 3 episodes", "the dialog counting 3")
    assert "kind=long" in text_of(page, "dialog").replace(" ", "").replace("label", "")

    status = "dialog .dialog-status"
    page.fill("dialog input.token-input", "")
    go.click()
    until(lambda: "token required" in text_of(page, status), "401 explained")
    page.fill("dialog input.token-input", "wrong")
    go.click()
    until(lambda: "wrong token" in text_of(page, status), "403 explained")
    assert all(r.state in (State.PENDING, State.RUNNING) for r in mesh.records(long).values())

    page.fill("dialog input.token-input", TOKEN)
    go.click()
    until(lambda: "cancel: 3 of 3" in text_of(page, "#message"), "the outcome in the message bar")
    records = mesh.wait_finished(long)
    assert {r.state for r in records.values()} == {State.CANCELLED}
    until(lambda: page.locator("table.episodes .s-cancelled").count() == 3, "the rows updated live")
    assert page.evaluate("sessionStorage.length") == 1


def test_a_run_submitted_as_the_tab_opens_is_listed(page: Page, mesh: Mesh) -> None:
    """The list and the stream are two requests. A list read before a run was submitted and a
    stream that starts after it would leave the run off the page for as long as nothing of it
    changes (it failed this way in CI: a busy leader's index moved on between the two). Here the
    page's first list is one read before the run, and its stream starts after: the page must
    read the list again."""
    url = start(mesh, 1).url
    stale = page.request.get(f"{url}/api/episodes?label=kind=late")  # before the run exists
    assert stale.ok and stale.json()["total"] == 0
    late = mesh.submit_sleeps(3, 60, labels={"kind": "late"})
    until(lambda: mesh.records(late)[late[0]].state is State.RUNNING, "the first one running")
    until(lambda: page.request.get(f"{url}/api/episodes?label=kind=late").json()["total"] == 3, "indexed")
    served = serve_stale_once(page, re.compile(r"/api/episodes\?"), stale)
    page.goto(f"{url}/?label=kind=late")
    until(lambda: page.locator("table.episodes tbody tr").count() == 3, "the three listed")
    assert len(served) >= 2  # the stale list, then a list read again


def test_an_episode_page_read_before_the_stream_starts_is_read_again(page: Page, mesh: Mesh) -> None:
    """The same join on an episode's page: its record read while pending, the stream started
    after it began to run (and after one more change, so the stream's start is surely past the
    claim); nothing of it changes for a minute, so only a second read shows it."""
    url = start(mesh, 1).url  # two workers: the third of three waits
    first, _, waiting = mesh.submit_sleeps(3, 60)
    until(lambda: mesh.records([first])[first].state is State.RUNNING, "the first running")
    stale = page.request.get(f"{url}/api/episodes/{waiting}")
    assert stale.ok and stale.json()["record"]["state"] == "pending"
    mesh.client.cancel([first])  # its worker takes the third
    until(lambda: mesh.records([waiting])[waiting].state is State.RUNNING, "the third running")
    (later,) = mesh.submit_sleeps(1, 60)  # a change after the third's, so the stream starts past it
    until(lambda: page.request.get(f"{url}/api/episodes/{later}").ok, "indexed")
    served = serve_stale_once(page, re.compile(rf"/api/episodes/{waiting}$"), stale)
    page.goto(f"{url}/episodes/{waiting}")
    until(lambda: "running" in text_of(page, ".episode-head"), "the page showing it running")
    assert len(served) >= 2


def serve_stale_once(page: Page, url: re.Pattern[str], stale: APIResponse) -> list[str]:
    """The page's first request to ``url`` answered with ``stale`` (read earlier), the rest
    passed on; returns the requests' urls as they come."""
    served: list[str] = []

    def answer(route: Route) -> None:
        served.append(route.request.url)
        if len(served) == 1:
            route.fulfill(response=stale)
        else:
            route.continue_()

    page.route(url, answer)
    return served


def test_a_tab_follows_the_leader_when_it_is_killed(page: Page, mesh: Mesh) -> None:
    old = start(mesh, 3)
    (episode,) = mesh.submit_sleeps(1, 0.05)
    mesh.wait_finished([episode])
    path = f"/episodes/{episode}?from=test"
    page.goto(old.url + path)
    until(lambda: text_of(page, "#live") == "live", "the stream open")
    mesh.agents[old.host].kill()

    def moved() -> bool:
        here = location(page)
        return here != old.url + path and here.endswith(path) and text_of(page, "#live") == "live"

    until(moved, f"the tab on another agent at {path}, live", timeout=30)
    new = mesh.seat(other_than=old.host)
    assert location(page) == new.url + path
    assert episode in text_of(page, ".episode-head")
    told = CliRunner().invoke(cli, ["--etcd", mesh.url, "--namespace", mesh.namespace, "dashboard"])
    assert told.exit_code == 0 and told.output.strip() == new.url, told.output
    page.goto(new.url + "/")
    live = page.locator("table.hosts tbody tr")
    until(lambda: live.count() == 2 and old.host not in (text_of(page, "table.hosts tbody")), "the two live hosts")
    until(lambda: old.host in text_of(page, "main"), "the dead one among those that left")


def test_a_run_shows_up_as_it_goes_and_a_followers_url_leads_to_the_leader(
    page: Page, mesh: Mesh, artifacts: Path
) -> None:
    leader = start(mesh, 3)
    follower = next(info.url for h in mesh.agents if h != leader.host and (info := mesh.host_info(h)) and info.url)
    page.goto(follower + "/?state=succeeded")  # a follower's 307 keeps the path and the query
    until(lambda: location(page) == leader.url + "/?state=succeeded", "the page at the leader")
    page.goto(leader.url + "/")
    until(lambda: text_of(page, "#live") == "live", "the stream open")
    until(lambda: page.locator("table.hosts tbody tr").count() == 3, "every host listed")
    ids = mesh.submit_sleeps(12, 0.3)
    rows = page.locator("table.episodes tbody tr")
    until(lambda: rows.count() == 12, "the run's episodes listed as they come, no reload")
    mesh.wait_finished(ids)
    until(lambda: page.locator("table.episodes .s-succeeded").count() == 12, "each shown succeeded as it finishes")
    until(lambda: re.search(r"succeeded\s*12", text_of(page, ".counts")), "the counts following the run")
    page.screenshot(path=str(artifacts / "episodes-view.png"), full_page=True)
    page.goto(f"{leader.url}/episodes/{ids[0]}")
    until(lambda: page.locator("table.attempts tbody tr").count() == 1, "the episode page")
    page.screenshot(path=str(artifacts / "episode-page.png"), full_page=True)
