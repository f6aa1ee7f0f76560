"""``/api/episodes/{id}/events``: an attempt's events from the store, a page at a time (a 50k-event
episode must not reach the browser at once)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import EpisodeNotFound, MeshError
from ..ledger.catalog import Catalog
from ..model import EpisodeRecord
from ..store import Store
from ..store.events import read_events
from .answers import error
from .query import BadQuery

if TYPE_CHECKING:
    from .state import State

PAGE = 500
MAX_PAGE = 2000
KEPT = 4  # closed attempts whose events are kept decoded: a page scrolling through 50k events
# reads them once, not once per page of 500 (100 full reads of the store)
_closed: OrderedDict[tuple[str, int], list[dict[str, Any]]] = OrderedDict()  # the event loop's only


async def events_page(request: Request, state: State) -> Response:

    params = request.query_params
    offset = _int("offset", params.get("offset"), 0, 0, None)
    limit = _int("limit", params.get("limit"), PAGE, 1, MAX_PAGE)
    episode_id = request.path_params["episode_id"]
    if state.store is None:
        return error(503, "this agent has no store to read events from")
    try:
        record = await asyncio.to_thread(Catalog(state.registry, state.keys).get, episode_id)
    except EpisodeNotFound:
        return error(404, f"no episode {episode_id}")
    attempt = _int("attempt", params.get("attempt"), record.attempt, 1, record.attempt)
    try:
        events = await _events(state.store, record, attempt)
    except MeshError as exc:
        return error(503, f"store: {exc}")
    page = events[offset : offset + limit]
    more = offset + limit < len(events)
    return JSONResponse(
        {"attempt": attempt, "events": page, "next": offset + limit if more else None, "total": len(events)}
    )


async def _events(store: Store, record: EpisodeRecord, attempt: int) -> list[dict[str, Any]]:
    """An attempt's events; those of a closed attempt (they no longer change) from ``_closed``."""
    key = (record.id, attempt)
    if key in _closed:
        _closed.move_to_end(key)
        return _closed[key]
    events = await asyncio.to_thread(_read, store, record, attempt)
    tried = record.tried(attempt)
    if tried is not None and tried.finished_at is not None:
        _closed[key] = events  # its events reached the store before its record closed it
        while len(_closed) > KEPT:
            _closed.popitem(last=False)
    return events


def _read(store: Store, record: EpisodeRecord, attempt: int) -> list[dict[str, Any]]:
    tried = record.tried(attempt)
    if tried is None:
        return read_events(store, record.id, attempt)
    return read_events(store, record.id, attempt, batch=tried.batch, shared=tried.events, inline=tried.inline_events)


def _int(name: str, text: str | None, default: int, low: int, high: int | None) -> int:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadQuery(f"{name} must be a whole number, not {text!r}") from None
    if value < low or (high is not None and value > high):
        raise BadQuery(f"{name} must be {low}-{high if high is not None else '...'}, not {value}")
    return value
