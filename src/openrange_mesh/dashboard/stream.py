"""``/api/stream``: the page's one live stream, server-sent events (sse-starlette frames them).

Every message's id is an etcd revision, and all the changes of one revision go in one message,
so a client that reconnects with ``Last-Event-ID`` resumes with no gap and no duplicate. Events:

* ``episodes``: the summaries that changed at one revision (a deleted one: ``{"id", "deleted"}``);
* ``hosts``: the ``/api/hosts`` answer, when hosts or the leader changed;
* ``reset``: the changes after the client's revision are no longer kept: list again.

The stream ends when this agent stops leading; the page reconnects and is redirected.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response

from .index import Summary

if TYPE_CHECKING:
    from .server import State

POLL = 0.25  # seconds between looks at the index's change log
PING = 15  # seconds between keep-alive comments


async def stream(request: Request, state: State, hosts: Callable[[State], dict[str, Any]]) -> Response:
    from .app import wait_index  # the app module imports this one

    index = await wait_index(state)
    last = request.headers.get("last-event-id", "")
    revision = int(last) if last.isdigit() else index.revision

    async def messages() -> Any:
        nonlocal revision
        hosts_seen = -1
        yield {"event": "hello", "id": str(revision), "data": json.dumps({"revision": revision})}
        while state.serving and state.index is index and not await request.is_disconnected():
            changes, kept = index.changes_since(revision)
            if not kept:
                revision = index.revision
                yield {"event": "reset", "id": str(revision), "data": json.dumps({"revision": revision})}
                continue
            for at, batch in _by_revision(changes):
                revision = at
                yield {"event": "episodes", "id": str(at), "data": json.dumps(batch)}
            listing = await asyncio.to_thread(hosts, state)
            if listing["revision"] != hosts_seen:
                hosts_seen = listing["revision"]
                yield {"event": "hosts", "data": json.dumps(listing)}
            await asyncio.sleep(POLL)

    return EventSourceResponse(messages(), ping=PING)


def _by_revision(changes: list[tuple[int, Summary | str]]) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    batch: list[dict[str, Any]] = []
    current = 0
    for at, change in changes:
        if batch and at != current:
            yield current, batch
            batch = []
        current = at
        batch.append(change.to_json() if isinstance(change, Summary) else {"id": change, "deleted": True})
    if batch:
        yield current, batch
