"""Whether anything was created in a directory since the last look, asked once per episode.

A worker looks in its artifacts directory after every episode (files.py). A ``scandir`` is
three system calls (open, getdents, close): ~6 us in a quiet process and ~14 us between two
CartPole episodes, 4-5% of a worker's time, for a directory that is almost always empty.
Linux's inotify answers with one ``poll`` of a descriptor that has nothing to read until
something is created in (or moved into) the directory, or its permissions change. What is created inside a subdirectory
needs the subdirectory first, which is itself a creation; the directory is emptied after each
episode that left anything. Where inotify is missing or its per-user limit is reached,
``DirWatch.open`` returns None and the caller scans every time.

Threads: the worker's only thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
import struct
import sys
from pathlib import Path

log = logging.getLogger(__name__)

_IN_ATTRIB, _IN_CREATE, _IN_MOVED_TO, _IN_MOVE_SELF, _IN_IGNORED = 0x4, 0x100, 0x80, 0x800, 0x8000
# an entry made or moved in; the directory moved away, or its permissions changed (an episode
# that closed them would leave the next one a directory it cannot write)
_WATCHED = _IN_ATTRIB | _IN_CREATE | _IN_MOVED_TO | _IN_MOVE_SELF
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then len bytes of name)
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC


class DirWatch:
    """``created()``: whether an entry appeared in the directory (or its attributes changed)
    since the last call. ``gone``:
    the directory was removed or moved away (the watch follows the inode, not the path), so
    nothing made at the path again would be seen: the caller opens a new watch."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.gone = False
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    @classmethod
    def open(cls, directory: Path) -> DirWatch | None:
        if not sys.platform.startswith("linux"):
            return None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        except (OSError, AttributeError):  # no libc to load, or one without inotify
            return None
        if fd < 0:  # EMFILE: the user's inotify instances are all taken
            log.debug("no inotify for %s: %s", directory, os.strerror(ctypes.get_errno()))
            return None
        if libc.inotify_add_watch(fd, os.fsencode(directory), _WATCHED) < 0:
            log.debug("cannot watch %s: %s", directory, os.strerror(ctypes.get_errno()))
            os.close(fd)
            return None
        return cls(fd)

    def created(self) -> bool:
        if not self._poll.poll(0):
            return False
        with contextlib.suppress(BlockingIOError):  # drain: the next look starts from nothing
            while data := os.read(self._fd, 65536):
                self.gone |= _ends_watch(data)
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _ends_watch(data: bytes) -> bool:
    """Whether events say the directory left its path: moved away, or removed (the kernel then
    ends the watch: IN_IGNORED)."""
    offset = 0
    while offset + _EVENT.size <= len(data):
        _, mask, _, length = _EVENT.unpack_from(data, offset)
        if mask & (_IN_MOVE_SELF | _IN_IGNORED):
            return True
        offset += _EVENT.size + length
    return False
