"""``FsspecStore``: the one ``Store``, over fsspec's local, memory and s3 filesystems.

Only this package imports fsspec and s3fs. Every call into them goes through ``_translated``,
the one place their exceptions become ``StoreError``.
"""

from __future__ import annotations

import builtins
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any, Literal

from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from ..errors import ArtifactNotFound, ConfigError, MeshError, StoreError
from . import streams
from .digest import CHUNK_SIZE, Reader

log = logging.getLogger(__name__)

Kind = Literal["file", "memory", "s3"]

S3_INSTALL_HINT = "pip install 'openrange-mesh[s3]'"
# An unreachable endpoint must fail in seconds, not minutes: botocore's defaults (60 s connect,
# legacy retries) stacked under s3fs's own 5 retries wait ~1 minute per call. Retries of whole
# operations belong to the caller's retry policy, so the store tries each request a few times only.
S3_CONNECT_TIMEOUT = 3.0
S3_READ_TIMEOUT = 30.0
S3_MAX_ATTEMPTS = 3

# Temporary files of an in-flight atomic put: ".<name>.<32 hex>.tmp" next to the target.
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")


class FsspecStore:
    """A ``Store`` rooted at a directory, a memory-fs name or an S3 bucket/prefix.
    Build one with ``local``, ``memory`` or ``s3`` (or ``store.open_store(url)``)."""

    def __init__(self, fs: Any, kind: Kind, root: str, url: str, *, rebuild: Callable[[], Any] | None = None) -> None:
        self._fs_instance = fs
        self._kind = kind
        self._root = root.rstrip("/")  # every object is at f"{root}/{path}" in fs terms
        self.url = url
        self._rebuild = rebuild
        self._pid = os.getpid()

    @property
    def _fs(self) -> Any:
        # s3fs runs its calls on an event-loop thread that a forked child does not inherit
        # ("This class is not fork-safe"), so a child builds its own filesystem on first use.
        if self._rebuild is not None and self._pid != os.getpid():
            self._fs_instance, self._pid = self._rebuild(), os.getpid()
        return self._fs_instance

    @classmethod
    def local(cls, directory: str) -> FsspecStore:
        """A store in ``directory`` (absolute; created on first write, not at open)."""
        return cls(LocalFileSystem(), "file", directory, f"file://{directory}")

    @classmethod
    def memory(cls, name: str = "") -> FsspecStore:
        """A store in fsspec's process-global memory filesystem under ``name``, shared by every
        opener of that name; without a name, a fresh private one (as the memory registry does)."""
        if name:
            return cls(MemoryFileSystem(), "memory", f"/{name}", f"memory://{name}")
        private = MemoryFileSystem(global_store=False, skip_instance_cache=True)
        return cls(private, "memory", "", "memory://")

    @classmethod
    def s3(
        cls,
        bucket: str,
        prefix: str,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
    ) -> FsspecStore:
        """A store under ``s3://bucket/prefix``; credentials come from the usual AWS env/config.
        Checks once, here, that the bucket exists."""
        try:
            import s3fs
        except ImportError as exc:
            raise ConfigError(f"{url} needs s3fs: {S3_INSTALL_HINT}") from exc
        options: dict[str, Any] = {"profile": profile} if profile else {}

        def build() -> Any:
            fs = s3fs.S3FileSystem(
                endpoint_url=endpoint_url,
                client_kwargs={"region_name": region} if region else {},
                config_kwargs={
                    "connect_timeout": S3_CONNECT_TIMEOUT,
                    "read_timeout": S3_READ_TIMEOUT,
                    "retries": {"total_max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
                },
                use_listings_cache=False,  # other hosts write too: always list the bucket itself
                skip_instance_cache=True,  # we set ``retries`` below; keep the instance our own
                **options,
            )
            fs.retries = 1  # s3fs's own retry loop would multiply botocore's attempts
            return fs

        store = cls(build(), "s3", f"{bucket}/{prefix}" if prefix else bucket, url, rebuild=build)
        where = f" at {endpoint_url}" if endpoint_url else ""
        missing = StoreError(f"bucket {bucket!r} does not exist{where}")
        with store._translated("open bucket", "", missing=missing):
            store._fs.call_s3("head_bucket", Bucket=bucket)
        return store

    def __repr__(self) -> str:
        return f"FsspecStore({self.url!r})"

    # -- the Store protocol ------------------------------------------------------------------

    def put_bytes(self, path: str, data: bytes, *, durable: bool = True) -> None:
        full = self._full(path)
        with self._translated("write", path):
            if self._kind == "file":
                _replace_file(full, data, durable=durable)
            else:  # memory and S3 puts replace whole objects atomically already
                self._fs.pipe_file(full, bytes(data))

    def get_bytes(self, path: str) -> bytes:
        full = self._full(path)
        with self._translated("read", path, missing=ArtifactNotFound(self.location(path))):
            data: bytes = self._fs.cat_file(full)
        return data

    def put_stream(self, path: str, source: Reader, *, create_only: bool = True, sha256: str | None = None) -> bool:
        full = self._full(path)
        put = {"file": streams.put_local, "memory": self._put_memory, "s3": self._put_s3}[self._kind]
        with self._translated("write", path):
            return put(full, source, create_only=create_only, sha256=sha256)

    def open_read(self, path: str) -> AbstractContextManager[Reader]:
        return self._reading(path, self._full(path))

    def exists(self, path: str) -> bool:
        full = self._full(path)
        with self._translated("check", path):
            try:
                info: dict[str, Any] = self._fs.info(full)
            except FileNotFoundError:
                return False
        return info.get("type") == "file"

    def list(self, prefix: str = "") -> list[str]:
        _check_path(prefix, is_prefix=True)
        directory = prefix.rpartition("/")[0]  # list the deepest directory the prefix names
        with self._translated("list", prefix):
            found: list[str] = self._fs.find(f"{self._root}/{directory}" if directory else self._root or "/")
        paths = (self._relative(full) for full in found)
        return sorted(p for p in paths if p.startswith(prefix) and not _is_temp(p))

    def modified(self, prefix: str = "") -> dict[str, float]:
        _check_path(prefix, is_prefix=True)
        directory = prefix.rpartition("/")[0]
        with self._translated("list", prefix):
            found: dict[str, Any] = self._fs.find(
                f"{self._root}/{directory}" if directory else self._root or "/", detail=True
            )
        times = {self._relative(full): _modified_at(info) for full, info in found.items()}
        return {p: t for p, t in sorted(times.items()) if p.startswith(prefix) and not _is_temp(p)}

    def delete(self, path: str) -> None:
        full = self._full(path)
        with self._translated("delete", path), suppress(FileNotFoundError):
            self._fs.rm_file(full)

    def delete_prefix(self, prefix: str) -> int:
        paths = self.list(prefix)
        with self._translated("delete", prefix):
            if self._kind == "s3":
                if paths:  # batched: one DeleteObjects request per 1000 keys
                    self._fs.rm([self._full(p) for p in paths])
            else:
                for path in paths:
                    self.delete(path)
                if self._kind == "file":
                    self._prune_directories(prefix, paths)
        return len(paths)

    def location(self, path: str = "") -> str:
        _check_path(path, is_prefix=True)
        if self._kind == "file":
            return f"{self._root}/{path}" if path or not self._root else self._root
        root = f"{self._kind}://{self._root.lstrip('/')}"
        return f"{root}/{path}" if path else root

    # -- internals ----------------------------------------------------------------------------

    def _full(self, path: str) -> str:
        _check_path(path)
        return f"{self._root}/{path}"

    def _relative(self, full: str) -> str:
        # fsspec returns memory paths with a leading '/' and S3 paths without one
        return full.removeprefix(f"{self._root}/") if self._root else full.lstrip("/")

    def _prune_directories(self, prefix: str, removed: builtins.list[str]) -> None:
        """Remove the directories a delete_prefix emptied, deepest first, only inside ``prefix``
        so that a writer elsewhere never finds its parent directory gone."""
        directories = {p.rsplit("/", i)[0] for p in removed for i in range(1, p.count("/") + 1)}
        for directory in sorted(directories, key=lambda d: -d.count("/")):
            if f"{directory}/".startswith(prefix):
                # fails harmlessly when not empty (a concurrent writer's temp file) or gone
                with suppress(OSError):
                    os.rmdir(f"{self._root}/{directory}")

    def _put_memory(self, full: str, source: Reader, *, create_only: bool, sha256: str | None) -> bool:
        return streams.put_memory(self._fs, full, source, create_only=create_only, sha256=sha256)

    def _put_s3(self, full: str, source: Reader, *, create_only: bool, sha256: str | None) -> bool:
        return streams.put_s3(self._fs, full, source, create_only=create_only, sha256=sha256)

    @contextmanager
    def _reading(self, path: str, full: str) -> Iterator[Reader]:
        with self._translated("read", path, missing=ArtifactNotFound(self.location(path))):
            raw: Any = streams.S3Reader(self._fs, full) if self._kind == "s3" else self._fs.open(full, "rb")
        try:
            yield _TranslatedReader(raw, lambda: self._translated("read", path))
        finally:
            with suppress(Exception):
                raw.close()

    @contextmanager
    def _translated(self, action: str, path: str, *, missing: StoreError | None = None) -> Iterator[None]:
        """The one place third-party exceptions become ``StoreError``; a missing object or
        bucket raises ``missing`` when given."""
        try:
            yield
        except MeshError:
            raise
        except Exception as exc:  # fsspec, s3fs, botocore, aiohttp and OS errors alike
            if missing is not None and isinstance(exc, FileNotFoundError | IsADirectoryError):
                raise missing from exc
            log.debug("%s %s failed", action, self.location(path), exc_info=True)
            raise StoreError(f"cannot {action} {self.location(path)}: {_reason(exc)}") from exc


class _TranslatedReader:
    """A backend's stream whose errors become ``StoreError`` as they happen, mid-read included."""

    def __init__(self, raw: Any, translated: Callable[[], AbstractContextManager[None]]) -> None:
        self._raw = raw
        self._translated = translated

    def read(self, size: int = -1, /) -> bytes:
        with self._translated():  # a chunk at a time: read() must never mean the whole object
            data: bytes = self._raw.read(CHUNK_SIZE if size is None or size < 0 else size)
        return data


def _replace_file(full: str, data: bytes, *, durable: bool) -> None:
    """Write ``full`` atomically: a temp file in the same directory (synced when ``durable``),
    then a rename."""
    directory, _, name = full.rpartition("/")
    os.makedirs(directory, exist_ok=True)
    temp = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(temp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())  # data before rename, so a crash never leaves an empty file
        os.replace(temp, full)  # atomic on POSIX filesystems, NFS included
    except BaseException:
        with suppress(OSError):
            os.unlink(temp)
        raise


def _check_path(path: str, *, is_prefix: bool = False) -> None:
    """Reject absolute paths, '..' and empty components before any I/O."""
    body = path.removesuffix("/") if is_prefix else path
    if is_prefix and not body:
        return
    problem = ""
    if not body:
        problem = "empty"
    elif body.startswith("/"):
        problem = "absolute"
    elif any(part in ("", ".", "..") for part in body.split("/")):
        problem = "empty, '.' or '..' component"
    elif any(ord(c) < 0x20 for c in body) or "\\" in body:
        problem = "control character or backslash"
    if problem:
        raise StoreError(f"invalid store path {path!r}: {problem}; paths are relative, like 'a/b'")


def _is_temp(path: str) -> bool:
    return bool(_TEMP_NAME.match(path.rpartition("/")[2]))


def _reason(exc: BaseException) -> str:
    """One line, at most 300 characters, naming the exception type."""
    text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def _modified_at(info: dict[str, Any]) -> float:
    """When an object was last written, in unix seconds, as each backend says it: a file's
    ``mtime``, S3's ``LastModified``, memory's ``created``; 0.0 if none (old enough for anyone)."""
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if isinstance(value, int | float):
            return float(value)
        stamp = getattr(value, "timestamp", None)  # a datetime
        if callable(stamp):
            return float(stamp())
    return 0.0
