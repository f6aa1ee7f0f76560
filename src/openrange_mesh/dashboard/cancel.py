"""``POST /api/cancel``: one episode, a list, or every pending and running one a filter matches.

Mutations need the agent's ``--dashboard-token`` (none set: the dashboard is read-only) as a
bearer token, and a same-origin request (``Origin`` equal to the page's own), so another site
open in the same browser cannot cancel through it."""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..client.client import MeshClient
from ..errors import EpisodeNotFound
from .answers import error, wait_index
from .query import BadQuery, EpisodeQuery

if TYPE_CHECKING:
    from .state import State

MAX_IDS = 10_000  # one request; a bigger cancel is a filter


async def cancel_request(request: Request, state: State) -> Response:

    refused = _refusal(request, state.config.token)
    if refused is not None:
        return error(*refused)
    body = await _body(request)
    if "ids" in body:
        ids = body["ids"]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or len(ids) > MAX_IDS:
            raise BadQuery(f"ids must be a list of at most {MAX_IDS} episode ids")
    elif isinstance(body.get("filter"), dict):
        query = EpisodeQuery.parse(body["filter"])
        index = await wait_index(state)
        ids = await asyncio.to_thread(index.matching, query.matches, ("pending", "running"))
    else:
        raise BadQuery('send {"ids": [...]} or {"filter": {...}}')
    client = MeshClient(state.registry, namespace=state.config.namespace)
    outcomes = await asyncio.to_thread(_cancel_each, client, ids)
    return JSONResponse(
        {"outcomes": outcomes, "count": sum(o in ("cancelled", "requested") for o in outcomes.values())}
    )


def _cancel_each(client: MeshClient, ids: list[str]) -> dict[str, str]:
    outcomes: dict[str, str] = {}
    for episode_id in ids:
        try:
            outcomes[episode_id] = client.cancel([episode_id])[episode_id]
        except EpisodeNotFound:
            outcomes[episode_id] = "not found"
    return outcomes


def _refusal(request: Request, token: str) -> tuple[int, str] | None:
    if not token:
        return 403, "read-only dashboard: no --dashboard-token is configured on the agents"
    given = request.headers.get("authorization", "")
    if not given.startswith("Bearer "):
        return 401, "cancelling needs the dashboard token (Authorization: Bearer <token>)"
    if not hmac.compare_digest(given[len("Bearer ") :].encode(), token.encode()):
        return 403, "wrong dashboard token"
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if origin != own:
        return 403, f"cross-origin request refused (Origin {origin or 'missing'}, this page is {own})"
    return None


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise BadQuery("the body must be JSON") from None
    if not isinstance(body, dict):
        raise BadQuery('the body must be a JSON object: {"ids": [...]} or {"filter": {...}}')
    return body
