"""The Starlette app every agent serves (design/dashboard.md): the leader's dashboard and JSON API; on a
follower, a 307 to the leader for every dashboard path. Errors are ``{"error": "<one line>"}``."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import EpisodeNotFound, MeshError, RegistryError
from ..ledger.catalog import Catalog
from ..model.views import detail, host_summary
from .answers import error, wait_index
from .cancel import cancel_request
from .events import events_page
from .files import artifact, artifacts_json
from .query import BadQuery, EpisodeQuery
from .state import State
from .stream import stream

STATIC = Path(__file__).parent / "static"

Handler = Callable[[Request], Awaitable[Response]]


def build_app(state: State) -> Starlette:
    def leading(handler: Callable[[Request, State], Awaitable[Response]]) -> Handler:
        async def guarded(request: Request) -> Response:
            if not state.serving:
                return _to_leader(request, state)
            try:
                return await handler(request, state)
            except BadQuery as exc:
                return error(400, str(exc))
            except RegistryError as exc:
                return error(503, f"etcd: {exc}")

        return guarded

    async def leader_here(request: Request) -> Response:  # every agent answers it, leader or not
        return await leader(request, state)

    async def metrics_here(request: Request) -> Response:  # every agent's own, leader or not
        return await metrics(state)

    routes = [
        Route("/api/leader", leader_here),
        Route("/metrics", metrics_here),
        Route("/api/hosts", leading(hosts)),
        Route("/api/episodes", leading(episodes)),
        Route("/api/episodes/{episode_id}", leading(episode)),
        Route("/api/episodes/{episode_id}/events", leading(events_page)),
        Route("/api/episodes/{episode_id}/artifacts/{name:path}", leading(artifact)),
        Route("/api/summary", leading(summary)),
        Route("/api/stream", leading(lambda r, s: stream(r, s, hosts_json))),
        Route("/api/cancel", leading(cancel_request), methods=["POST"]),
        Route("/", leading(page)),
        Route("/episodes/{episode_id}", leading(page)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if request.url.path.startswith("/api/") or status != 404:
        detail_text = exc.detail if isinstance(exc, HTTPException) else "internal error"
        return error(status, str(detail_text))
    return FileResponse(STATIC / "index.html", status_code=404)  # the page shows its not-found view


# A page for a browser that reached an agent before it knew the leader (a mesh just started, an
# election under way), or the leader itself while its lease is not surely alive (a keepalive
# late on a loaded host): it reloads itself each second until it is served or redirected.
_NO_LEADER_YET = (
    '<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="1">'
    "<title>openrange-mesh</title><p>No leader serving here yet: trying again every second.</p>"
)


def _to_leader(request: Request, state: State) -> Response:
    """A follower's (or a deposed leader's) answer: the same path and query at the leader."""
    seat = state.view.leader()
    if seat is None or seat.url is None or seat.host == state.config.host_id:
        # no leader known, or us between keepalives
        if not request.url.path.startswith("/api/"):  # a browser: it asks again by itself
            return HTMLResponse(_NO_LEADER_YET, status_code=503, headers={"Retry-After": "1"})
        if seat is None or seat.url is None:
            return error(503, "no leader elected: try again in a few seconds")
        return error(503, "this agent's lease is not surely alive: it serves no dashboard now")
    target = seat.url.rstrip("/") + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(target, status_code=307)


async def leader(request: Request, state: State) -> Response:
    if state.standalone_url is not None:
        return JSONResponse({"host": state.config.host_id, "url": state.standalone_url, "term": 0})
    seat = state.view.leader()
    if seat is None:
        return error(503, "no leader elected")
    return JSONResponse({"host": seat.host, "url": seat.url, "term": seat.term})


async def metrics(state: State) -> Response:
    """The agent's own metrics (agent/metrics.py), served by it on loopback: relayed as they are."""
    port = state.config.metrics_port
    if port is None:
        return error(404, "this server has no agent metrics to show")
    try:
        body, content_type = await asyncio.to_thread(_fetch, f"http://127.0.0.1:{port}/metrics")
    except OSError as exc:
        return error(503, f"the agent's metrics did not answer: {exc}")
    return Response(body, media_type=content_type)


def _fetch(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read(), response.headers.get("Content-Type", "text/plain")


def hosts_json(state: State) -> dict[str, Any]:
    revision, live, left = state.view.hosts()
    seat = state.view.leader()
    leader_host = seat.host if seat else None
    beats = state.view.heartbeats()
    index = state.index
    # Running counts from the records the index follows, or, with no index (nobody looked for a
    # while: a monitor polling this alone must not keep one), from the live claims; host records
    # lag (their count is as of their last write)
    running = index.running() if index is not None else Catalog(state.registry, state.keys).running_by_host()
    return {
        "revision": revision,
        "hosts": [
            {
                **host_summary(h, leader_host),
                "running": running.get(h.id, 0),
                "heartbeat_age_s": beats.get(h.id),
            }
            for h in live
        ],
        "left": [{"id": host, "left_at": at} for host, at in sorted(left.items(), key=lambda item: -item[1])],
    }


async def hosts(request: Request, state: State) -> Response:
    return JSONResponse(await asyncio.to_thread(hosts_json, state))  # it may read leases and claims


async def episodes(request: Request, state: State) -> Response:
    query = EpisodeQuery.parse(request.query_params)
    index = await wait_index(state)
    revision = query.revision or index.revision
    page, last, total = await asyncio.to_thread(
        index.page, query.matches, revision=revision, after=query.after, limit=query.limit
    )
    return JSONResponse(
        {
            "revision": revision,
            "episodes": [s.to_json() for s in page],
            "next": f"{revision}:{last}" if last else None,
            "total": total,
        }
    )


async def summary(request: Request, state: State) -> Response:
    index = await wait_index(state)
    _, live, _ = state.view.hosts()
    return JSONResponse(index.summary({h.id: h.capacity for h in live}))


async def episode(request: Request, state: State) -> Response:
    episode_id = request.path_params["episode_id"]
    catalog = Catalog(state.registry, state.keys)
    try:
        record = await asyncio.to_thread(catalog.get, episode_id)
    except EpisodeNotFound:
        return error(404, f"no episode {episode_id}")
    except MeshError as exc:  # a corrupt record says so
        return error(500, str(exc))
    body = detail(record)
    body["artifacts"] = artifacts_json(state, record)
    if record.claim and record.owner:  # the running attempt's fencing token: its claim key's create_revision
        kv, _ = await asyncio.to_thread(state.registry.get, state.keys.claim(record.owner, record.claim))
        if kv is not None and body["history"]:
            body["history"][-1]["token"] = kv.create_revision
    revision = state.index.revision if state.index is not None else state.view.revision
    return JSONResponse({"revision": revision, "record": body})


async def page(request: Request, state: State) -> Response:
    episode_id = request.path_params.get("episode_id")
    if episode_id is not None:
        index = await wait_index(state)
        if index.get(episode_id) is None and not await _exists(state, episode_id):
            return FileResponse(STATIC / "index.html", status_code=404)
    return FileResponse(STATIC / "index.html")


async def _exists(state: State, episode_id: str) -> bool:
    try:
        await asyncio.to_thread(Catalog(state.registry, state.keys).get, episode_id)
    except MeshError:
        return False
    return True
