"""A per-host snapshot cache: a host downloads each digest at most once, however many threads and
processes ask for it at once, and keeps it until it is the least recently used over a size bound.

Every process on the host that opens the same directory shares it::

    data/<hex>            the snapshot: a file, or its extracted directory; read-only; it appears
                          complete (a rename) or not at all
    pins/<hex>            flock'ed shared by every user while in use, exclusive by whoever evicts
                          it; its mtime is the entry's last use, its content the entry's size
                          and the boot it was written in
    locks/<hex>.lock      a filelock.FileLock: its holder is the one download of <hex> on the host
    locks/evict.lock      one eviction pass at a time
    tmp/<hex>.<random>    a download in flight: a file, or a directory being extracted
    trash/<hex>.<random>  an evicted entry being deleted

``open(digest)``: pin (shared flock); if ``data/<hex>`` is there, use it; else take the download
lock, look again (another process may have filled it while this one waited), remove a killed
download's leftovers, download into ``tmp/`` (``cas.get_snapshot``: streamed, verified, a
directory extracted safely), make it read-only, rename it into ``data/``, then evict the
least recently used unpinned entries while the total is over ``max_bytes``. Unpin on exit.

Nothing is fsynced: a process killed mid-download loses no written page, so only a crash of the
machine can tear an entry, and that ends the boot. Each entry records the boot it was written
in (Linux's ``boot_id``), and a cache opened in a later boot drops the entries of earlier ones:
they are fetched again when used. An fsync of a 200 MB entry cost more than hashing it; a
reboot's re-fetch costs what the first fetch did. Without a ``boot_id``, entries are synced.

Why this holds: a downloader waits for the lock while pinned, so an evictor (which must get the
pin exclusively, without waiting) never removes an entry in use nor a lock file someone waits
on; whoever flocks a pin checks that its path still names the inode it locked (an evictor may
have unlinked it meanwhile) and retries if not. Locks are taken pin first, then download lock,
and an evictor only tries, so no two wait on each other. flock and fcntl locks die with their
process: a killed download holds nothing, and its leftovers go at the next start or the next
download of its digest. The bound is exceeded only by entries in use.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from filelock import FileLock

from ..errors import CacheFull, StoreError
from . import cas
from .base import Store
from .digest import hex_of

log = logging.getLogger(__name__)

_HEX = re.compile(r"[0-9a-f]{64}")
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _boot_id() -> str:
    """This boot's id (Linux), or "" where there is none."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


_BOOT = _boot_id()


class SnapshotCache:
    """Snapshots of ``store`` cached in ``cache_dir`` (created if missing; local disk: the locks
    are flocks), at most ``max_bytes`` of them but for those in use. Thread-safe; any number of
    processes may share one directory. Creating one removes what killed downloads left."""

    def __init__(self, store: Store, cache_dir: str | os.PathLike[str], max_bytes: int) -> None:
        self.store = store
        self.directory = Path(cache_dir).absolute()
        self.max_bytes = max_bytes
        self._data, self._pins, self._locks = self.directory / "data", self.directory / "pins", self.directory / "locks"
        self._tmp, self._trash = self.directory / "tmp", self.directory / "trash"
        with self._local_errors(""):
            for directory in (self._data, self._pins, self._locks, self._tmp, self._trash):
                directory.mkdir(parents=True, exist_ok=True)
            self._clean_leftovers()

    @contextmanager
    def open(self, digest: str) -> Iterator[Path]:
        """The local path of snapshot ``digest`` (a read-only file or directory), fetched if
        needed, pinned (never evicted) until the block ends. Raises ``SnapshotNotFound``,
        ``HashMismatch`` or ``UnsafeSnapshot`` (nothing cached), ``CacheFull``, ``StoreError``."""
        hex_digest = hex_of(digest)
        with self._local_errors(digest):
            pin = self._flock(self._pins / hex_digest, fcntl.LOCK_SH)
        assert pin is not None  # a blocking flock returns a descriptor or raises
        path = self._data / hex_digest
        try:
            with self._local_errors(digest):
                if not os.path.lexists(path):
                    self._fill(digest, pin)
                os.utime(pin)  # last use, for the LRU order
        except BaseException:
            os.close(pin)
            self._tidy(hex_digest)
            raise
        try:
            yield path
        finally:
            os.close(pin)  # and with it the shared flock

    def get_bytes(self, digest: str) -> bytes:
        """The bytes of a file snapshot (read through the cache: for small ones)."""
        with self.open(digest) as path:
            if path.is_dir():
                raise StoreError(f"snapshot {digest} is a directory, not a file")
            return path.read_bytes()

    # -- filling ------------------------------------------------------------------------------

    def _fill(self, digest: str, pin: int) -> None:
        hex_digest = hex_of(digest)
        final = self._data / hex_digest
        with FileLock(self._locks / f"{hex_digest}.lock", fallback_to_soft=False):
            if os.path.lexists(final):
                return  # another thread or process downloaded it while this one waited
            self._remove_leftovers(hex_digest)  # nobody else downloads it now: they are a dead one's
            temp = self._tmp / f"{hex_digest}.{uuid.uuid4().hex}"
            try:
                snapshot = cas.get_snapshot(self.store, digest, temp)
                size = _seal(temp)
                os.ftruncate(pin, 0)
                os.pwrite(pin, f"{size} {_BOOT}\n".encode(), 0)
                _rename_unless_there(temp, final)
            finally:
                cas.remove_tree(temp)
        log.info("cached snapshot %s (%s, %d bytes on disk)", digest, snapshot.kind, size)
        self._evict()

    @contextmanager
    def _local_errors(self, digest: str) -> Iterator[None]:
        """The one place local disk errors become ours: ENOSPC and EDQUOT are ``CacheFull``."""
        try:
            yield
        except OSError as exc:
            reason = f"{type(exc).__name__}: {exc.strerror or exc}"
            if exc.errno in _FULL:
                raise CacheFull(str(self.directory), digest, reason) from exc
            where = f" for {digest}" if digest else ""
            raise StoreError(f"snapshot cache {self.directory} failed{where}: {reason}") from exc

    # -- eviction -----------------------------------------------------------------------------

    def _evict(self) -> None:
        with FileLock(self._locks / "evict.lock", fallback_to_soft=False):
            entries = sorted(self._entries())
            total = sum(size for _, size, _ in entries)
            for _, size, hex_digest in entries:
                if total <= self.max_bytes:
                    return
                if self._remove_entry(hex_digest):
                    total -= size
                    log.info("evicted snapshot sha256:%s (%d bytes) from %s", hex_digest, size, self.directory)
            if total > self.max_bytes:
                log.warning(
                    "snapshot cache %s holds %d bytes, over its %d: the rest is in use",
                    self.directory,
                    total,
                    self.max_bytes,
                )

    def _entries(self) -> Iterator[tuple[int, int, str]]:
        """``(last use in ns, size, hex)`` of every cached entry."""
        for name in os.listdir(self._data):
            if _HEX.fullmatch(name):
                last_used, size, _ = self._pinned(name)
                yield last_used, size if size is not None else _disk_size(self._data / name), name

    def _pinned(self, hex_digest: str) -> tuple[int, int | None, str]:
        """What an entry's pin file says: ``(last use in ns, size, boot)``; 0, None, "" for what
        it lacks (removed by hand, or written by an older version)."""
        try:
            with open(self._pins / hex_digest, "rb") as f:
                last_used, recorded = os.fstat(f.fileno()).st_mtime_ns, f.read(128).decode(errors="replace").split()
        except FileNotFoundError:
            return 0, None, ""
        size = int(recorded[0]) if recorded and recorded[0].isdigit() else None
        return last_used, size, recorded[1] if len(recorded) > 1 else ""

    def _remove_entry(self, hex_digest: str) -> bool:
        """Evict one entry unless it is pinned; whether it was evicted."""
        pin = self._flock(self._pins / hex_digest, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if pin is None:
            return False
        trash = self._trash / f"{hex_digest}.{uuid.uuid4().hex}"
        try:
            with suppress(FileNotFoundError):
                os.rename(self._data / hex_digest, trash)  # gone for readers at once
            self._forget(hex_digest)
        finally:
            os.close(pin)
        cas.remove_tree(trash)
        return True

    def _forget(self, hex_digest: str) -> None:
        """Remove the lock and pin files of an absent entry. Only under its exclusive pin: then
        nobody uses it, downloads it or waits for its download lock."""
        (self._locks / f"{hex_digest}.lock").unlink(missing_ok=True)
        (self._pins / hex_digest).unlink(missing_ok=True)

    # -- leftovers ----------------------------------------------------------------------------

    def _clean_leftovers(self) -> None:
        for name in os.listdir(self._trash):  # an evictor killed while deleting
            cas.remove_tree(self._trash / name)
        if _BOOT:  # entries of an earlier boot were not synced: a crash may have torn them
            stale = [n for n in os.listdir(self._data) if _HEX.fullmatch(n) and self._pinned(n)[2] != _BOOT]
            dropped = sum(self._remove_entry(n) for n in stale)
            if dropped:
                log.info("dropped %d snapshot(s) cached before this boot from %s", dropped, self.directory)
        names = os.listdir(self._tmp) + os.listdir(self._pins) + os.listdir(self._locks)
        for hex_digest in {n.partition(".")[0] for n in names if _HEX.fullmatch(n.partition(".")[0])}:
            removed = self._tidy(hex_digest)
            if removed:
                log.info("removed %d leftover(s) of a killed download of sha256:%s", removed, hex_digest)

    def _tidy(self, hex_digest: str) -> int:
        """Unless the entry is in use or downloading (its downloader removes what is left): remove
        its download leftovers and, if it is absent, its lock and pin files. How many leftovers."""
        pin = self._flock(self._pins / hex_digest, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if pin is None:
            return 0
        try:
            removed = self._remove_leftovers(hex_digest)
            if not os.path.lexists(self._data / hex_digest):
                self._forget(hex_digest)
        finally:
            os.close(pin)
        return removed

    def _remove_leftovers(self, hex_digest: str) -> int:
        leftovers = [self._tmp / n for n in os.listdir(self._tmp) if n.startswith(f"{hex_digest}.")]
        for path in leftovers:
            cas.remove_tree(path)
        return len(leftovers)

    @staticmethod
    def _flock(path: Path, operation: int) -> int | None:
        """A descriptor of ``path`` holding the flock ``operation``; None if it has LOCK_NB and
        another holds a conflicting lock."""
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, operation)
            except BlockingIOError:
                os.close(fd)
                return None
            except BaseException:
                os.close(fd)
                raise
            with suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return fd
            os.close(fd)  # an evictor unlinked it between our open and our lock: lock the new one


def _rename_unless_there(temp: Path, final: Path) -> None:
    """Move ``temp`` into place. A directory already there (only if a lock was lost: a cache
    directory on a filesystem whose flocks do not hold) has the same verified content: keep it."""
    try:
        os.rename(temp, final)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not final.is_dir():
            raise


def _seal(path: Path) -> int:
    """Make a downloaded entry read-only (and durable, where no boot id says what a crash
    may have torn); its size in bytes."""
    if not path.is_dir():
        path.chmod(0o444)
        if not _BOOT:
            os.sync()
        return path.stat().st_size
    size = 0
    for directory, _, files in os.walk(path):
        for name in files:
            file = os.path.join(directory, name)
            status = os.lstat(file)
            if not os.path.islink(file):
                os.chmod(file, 0o555 if status.st_mode & 0o100 else 0o444)
            size += status.st_size
        os.chmod(directory, 0o555)
    if not _BOOT:
        os.sync()  # one flush for the whole tree: an fsync per file costs a journal commit each
    return size


def _disk_size(path: Path) -> int:
    """The size of an entry whose pin file lost its record (it was removed by hand)."""
    if not path.is_dir():
        return os.lstat(path).st_size
    return sum(os.lstat(os.path.join(d, n)).st_size for d, _, files in os.walk(path) for n in files)
