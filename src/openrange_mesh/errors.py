"""The exception tree. Everything we raise on purpose derives from ``MeshError``::

    MeshError
    ├── ConfigError            bad settings, URL or flag (user error)
    ├── SpecError              a malformed episode spec (user error)
    │   └── UnknownRuntime     the spec names a runtime nobody registered
    ├── RegistryError          the control plane (etcd or memory) refused or failed
    │   ├── Unavailable        no endpoint answered within retry_timeout: retryable
    │   ├── TlsError           the TLS handshake with an endpoint failed: not retried
    │   │   └── TlsRequired    a plain-http URL names an etcd that serves TLS
    │   ├── Compacted          a watch or read asked for a revision etcd already compacted
    │   ├── LeaseLost          the lease expired or was revoked: stop and let peers requeue
    │   └── TooLarge           a value or txn over etcd's request limits
    ├── StoreError             shared storage (NFS path, S3) or the local snapshot cache failed
    │   ├── ArtifactNotFound   no such object
    │   │   └── SnapshotNotFound   no blob for that snapshot digest
    │   ├── InvalidDigest      not a 'sha256:<64 hex>' digest (bad input, before any I/O)
    │   ├── HashMismatch       bytes that do not hash to their digest: a corrupt blob, or a
    │   │                      source that changed while it was uploaded
    │   ├── UnsafeSnapshot     a directory (to pack) or archive (to extract) with a member that
    │   │                      could escape its root: '..', absolute paths, escaping links, devices
    │   └── CacheFull          the snapshot cache's disk is full
    ├── RuntimeFailure         a runtime could not realise or run an episode
    ├── CorruptRecord          a record in the registry that does not decode (skipped, logged)
    └── EpisodeNotFound        no record under that ID

Losing a race (a claim another host won, a fenced commit) is a result, not an error:
those calls return False or None. Each exception carries its facts as attributes and builds
its own one-line message, which the CLI prints as is.
"""

from __future__ import annotations


class MeshError(Exception):
    """Root of every error openrange-mesh raises on purpose."""


class ConfigError(MeshError):
    """Settings, URLs or flags that cannot work."""


class SpecError(MeshError):
    """An episode spec that cannot be submitted; ``field`` names the culprit."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"invalid spec: {field}: {problem}")


class UnknownRuntime(SpecError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = sorted(known)
        super().__init__("runtime", f"unknown runtime {name!r} (known: {', '.join(self.known) or 'none'})")


class RegistryError(MeshError):
    """The control plane failed in a way that is not a lost race."""


class Unavailable(RegistryError):
    """No endpoint answered within the retry budget. Safe to retry later. ``timed_out``: the last
    attempt waited for an answer in vain (a hung or overloaded etcd), rather than being refused."""

    def __init__(self, endpoints: str, reason: str, *, timed_out: bool = False) -> None:
        self.endpoints = endpoints
        self.reason = reason
        self.timed_out = timed_out
        super().__init__(f"etcd unavailable at {endpoints}: {reason}")


class TlsError(RegistryError):
    """TLS with ``where`` (host:port) failed: a wrong CA, a name the certificate lacks, https to a
    plain etcd. Trying again cannot help, so nothing retries it."""

    def __init__(self, where: str, cause: str) -> None:
        self.where = where
        self.cause = cause
        super().__init__(self._message())

    def _message(self) -> str:
        return f"TLS handshake with {self.where} failed: {self.cause}"


class TlsRequired(TlsError):
    def _message(self) -> str:
        return f"etcd at {self.where} serves TLS, not plain http: {self.cause}"


class Compacted(RegistryError):
    def __init__(self, revision: int, compact_revision: int) -> None:
        self.revision = revision
        self.compact_revision = compact_revision
        super().__init__(f"revision {revision} is compacted (oldest kept: {compact_revision})")


class LeaseLost(RegistryError):
    def __init__(self, lease: int) -> None:
        self.lease = lease
        super().__init__(f"lease {lease:x} expired or was revoked")


class TooLarge(RegistryError):
    def __init__(self, what: str, size: int, limit: int) -> None:
        self.what = what
        self.size = size
        self.limit = limit
        super().__init__(f"{what} is {size} bytes, over the {limit}-byte limit")


class RegistryFull(RegistryError):
    """etcd refuses writes: its database reached its space quota (the NOSPACE alarm). Reads and
    lease keepalives still work; every txn that puts is refused, and a delete-only one was too in
    every run but one (a plain delete, ``etcdctl del``, is not). Nothing is written until an
    operator frees space."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(
            f"etcd is out of space and refused to {what} (mvcc: database space exceeded): compact its history, "
            "defragment it and disarm its NOSPACE alarm (etcdctl compact, defrag, alarm disarm); "
            "running episodes go on and their results wait"
        )


class StoreError(MeshError):
    """Shared storage failed."""


class ArtifactNotFound(StoreError):
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(self._message())

    def _message(self) -> str:
        return f"no artifact at {self.path}"


class SnapshotNotFound(ArtifactNotFound):
    """No blob for ``digest``; ``path`` is where it would be."""

    def __init__(self, digest: str, path: str) -> None:
        self.digest = digest
        super().__init__(path)

    def _message(self) -> str:
        return f"snapshot {self.digest} not found"


class InvalidDigest(StoreError):
    def __init__(self, value: object) -> None:
        self.value = value
        super().__init__(f"invalid snapshot digest {value!r}: want 'sha256:' and 64 lowercase hex digits")


class HashMismatch(StoreError):
    """``size`` bytes were read and hashed to ``actual`` where ``expected`` was promised."""

    def __init__(self, expected: str, actual: str, size: int) -> None:
        self.expected = expected
        self.actual = actual
        self.size = size
        super().__init__(f"hash mismatch: expected {expected}, got {actual} after {size} bytes")


class UnsafeSnapshot(StoreError):
    """``where`` (a local directory or a snapshot digest) holds ``member``, refused for ``problem``."""

    def __init__(self, where: str, member: str, problem: str) -> None:
        self.where = where
        self.member = member
        self.problem = problem
        super().__init__(f"unsafe snapshot {where}: {member!r} {problem}")


class CacheFull(StoreError):
    """The disk of the snapshot cache ``directory`` filled up (while caching ``digest``, if any)."""

    def __init__(self, directory: str, digest: str, reason: str) -> None:
        self.directory = directory
        self.digest = digest
        self.reason = reason
        what = f"to cache snapshot {digest} " if digest else ""
        super().__init__(f"no space {what}in {directory}: {reason}")


class RuntimeFailure(MeshError):
    """A runtime could not realise or run an episode."""


class CorruptRecord(MeshError):
    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"corrupt record at {key}: {problem}")


class EpisodeNotFound(MeshError):
    def __init__(self, episode_id: str) -> None:
        self.episode_id = episode_id
        super().__init__(f"no episode {episode_id!r}")
