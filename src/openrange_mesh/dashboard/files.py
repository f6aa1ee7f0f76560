"""An episode's artifacts on the dashboard: listed in ``/api/episodes/{id}`` (the attempt that
ended it: client/artifacts.py) and streamed from the store by
``/api/episodes/{id}/artifacts/{name}``, a chunk at a time (an artifact may be gigabytes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..client.artifacts import listed, open_artifact
from ..errors import ArtifactNotFound, EpisodeNotFound, MeshError
from ..ledger.catalog import Catalog
from ..model import EpisodeRecord
from ..store.digest import CHUNK_SIZE
from ..store.layout import artifacts_prefix
from .answers import error
from .state import State


def artifacts_json(state: State, record: EpisodeRecord) -> list[dict[str, Any]]:
    """The page's view: the committed attempt, where its files are, and a link to each."""
    found = listed(record)
    if not found:
        return []
    last = record.history[-1]
    assert last.token is not None  # listed() lists only attempts with a token
    prefix = artifacts_prefix(record.id, last.n, last.token)
    base = f"/api/episodes/{quote(record.id, safe='')}/artifacts/"
    files = [{"name": a.name, "size": a.size, "sha256": a.sha256, "url": base + quote(a.name)} for a in found]
    location = state.store.location(prefix) if state.store is not None else prefix
    return [{"attempt": last.n, "location": location, "url": None, "files": files}]


async def artifact(request: Request, state: State) -> Response:
    episode_id, name = request.path_params["episode_id"], request.path_params["name"]
    if state.store is None:
        return error(503, "this agent has no store to read artifacts from")
    try:
        record = await asyncio.to_thread(Catalog(state.registry, state.keys).get, episode_id)
    except EpisodeNotFound:
        return error(404, f"no episode {episode_id}")
    match = next((a for a in listed(record) if a.name == name), None)
    if match is None:
        return error(404, f"episode {episode_id} has no artifact {name!r}")
    return StreamingResponse(
        _chunks(state, record, name),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(match.size),
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name.rpartition('/')[2])}",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def _chunks(state: State, record: EpisodeRecord, name: str) -> AsyncIterator[bytes]:
    assert state.store is not None
    try:
        with open_artifact(state.store, record, name) as reader:
            while chunk := await asyncio.to_thread(reader.read, CHUNK_SIZE):
                yield chunk
    except (ArtifactNotFound, MeshError):  # headers are sent: cutting the body short says it failed
        return
