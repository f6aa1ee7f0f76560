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
* Deletes are idempotent: deleting what is not there is not an error.
* Nothing above the seam sees a third-party exception: stores raise only ``errors.StoreError``
  (``ArtifactNotFound`` when reading a missing object) with a one-line message.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


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

    def exists(self, path: str) -> bool:
        """Whether an object (not merely a prefix of one) is at ``path``."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Sorted relative paths of every object whose path starts with ``prefix``."""
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
