"""Directory snapshots as archives: a deterministic tar in one zstandard frame, and its safe
extraction.

Packing is deterministic so that the same tree always gives the same digest: members in byte
order of their names, a directory before its contents; mtime 0, uid/gid 0, no owner names; modes
0o755 for directories and files with any execute bit, 0o644 for other files; PAX format; zstd at
``ZSTD_LEVEL``, single-threaded (threaded zstd frames differ from single-threaded ones).
Changing any of these changes every directory digest (old blobs stay readable). Only regular
files, directories and relative symbolic links that resolve inside the tree are packed; anything
else is refused rather than silently dropped, as a snapshot that lost a file would run anyway.

Extraction trusts nothing it reads (a blob's digest proves who wrote it, not that they meant
well): names must be relative with no '.', '..' or empty component, appear once, and not lie
under a link or a file; links must be relative and stay inside the root, and after the last
member every link in the tree is resolved again (a chain of links can climb out where each one
alone does not); devices, fifos and hard links are refused. tarfile's ``data`` filter runs as
well, where this Python has it.
"""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, cast

import zstandard

from ..errors import StoreError, UnsafeSnapshot
from .digest import Reader, Writer

ZSTD_LEVEL = 3
DIR_MODE = 0o755
EXEC_MODE = 0o755
FILE_MODE = 0o644
# zstandard types its streams as IO[bytes] but only calls write() and read() on them.
_FILTER = getattr(tarfile, "data_filter", None)  # Python >= 3.11.4
# An extended header (PAX, GNU long name) is read whole into memory by tarfile: a blob of a
# few KB may declare gigabytes. Ours hold a name and a few fields.
MAX_EXTENDED_HEADER = 1 << 20
_EXTENDED = frozenset(
    {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
)


class _Bounded(tarfile.TarInfo):
    """A member header that refuses an extended header over ``MAX_EXTENDED_HEADER`` before
    tarfile reads it (``_proc_member`` is where tarfile reads one, in every version we run)."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED and self.size > MAX_EXTENDED_HEADER:
            raise tarfile.HeaderError(f"an extended header of {self.size} bytes (at most {MAX_EXTENDED_HEADER})")
        member: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        return member


def pack(root: Path, sink: Writer) -> None:
    """Write the tree under ``root`` to ``sink`` as described above; ``UnsafeSnapshot`` names the
    first member that cannot be packed."""
    real_root = os.path.realpath(root)
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=0)
    with (
        compressor.stream_writer(cast(IO[bytes], sink), closefd=False) as compressed,
        tarfile.open(fileobj=compressed, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, status in _walk(str(root)):
            info = _member(str(root), real_root, name, status)
            if info.isreg():
                with open(os.path.join(root, name), "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)


def unpack(source: Reader, dest: Path, where: str) -> None:
    """Extract the archive ``source`` streams into the empty directory ``dest``. ``where`` names
    the snapshot in errors: ``UnsafeSnapshot`` for a member refused, ``StoreError`` for an
    archive that does not decode. Leaves whatever it extracted so far on error."""
    seen: dict[str, str] = {}
    member_name = ""
    try:
        with (
            zstandard.ZstdDecompressor().stream_reader(cast(IO[bytes], source), closefd=False) as plain,
            tarfile.open(fileobj=plain, mode="r|", tarinfo=_Bounded) as tar,
        ):
            for member in tar:
                member_name = member.name
                problem = _member_problem(member, seen)
                if problem:
                    raise UnsafeSnapshot(where, member.name, problem)
                if _FILTER is None:
                    tar.extract(member, dest)
                else:
                    tar.extract(member, dest, filter=_FILTER)
    except tarfile.FilterError as exc:
        # its message holds our local path; the class says what it found
        raise UnsafeSnapshot(where, member_name, f"refused by tarfile's data filter ({type(exc).__name__})") from exc
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
        raise StoreError(f"snapshot {where} is not a readable archive: {exc}") from exc
    _check_links(dest, where)


def _walk(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """``(relative name, lstat)`` of everything under ``root``: a directory, then its contents,
    siblings in byte order of their names (the same order on every host, whatever the locale)."""
    stack: list[Iterator[tuple[str, os.stat_result]]] = [_children(root, "")]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        yield entry
        if stat.S_ISDIR(entry[1].st_mode):
            stack.append(_children(root, entry[0]))


def _children(root: str, relative: str) -> Iterator[tuple[str, os.stat_result]]:
    with os.scandir(os.path.join(root, relative) if relative else root) as entries:
        found = sorted(entries, key=lambda e: os.fsencode(e.name))
    for entry in found:
        name = f"{relative}/{entry.name}" if relative else entry.name
        yield name, entry.stat(follow_symlinks=False)


def _member(root: str, real_root: str, name: str, status: os.stat_result) -> tarfile.TarInfo:
    """The TarInfo of one member, every field fixed but name, type, size and execute bit."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafeSnapshot(root, name, "has a name that is not UTF-8") from None
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    mode = status.st_mode
    if stat.S_ISDIR(mode):
        info.type, info.mode = tarfile.DIRTYPE, DIR_MODE
    elif stat.S_ISREG(mode):
        info.type, info.size = tarfile.REGTYPE, status.st_size
        info.mode = EXEC_MODE if mode & 0o111 else FILE_MODE
    elif stat.S_ISLNK(mode):
        target = os.readlink(os.path.join(root, name))
        problem = _link_problem(name, target)
        real = os.path.realpath(os.path.join(root, name))
        if problem is None and not _is_inside(real, real_root):
            problem = "links outside the tree through another link"
        if problem:
            raise UnsafeSnapshot(root, name, problem)
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
    else:
        raise UnsafeSnapshot(root, name, "is a device, fifo or socket: only files, directories and links are kept")
    return info


def _member_problem(member: tarfile.TarInfo, seen: dict[str, str]) -> str | None:
    """Why ``member`` must not be extracted, given the members before it (``seen``: name to
    'dir', 'file' or 'link'), or None."""
    name = member.name.removesuffix("/") if member.isdir() else member.name
    if name.startswith("/"):
        return "is an absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "climbs out of the root with '..'"
    if any(part in ("", ".") for part in parts):
        return "has an empty or '.' component"
    if not (member.isreg() or member.isdir() or member.issym()):
        return "is a device, fifo or hard link: only files, directories and links are kept"
    if name in seen:
        return "appears twice"
    for depth in range(1, len(parts)):
        above = seen.get("/".join(parts[:depth]))
        if above is not None and above != "dir":
            return f"lies under a {above}, not a directory"
    if member.issym() and (problem := _link_problem(name, member.linkname)):
        return problem
    seen[name] = "dir" if member.isdir() else "link" if member.issym() else "file"
    for depth in range(1, len(parts)):  # tarfile makes a member's missing parents: they are taken
        seen.setdefault("/".join(parts[:depth]), "dir")
    return None


def _link_problem(name: str, target: str) -> str | None:
    if not target or target.startswith("/"):
        return "links to an absolute path"
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if resolved == ".." or resolved.startswith("../"):
        return "links outside the tree"
    return None


def _check_links(dest: Path, where: str) -> None:
    """Every link, resolved now that the whole tree exists, stays inside ``dest``."""
    real_root = os.path.realpath(dest)
    for directory, subdirectories, files in os.walk(dest):
        for name in subdirectories + files:
            path = os.path.join(directory, name)
            if os.path.islink(path) and not _is_inside(os.path.realpath(path), real_root):
                raise UnsafeSnapshot(where, os.path.relpath(path, dest), "links outside the root through another link")


def _is_inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")
