"""An episode's artifacts: what the runtime of its committed attempt wrote, as its record lists
them, read from the store under that attempt's fencing token (worker/files.py uploads them).
Only the committed attempt's are listed: a stale owner's uploads sit under its own token,
which no committed record names."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import ArtifactNotFound, StoreError
from ..model import EpisodeRecord
from ..store import Store
from ..store.digest import Reader
from ..store.layout import artifact_path


@dataclass(frozen=True)
class Artifact:
    name: str
    size: int
    sha256: str
    attempt: int
    path: str  # in the store (``Store.location(path)`` says where a user can open it)


def listed(record: EpisodeRecord) -> list[Artifact]:
    """The artifacts of the attempt that ended the episode; none while it has not ended."""
    if not record.state.is_terminal or not record.history:
        return []
    last = record.history[-1]
    if last.token is None or not last.artifacts:
        return []
    found = []
    for entry in last.artifacts:
        name, size, digest = entry.get("name"), entry.get("size"), entry.get("sha256")
        if isinstance(name, str) and isinstance(size, int) and isinstance(digest, str):
            found.append(Artifact(name, size, digest, last.n, artifact_path(record.id, last.n, last.token, name)))
    return found


@contextmanager
def open_artifact(store: Store, record: EpisodeRecord, name: str) -> Iterator[Reader]:
    """A reader of artifact ``name`` (streamed: ``read(n)`` in chunks). ``ArtifactNotFound`` if
    the committed attempt lists no such artifact."""
    found = next((a for a in listed(record) if a.name == name), None)
    if found is None:
        names = ", ".join(a.name for a in listed(record)) or "none"
        raise ArtifactNotFound(f"{record.id}/{name} (its artifacts: {names})")
    try:
        with store.open_read(found.path) as reader:
            yield reader
    except ArtifactNotFound:
        raise
    except StoreError as exc:
        raise StoreError(f"{record.id}: cannot read artifact {name!r}: {exc}") from exc
