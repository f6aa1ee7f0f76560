"""An episode's files on its worker's host: the snapshot it starts from, read through the
host's cache, and the artifacts it writes, uploaded under its attempt's fencing token.

A runtime sees both as local paths: ``realize(snapshot_path=...)`` when it takes one (else the
snapshot's bytes, as before), and the environment variables ``OPENRANGE_SNAPSHOT`` (the local
file or directory) and ``OPENRANGE_ARTIFACTS`` (an empty directory of its own), which the
``command`` runtime's process inherits. After the episode, every regular file in that directory
is uploaded (streamed, hashed as it goes) to ``layout.artifact_path(..., token, name)`` and
listed in the result (name, size, sha256); the directory is emptied for the next episode.

Whose fault a failure is decides what it costs (design/README.md, "Failure model"): a snapshot
that does not exist or does not match its digest fails the episode (its spec named it); a store
or cache that fails is the host's, and the episode goes back to the queue untouched.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import HashMismatch, SnapshotNotFound, StoreError, UnsafeSnapshot
from ..store import Store
from ..store.cache import SnapshotCache
from ..store.digest import HashingReader, parse_digest
from ..store.layout import artifact_path
from .dirwatch import DirWatch

log = logging.getLogger(__name__)

SNAPSHOT_ENV, ARTIFACTS_ENV = "OPENRANGE_SNAPSHOT", "OPENRANGE_ARTIFACTS"
MAX_ARTIFACTS = 256  # files an attempt may leave: their list lives in its etcd record


class EpisodeFault(Exception):
    """The episode's own (its snapshot): it fails."""


class HostFault(Exception):
    """The host's (its store or cache): the episode goes back to the queue, no attempt spent."""


@contextlib.contextmanager
def snapshot(ref: str | None, cache: SnapshotCache | None) -> Iterator[Path | None]:
    """The local path of the spec's snapshot, pinned in the cache while the episode runs."""
    if ref is None:
        yield None
        return
    if cache is None:
        raise HostFault(f"this host has no store to read snapshot {ref} from")
    try:
        digest = parse_digest(ref)
    except StoreError as exc:  # an alias that reached a worker unresolved: submit resolves them
        raise EpisodeFault(f"snapshot {ref!r} is not a digest ({exc}); submit resolves names") from exc
    with contextlib.ExitStack() as pinned:  # only the fetch is judged here, not the episode inside
        try:
            path = pinned.enter_context(cache.open(digest))
        except (SnapshotNotFound, HashMismatch, UnsafeSnapshot) as exc:
            raise EpisodeFault(str(exc)) from exc
        except StoreError as exc:
            raise HostFault(f"its host's store failed: {exc}") from exc
        yield path


def realize_args(runtime: Any, path: Path | None) -> dict[str, Any]:
    """How a runtime takes the snapshot: its path if ``realize`` has a ``snapshot_path``
    parameter, else its bytes (a directory needs a runtime that takes a path)."""
    if path is None:
        return {}
    if _takes_path(runtime):
        return {"snapshot_path": path}
    if path.is_dir():
        why = "a directory snapshot needs a runtime whose realize takes snapshot_path"
        raise EpisodeFault(f"runtime {runtime.name!r} takes snapshots as bytes; {why}")
    return {"snapshot": path.read_bytes()}


_TAKES_PATH: dict[type, bool] = {}


def _takes_path(runtime: Any) -> bool:
    kind = type(runtime)
    known = _TAKES_PATH.get(kind)
    if known is None:
        known = _TAKES_PATH[kind] = "snapshot_path" in inspect.signature(runtime.realize).parameters
    return known


class Outputs:
    """The worker's artifacts directory (``OPENRANGE_ARTIFACTS``): one for all its episodes, made
    at its start, emptied after each episode that left something. A directory made and removed
    per episode cost more than a CartPole episode; one that stayed empty is told by one poll of
    an inotify descriptor (dirwatch.py; else by a ``scandir``). ``watch=False``: always scan.

    An episode may do anything to the directory: remove it, close its permissions, put a file or
    a link in its place. None of that may take the worker down, reach outside the directory (a
    link in its place is never followed: the worker would upload, then empty, what it points
    at) or leave this episode's files to the next one: what cannot be emptied is left behind
    for a fresh directory. The caller stops the episode's processes first (child.run_item)."""

    def __init__(self, *, watch: bool = True) -> None:
        self._abandoned: list[Path] = []  # directories an episode left that could not be emptied
        self.directory = self._make()
        self._watch = DirWatch.open(self.directory) if watch else None

    def upload(self, store: Store | None, episode_id: str, attempt: int, token: int | None) -> list[dict[str, Any]]:
        """Every regular file the episode left, streamed to the store under ``token``; their
        list. Raises EpisodeFault (too many files, a file or the directory it could not read,
        the directory replaced) or HostFault (the store refused one). The directory is empty
        afterwards, whatever happened."""
        if self._watch is not None and not self._watch.created():
            return []
        try:
            files = self._left()
            if not files:
                return []
            if store is None or token is None:
                raise HostFault("artifacts were written, but this host has no store (or the claim no token) for them")
            if len(files) > MAX_ARTIFACTS:
                raise EpisodeFault(f"wrote {len(files)} artifacts, more than {MAX_ARTIFACTS}: pack them into one (tar)")
            return [self._put(store, path, episode_id, attempt, token) for path in files]
        finally:
            self._reset()

    def _left(self) -> list[Path]:
        """The regular files in the directory (none if the episode removed it)."""
        try:
            mode = os.lstat(self.directory).st_mode
        except FileNotFoundError:
            return []  # removed: made again by _reset
        if not stat.S_ISDIR(mode):
            raise EpisodeFault("its artifacts directory was replaced by a link or a file: nothing was uploaded")
        try:
            _opened_up(self.directory)
            with os.scandir(self.directory) as entries:
                if next(entries, None) is None and (self._watch is None or not self._watch.gone):
                    return []  # the common case: nothing left, and the watch still on it
            return sorted(p for p in self.directory.rglob("*") if p.is_file() and not p.is_symlink())
        except OSError as exc:
            raise EpisodeFault(f"its artifacts directory could not be read: {exc.strerror or exc}") from exc

    def _put(self, store: Store, path: Path, episode_id: str, attempt: int, token: int) -> dict[str, Any]:
        name = path.relative_to(self.directory).as_posix()
        try:
            target = artifact_path(episode_id, attempt, token, name)
        except StoreError as exc:  # a name the store cannot hold: the runtime's choice
            raise EpisodeFault(str(exc)) from exc
        try:
            with path.open("rb") as raw:
                reader = HashingReader(raw, beside=True)  # hashed while the store takes the bytes
                try:
                    store.put_stream(target, reader, create_only=False)
                finally:
                    reader.close()
        except OSError as exc:
            raise EpisodeFault(f"artifact {name}: {exc.strerror or exc}") from exc
        except StoreError as exc:
            raise HostFault(f"its host's store refused artifact {name}: {exc}") from exc
        return {"name": name, "size": reader.size, "sha256": reader.digest}

    def _reset(self) -> None:
        """The directory emptied for the next episode: made again if the episode removed it or
        put something in its place, a fresh one if it cannot be emptied; watched again if the
        watched one went."""
        try:
            self._empty()
        except OSError as exc:
            log.warning(
                "an episode left its artifacts directory %s as it cannot be emptied (%s); a new one",
                self.directory,
                exc,
            )
            self._abandoned.append(self.directory)
            self.directory = self._make()
        if self._watch is not None and self._watch.gone:  # it watched the directory that went
            self._watch.close()
            self._watch = DirWatch.open(self.directory)

    def _empty(self) -> None:
        if self.directory.is_symlink() or (self.directory.exists() and not self.directory.is_dir()):
            self.directory.unlink()  # never followed
        elif self.directory.is_dir():
            _opened_up(self.directory)
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
        self.directory.mkdir(exist_ok=True)

    @staticmethod
    def _make() -> Path:
        directory = Path(tempfile.mkdtemp(prefix=f"openrange-artifacts-{os.getpid()}-"))
        os.environ[ARTIFACTS_ENV] = str(directory)  # for this worker's life: its runtimes inherit it
        return directory

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
        for directory in [*self._abandoned, self.directory]:
            if directory.is_dir() and not directory.is_symlink():
                with contextlib.suppress(OSError):
                    _opened_up(directory)
            shutil.rmtree(directory, ignore_errors=True)
        if self.directory.is_symlink() or self.directory.is_file():
            self.directory.unlink(missing_ok=True)


def _opened_up(root: Path) -> None:
    """Every directory under ``root`` (links not followed) readable, writable and searchable by
    us: an episode may have closed some, and what it left must be listed, then removed."""
    os.chmod(root, 0o700)
    for directory, subdirectories, _ in os.walk(root):
        for name in subdirectories:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                os.chmod(path, 0o700)


def remove_leftovers(pid: int) -> None:
    """What a worker killed outright left of its artifacts directory (the pool, at its death)."""
    for path in Path(tempfile.gettempdir()).glob(f"openrange-artifacts-{pid}-*"):
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def snapshot_env(snapshot_path: Path | None) -> Iterator[None]:
    """``OPENRANGE_SNAPSHOT`` while an episode with a snapshot runs (a worker runs one at a
    time); an episode without one touches the environment not at all."""
    if snapshot_path is None:
        yield
        return
    os.environ[SNAPSHOT_ENV] = str(snapshot_path)
    try:
        yield
    finally:
        os.environ.pop(SNAPSHOT_ENV, None)
