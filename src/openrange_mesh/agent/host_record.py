"""This host's record under its lease: ``HostRecord`` joins the mesh and keeps the record
current; what to do about a key already there (a crashed predecessor, a live twin).

The record says what peers need to know: capacity and whether it takes work (its weight in
queue ownership, ledger/owners.py). Every peer's control watch (and every dashboard's) receives
each write, so it is written when one of those changes, not as episodes run: at join, and when
it drains, falls sick or heals (``changed``), on the next pass, riding on a claim or commit txn
the agent makes anyway (``refresh``) or alone (``step``). The running count in the record is
as of its last write; ``hosts`` and the dashboard count claims and records instead
(ledger/catalog.py, dashboard/index.py).

A record is created under each lease the agent is granted (``register``); a rejoin after a lost
lease is pending until its txn lands (``is_registered``): an agent without its host key is
invisible to its peers, and when it dies no delete event tells anyone to requeue its claims.

Threads: the loop thread; ``changed`` may also come from a signal handler or another thread
(``drain``): it is one bool assignment. The lease the record was created under is written by
the loop alone.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from collections.abc import Callable

from .. import __version__
from ..config import Settings
from ..errors import ConfigError
from ..keys import Keys
from ..model import HostInfo
from ..registry import Compare, Get, Put, Registry
from .lease import LeaseKeeper

log = logging.getLogger(__name__)

_ADDRESS = socket.gethostname()  # where an operator finds this agent (no HTTP endpoint yet)


@functools.cache
def machine_id() -> str:
    """The boot id: a restarted agent on the same running machine sees the same value."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


class HostRecord:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        keys: Keys,
        lease: LeaseKeeper,
        *,
        running: Callable[[], int],
        takes_no_work: Callable[[], bool],
        reason: Callable[[], str | None],
        url: Callable[[], str],
    ) -> None:
        self.settings = settings
        self.host = settings.host_id
        self.registry = registry
        self.keys = keys
        self.lease = lease
        self._running = running  # episodes held
        self._takes_no_work = takes_no_work  # draining, asked to or sick (agent/health.py)
        self._reason = reason  # why it is sick
        self._url = url  # its dashboard's ("" without one)
        self._started_at = time.time()
        self._due = False  # peers must see a change: write the record on the next pass
        self._created_under = 0  # the lease our record was last created under (0: none yet)

    def retire_predecessor(self) -> None:
        """A host key with our id under another lease is either our crashed predecessor (same
        machine, dead pid), or this process's own key under a lease it gave up for lost (etcd
        renews every lease when it restarts, so a lease can outlive our estimate): revoke it so
        peers requeue its work now; or a live twin: wait up to ttl for it to expire, then refuse
        to start."""
        deadline = time.monotonic() + self.settings.ttl + 1
        while (kv := self.registry.get(self.keys.host(self.host))[0]) is not None:
            info = decode_host(kv.value)
            if (
                info is not None
                and info.machine == machine_id()
                and (info.pid == os.getpid() or not _pid_alive(info.pid))
            ):
                log.info("revoking lease %x of this host's previous incarnation (pid %d)", kv.lease, info.pid)
                self.registry.revoke(kv.lease)
                continue
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"host id {self.host!r} is already live in namespace {self.keys.namespace!r}"
                    f"{f' (pid {info.pid})' if info else ''}: pick another --host-id"
                )
            time.sleep(0.2)

    @property
    def is_registered(self) -> bool:
        """Whether our record is there under the lease we hold: not after a lost lease until
        the rejoin's record lands (``create``)."""
        return self._created_under != 0 and self._created_under == self.lease.lease

    def register(self) -> None:
        """A fresh lease, and the record under it (``create``)."""
        self.lease.start()
        self.create()

    def create(self) -> None:
        """The record under the lease we hold, created: a key already there under another lease
        is a twin. One already there under ours is ours: a txn of ours applied, and its answer
        was lost."""
        lease, key = self.lease.lease, self.keys.host(self.host)
        result = self.registry.txn(
            [Compare(key, "create", "==", 0)], [Put(key, self.info().to_bytes(), lease)], [Get(key)]
        )
        self._due = False
        if not result.succeeded and not any(kv.lease == lease for kv in result.responses[0]):
            self.lease.stop()
            raise ConfigError(f"host id {self.host!r} was taken while joining: pick another --host-id")
        self._created_under = lease

    def info(self) -> HostInfo:
        return HostInfo(
            id=self.host,
            capacity=self.settings.capacity,
            running=self._running(),
            labels=dict(self.settings.labels),
            version=__version__,
            started_at=self._started_at,
            pid=os.getpid(),
            machine=machine_id(),
            address=_ADDRESS,
            draining=self._takes_no_work(),
            reason=self._reason(),
            url=self._url() or None,
        )

    def changed(self) -> None:
        """Peers must see the record now (it drains, falls sick or heals): on the next pass."""
        self._due = True

    def refresh(self) -> list[Put]:
        """The record, if ``changed`` asked: an op to ride on a txn the agent makes anyway (or
        alone, ``step``)."""
        if not self._due:
            return []
        self._due = False
        return [Put(self.keys.host(self.host), self.info().to_bytes(), self.lease.lease)]

    def step(self) -> str | None:
        """An idle agent makes no claim or commit txn: refresh its host record alone."""
        ops = self.refresh() if self.lease.is_alive else []
        if ops:
            self.registry.txn([], ops)
        return None


def decode_host(data: bytes) -> HostInfo | None:
    """A host record, or None if it does not decode (tolerated: a newer or broken writer)."""
    try:
        return HostInfo.from_bytes(data)
    except Exception:
        return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
