"""Joining the mesh: the host key under our lease, and what to do about a key already there."""

from __future__ import annotations

import functools
import logging
import os
import socket
import time

from .. import __version__
from ..errors import ConfigError
from ..model import HostInfo
from ..registry import Compare, Put
from .state import AgentState

log = logging.getLogger(__name__)

_ADDRESS = socket.gethostname()  # where an operator finds this agent (no HTTP endpoint yet)
# The host record's running count is refreshed at most this often. Rewriting it in every claim
# and commit txn cost a key write and an event on every agent's control watch per episode.
HOST_REFRESH = 1.0


@functools.cache
def machine_id() -> str:
    """The boot id: a restarted agent on the same running machine sees the same value."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


class Joining(AgentState):
    def _retire_predecessor(self) -> None:
        """A host key with our id under another lease is either our crashed predecessor (same
        machine, dead pid), or this process's own key under a lease it gave up for lost (etcd
        renews every lease when it restarts, so a lease can outlive our estimate): revoke it so
        peers requeue its work now; or a live twin: wait up to ttl for it to expire, then refuse
        to start."""
        deadline = time.monotonic() + self.settings.ttl + 1
        while (kv := self.registry.get(self.keys.host(self.host))[0]) is not None:
            info = _decode_host(kv.value)
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

    def _register(self) -> None:
        lease = self.lease.start()
        key = self.keys.host(self.host)
        result = self.registry.txn([Compare(key, "create", "==", 0)], [Put(key, self._host_info().to_bytes(), lease)])
        self._host_written = (len(self._owner_of), time.monotonic())
        if not result.succeeded:
            self.lease.stop()
            raise ConfigError(f"host id {self.host!r} was taken while joining: pick another --host-id")

    def _host_info(self) -> HostInfo:
        return HostInfo(
            id=self.host,
            capacity=self.settings.capacity,
            running=len(self._owner_of),
            labels=dict(self.settings.labels),
            version=__version__,
            started_at=self._started_at,
            pid=os.getpid(),
            machine=machine_id(),
            address=_ADDRESS,
            draining=self._takes_no_work,
            reason=self.health.reason,
            url=self.dashboard_url or None,
        )

    def _host_refresh(self) -> list[Put]:
        """The host record, if its running count changed and the last write is HOST_REFRESH
        old: an op to ride on a txn the agent makes anyway (or alone, ``_step_host``)."""
        running, written_at = self._host_written
        now = time.monotonic()
        if running == len(self._owner_of) or now - written_at < HOST_REFRESH:
            return []
        self._host_written = (len(self._owner_of), now)
        return [Put(self.keys.host(self.host), self._host_info().to_bytes(), self.lease.lease)]

    def _step_host(self) -> str | None:
        """An idle agent makes no claim or commit txn: refresh its host record alone."""
        ops = self._host_refresh() if self.lease.is_alive else []
        if ops:
            self.registry.txn([], ops)
        return None


def _decode_host(data: bytes) -> HostInfo | None:
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
