"""Snapshots by content: a file or a directory, stored once under the digest of its bytes.

The blob at ``layout.cas_path(digest)`` is, and ``digest`` is the sha256 of, all of::

    header   8 bytes: b"ORSNAP1F" (a file) or b"ORSNAP1D" (a directory)
    payload  the file's bytes, or the directory as ``archive.pack`` writes it (tar, one zstd frame)

The header makes the kind part of the identity: a file whose bytes happen to be a packed tree and
that tree are two snapshots with two digests, and a reader knows what it got before it writes
anything. A blob with another header (a later format) is refused by name, never misread.

Putting hashes the blob while it streams (a directory is packed into an unlinked spool file on
the way), skips the upload if the blob exists, else writes it create-only with the digest for
the store to verify before the blob becomes visible (``Store.put_stream``). Getting verifies the
digest of every byte read before it reports success, and removes what it wrote if not.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import ArtifactNotFound, HashMismatch, SnapshotNotFound, StoreError, UnsafeSnapshot
from . import archive, layout
from .base import Store
from .digest import CHUNK_SIZE, HashingReader, HashingWriter, Reader, Writer, parse_digest

log = logging.getLogger(__name__)

Kind = Literal["file", "dir"]
HEADERS: dict[bytes, Kind] = {b"ORSNAP1F": "file", b"ORSNAP1D": "dir"}
HEADER_OF: dict[Kind, bytes] = {kind: header for header, kind in HEADERS.items()}
HEADER_SIZE = 8


@dataclass(frozen=True)
class Snapshot:
    """A stored snapshot: ``digest`` (``sha256:<hex>``) and ``size`` are those of the whole blob,
    header included, as it is in the store."""

    digest: str
    size: int
    kind: Kind


def put_snapshot(store: Store, source: str | os.PathLike[str] | Reader, *, spool_dir: str | None = None) -> Snapshot:
    """Store ``source`` by content: a path to a file or a directory, or a binary file object
    (read to its end). A directory or a file object is spooled to an unlinked temporary file
    in ``spool_dir`` (default: the system's) as it is hashed; a file is read twice, once to
    hash and once to upload, and the store checks the second reading against the first
    (``HashMismatch`` if the file changed in between). ``UnsafeSnapshot`` for a directory that
    cannot be packed; a local file that cannot be read is a ``StoreError`` too."""
    try:
        if not isinstance(source, str | os.PathLike):
            return _put_spooled(store, "file", lambda sink: _copy(source, sink), spool_dir)
        path = Path(source)
        if path.is_dir():
            return _put_spooled(store, "dir", lambda sink: archive.pack(path, sink), spool_dir)
        if not path.is_file():
            raise StoreError(f"cannot snapshot {path}: not a file or a directory")
        return _put_file(store, path)
    except OSError as exc:  # the source or the spool: local files, not the store
        raise StoreError(f"cannot snapshot {source}: {type(exc).__name__}: {exc.strerror or exc}") from exc


def get_snapshot(store: Store, digest: str, dest: str | os.PathLike[str]) -> Snapshot:
    """Write snapshot ``digest`` at ``dest``, which must not exist: the file, or the directory
    extracted safely (``archive.unpack``). ``SnapshotNotFound`` if the store has no such blob,
    ``HashMismatch`` if its bytes do not hash to ``digest``; on any error nothing is left at
    ``dest``. Nothing is fsynced: the caller makes ``dest`` visible to others only after this
    returns, and judges what a crash of the machine may have torn (the cache). Errors of
    the local disk at ``dest`` stay ``OSError``, errno and all, for the caller to judge (the
    cache turns ENOSPC into ``CacheFull``)."""
    digest = parse_digest(digest)
    blob = layout.cas_path(digest)
    target = Path(dest)
    created = False
    reader: HashingReader | None = None
    try:
        with store.open_read(blob) as raw:
            reader = HashingReader(raw, beside=True)  # hashed while the bytes are written out
            kind = HEADERS.get(header := reader.read_exactly(HEADER_SIZE))
            if kind is None:
                _verify(reader, digest, drain=True)
                raise StoreError(f"snapshot {digest} has an unknown format {header!r}: from a newer openrange-mesh?")
            created = True
            _materialise(reader, kind, target, digest)
            _verify(reader, digest, drain=True)
    except ArtifactNotFound as exc:
        raise SnapshotNotFound(digest, store.location(blob)) from exc
    except BaseException:
        if created:
            remove_tree(target)
        raise
    finally:
        if reader is not None:
            reader.close()
    return Snapshot(digest, reader.size, kind)


def has_snapshot(store: Store, digest: str) -> bool:
    return store.exists(layout.cas_path(digest))


def list_snapshots(store: Store) -> list[str]:
    """Digests of every blob in the store, sorted."""
    return [d for path in store.list(layout.cas_prefix()) if (d := layout.parse_cas_path(path))]


def delete_snapshot(store: Store, digest: str) -> None:
    store.delete(layout.cas_path(digest))


def remove_tree(path: Path) -> None:
    """Remove a file or a tree, read-only parts included, if it is there."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        for directory, _, _ in os.walk(path):
            os.chmod(directory, 0o700)  # a read-only directory's entries cannot be unlinked
        shutil.rmtree(path, ignore_errors=True)


# -- internals --------------------------------------------------------------------------------


def _put_file(store: Store, path: Path) -> Snapshot:
    with open(path, "rb") as f:
        reader = HashingReader(_Prefixed(HEADER_OF["file"], f))
        reader.drain()
    snapshot = Snapshot(reader.digest, reader.size, "file")
    with open(path, "rb") as f:
        _upload(store, snapshot, _Prefixed(HEADER_OF["file"], f))
    return snapshot


def _put_spooled(store: Store, kind: Kind, produce: Callable[[Writer], None], spool_dir: str | None) -> Snapshot:
    # An unlinked spool (O_TMPFILE where the system has it): nothing to clean up after a crash.
    with tempfile.TemporaryFile(dir=spool_dir) as spool:
        sink = HashingWriter(spool)
        sink.write(HEADER_OF[kind])
        produce(sink)
        spool.flush()
        spool.seek(0)
        snapshot = Snapshot(sink.digest, sink.size, kind)
        _upload(store, snapshot, spool)
    return snapshot


def _upload(store: Store, snapshot: Snapshot, source: Reader) -> None:
    blob = layout.cas_path(snapshot.digest)
    if store.exists(blob):
        log.debug("snapshot %s is stored already", snapshot.digest)
        return
    wrote = store.put_stream(blob, source, create_only=True, sha256=snapshot.digest)
    log.info(
        "stored snapshot %s (%s, %d bytes)%s",
        snapshot.digest,
        snapshot.kind,
        snapshot.size,
        "" if wrote else ": another writer stored it first",
    )


def _materialise(reader: HashingReader, kind: Kind, target: Path, digest: str) -> None:
    if kind == "file":
        with open(target, "xb") as f:  # not fsynced: the cache re-fetches what a crash may have torn
            while chunk := reader.read(CHUNK_SIZE):
                f.write(chunk)
        return
    target.mkdir()
    try:
        archive.unpack(reader, target, digest)
    except StoreError as exc:
        # An archive that does not decode, or holds a refused member, may be a corrupt blob: say
        # so if it is (the rest of the blob decides), else report what the archive did.
        try:
            _verify(reader, digest, drain=True)
        except HashMismatch as mismatch:
            raise mismatch from exc
        except StoreError:
            raise exc from None  # the store failed while draining: the archive's error is the one to report
        if isinstance(exc, UnsafeSnapshot):
            raise
        # every byte is the one stored: an archive that does not decode is the snapshot's own
        # fault (its episode fails), not its host's, on every host alike
        cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
        raise UnsafeSnapshot(digest, "(the archive)", f"is not a readable archive{cause}") from exc


def _verify(reader: HashingReader, digest: str, *, drain: bool) -> None:
    if drain:
        reader.drain()
    if reader.digest != digest:
        raise HashMismatch(digest, reader.digest, reader.size)


def _copy(source: Reader, sink: Writer) -> None:
    while chunk := source.read(CHUNK_SIZE):
        sink.write(chunk)


class _Prefixed:
    """``prefix``, then what ``rest`` reads."""

    def __init__(self, prefix: bytes, rest: Reader) -> None:
        self._prefix = prefix
        self._rest = rest

    def read(self, size: int = -1, /) -> bytes:
        size = CHUNK_SIZE if size is None or size < 0 else size
        if not self._prefix:
            return self._rest.read(size)
        data, self._prefix = self._prefix[:size], self._prefix[size:]
        return data
