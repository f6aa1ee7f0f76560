"""What every handler answers with: a one-line JSON error, and the index once it is ready."""

from __future__ import annotations

import asyncio
import time

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from .index import EpisodeIndex
from .state import State

INDEX_WAIT = 10.0  # seconds a request waits for a new leader's first listing


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


async def wait_index(state: State) -> EpisodeIndex:
    """The index, once its first listing is done (503 past ``INDEX_WAIT``): a new leader's, or
    one built for this request after nobody asked for a while (config.py ``INDEX_KEEP``)."""
    state.want_index()
    index = state.index
    deadline = time.monotonic() + INDEX_WAIT
    while index is None or not index.ready.is_set():
        if time.monotonic() >= deadline:
            raise HTTPException(503, "the leader is still listing the episodes: try again shortly")
        await asyncio.sleep(0.05)
        state.want_index()  # the watcher may have dropped it between our ask and its look
        index = state.index
    return index
