"""The artifact seam: snapshots and episode artifacts on shared storage (a directory, NFS, S3).

Every store implements ``Store`` with these semantics:

* Paths are relative, '/'-separated, with no empty, '.' or '..' component; anything else raises
  ``StoreError`` before any I/O. The layout (which path holds what) lives in ``store.layout``.
* ``put_bytes`` is atomic for readers: a reader sees the old object, the new one, or none, never a
  partial write. The last writer wins. A path must not also be a prefix of another object's path
  (on a directory store it would have to be a file and a directory at once).
* ``list(prefix)`` returns every object whose path starts with ``prefix`` (a string prefix, as in
  etcd: end it with '/' to mean a directory), as store-relative paths in sorted order. It reads
  the backend, not a cache, so it sees what other hosts wrote.
* ``put_stream`` and ``open_read`` move an object in chunks (``digest.CHUNK_SIZE``; 8 MiB parts
  on S3), never whole in memory. A create-only put is how content-addressed blobs are written:
  the first writer creates the object, every later one leaves it alone and learns so (a lost
  race is a result: False). With ``sha256`` the bytes are verified before they become visible.
* Deletes are idempotent: deleting what is not there is not an error.
* Nothing above the seam sees a third-party exception: stores raise only ``errors.StoreError``
  (``ArtifactNotFound`` when reading a missing object) with a one-line message.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

from .digest import Reader


@runtime_checkable
class Store(Protocol):
    """The artifact seam. Implementations are thread-safe and safe to use from many hosts."""

    url: str  # the URL it was opened with, normalised, credentials never included (safe to log)

    def put_bytes(self, path: str, data: bytes, *, durable: bool = True) -> None:
        """Write ``data`` at ``path``, replacing any object there, atomically for readers.
        ``durable=False`` lets a local filesystem skip the fsync (readers still never see a
        partial object; a host crash may lose it): for event chunks, whose loss costs only
        diagnostics, at a fraction of the price."""
        ...

    def get_bytes(self, path: str) -> bytes:
        """The object at ``path``. Raises ``ArtifactNotFound`` if there is none."""
        ...

    def put_stream(self, path: str, source: Reader, *, create_only: bool = True, sha256: str | None = None) -> bool:
        """Write what ``source`` reads, to its end, at ``path``, atomically for readers and
        durably (fsynced on a file store). Returns whether this call wrote the object.

        ``create_only``: if an object is at ``path`` already, or another writer creates one
        before this one finishes, leave it and return False; the object is then immutable (read
        only on a file store). Otherwise replace what is there, as ``put_bytes`` does, and
        return True. ``sha256`` (``sha256:<hex>``): the digest the bytes must have; on a
        mismatch nothing becomes visible and ``HashMismatch`` is raised. An error while reading
        ``source`` leaves nothing visible either."""
        ...

    def open_read(self, path: str) -> AbstractContextManager[Reader]:
        """A stream of the object at ``path``, in one request on S3 (one GET, however large).
        Raises ``ArtifactNotFound`` when entered if there is none, and ``StoreError`` from
        ``read`` if the object is cut short (a dropped connection): never a short stream that
        looks complete."""
        ...

    def exists(self, path: str) -> bool:
        """Whether an object (not merely a prefix of one) is at ``path``."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Sorted relative paths of every object whose path starts with ``prefix``."""
        ...

    def modified(self, prefix: str = "") -> dict[str, float]:
        """``list(prefix)``'s paths, each with when it was last written (unix seconds): for
        collection after a grace period (ledger/storage_gc.py)."""
        ...

    def delete(self, path: str) -> None:
        """Remove the object at ``path`` if there is one."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object ``list(prefix)`` would return; return how many there were."""
        ...

    def location(self, path: str = "") -> str:
        """Where ``path`` lives, as a user can open it: ``/abs/dir/path``, ``s3://bucket/prefix/path``
        or ``memory://name/path``."""
        ...
