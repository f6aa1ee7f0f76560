"""The loop's alarm clock: ``Waker``."""

from __future__ import annotations

import contextlib
import os


class Waker:
    """Wakes the agent's loop from watch threads and signal handlers: one end of a pipe, which
    the loop waits on together with its workers' pipes (pool.WorkerPool.wait). Never closed: a
    signal handler may still write after the loop is gone, and a closed descriptor's number
    could by then name another file. Any thread may ``set``; the loop ``clear``s."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def fileno(self) -> int:
        return self._read

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
            os.write(self._write, b"!")

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 4096):
                pass
