"""``/api/stream``: the page's one live stream, server-sent events (sse-starlette frames them).

Every message's id is an etcd revision, and a message holds every change up to it (never part
of a revision), so a client that reconnects with ``Last-Event-ID`` resumes with no gap and no
duplicate. Events:

* ``episodes``: the latest summary of each episode that changed since the last message, up to
  its id's revision, in the order of their last changes (a deleted one: ``{"id", "deleted"}``).
  A page shows an episode's present, not its path: a no-op episode is claimed and finished
  within one poll, and sending each of its three changes to every page tripled the bytes;
* ``hosts``: the ``/api/hosts`` answer, when hosts, the leader or a host's running count changed;
* ``reset``: the changes after the client's revision are no longer kept: list again.

The stream ends when this agent stops leading; the page reconnects and is redirected.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response

from .answers import wait_index
from .index import Summary

if TYPE_CHECKING:
    from .state import State

POLL = 0.25  # seconds between looks at the index's change log
PING = 15  # seconds between keep-alive comments


async def stream(request: Request, state: State, hosts: Callable[[State], dict[str, Any]]) -> Response:

    index = await wait_index(state)
    last = request.headers.get("last-event-id", "")
    revision = int(last) if last.isdigit() else index.revision

    async def messages() -> Any:
        nonlocal revision
        hosts_seen: tuple[int, dict[str, int]] = (-1, {})
        yield {"event": "hello", "id": str(revision), "data": json.dumps({"revision": revision})}
        while state.serving and state.index is index and not await request.is_disconnected():
            state.want_index()  # an open page keeps the index
            changes, kept = index.changes_since(revision)
            if not kept:
                revision = index.revision
                yield {"event": "reset", "id": str(revision), "data": json.dumps({"revision": revision})}
                continue
            if changes:  # one message for all of them: its id is the last one's revision
                revision = changes[-1][0]
                yield {"event": "episodes", "id": str(revision), "data": _message(changes)}
            seen = (state.view.changed(), index.running())
            if seen != hosts_seen:  # built (lease reads and all) only on a change
                listing = await asyncio.to_thread(hosts, state)
                hosts_seen = seen
                yield {"event": "hosts", "data": json.dumps(listing)}
            await asyncio.sleep(POLL)

    return EventSourceResponse(messages(), ping=PING)


def _message(changes: list[tuple[int, Summary | str]]) -> str:
    """Every change since the client's revision as one JSON list, the latest of each episode
    only: the index applies a batch of revisions at once (index.py), so a message never holds
    part of a revision. Pages that poll at the same revision share one message (``_MESSAGES``):
    five open pages built five equal strings."""
    key = (changes[0][0], changes[-1][0], len(changes))
    message = _MESSAGES.get(key)
    if message is None:
        latest: dict[str, Summary | str] = {}
        for _, change in changes:
            episode_id = change.id if isinstance(change, Summary) else change
            latest.pop(episode_id, None)  # its place is that of its last change
            latest[episode_id] = change
        message = f"[{','.join(_encoded(change) for change in latest.values())}]"
        if len(_MESSAGES) >= MESSAGES_KEPT:
            _MESSAGES.pop(next(iter(_MESSAGES)))
        _MESSAGES[key] = message
    return message


MESSAGES_KEPT = 32
# (first revision, last revision, count) -> message: revisions name etcd's history, so the
# same span holds the same changes in any index (a leader that leads again builds a new one)
_MESSAGES: dict[tuple[int, int, int], str] = {}


@functools.lru_cache(maxsize=8192)
def _encoded(change: Summary | str) -> str:
    """A change as JSON, encoded once however many pages stream it (five open pages encoded each
    summary five times: ~30 us each, a fifth of the no-op mesh's throughput on two cores)."""
    if isinstance(change, Summary):
        return json.dumps(change.to_json())
    return json.dumps({"id": change, "deleted": True})
