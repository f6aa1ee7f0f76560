"""How our child processes end with us: on Linux, a child asks the kernel for SIGKILL when its
parent dies, even by SIGKILL (the agent's HTTP child, a local mesh's etcd and agents)."""

from __future__ import annotations

import contextlib
import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn (runs in the child): SIGKILL when our parent dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
