"""What an agent publishes under its lease-bound host key: ``HostInfo``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import CorruptRecord
from .wire import NUM, OPT_STR, SCHEMA, Fields, pack, unpack_map


@dataclass(frozen=True, slots=True)
class HostInfo:
    """What an agent publishes under its lease-bound host key."""

    id: str
    capacity: int
    running: int = 0  # as of the record's last write, which a running count alone does not cause
    address: str | None = None  # the machine it runs on (hostname)
    labels: Mapping[str, str] = field(default_factory=dict)
    version: str = ""
    started_at: float = 0.0
    pid: int = 0
    machine: str = ""  # boot id: tells a crashed predecessor on this machine from a live twin
    draining: bool = False  # takes no new work: its peers take the queue entries it owned
    reason: str | None = None  # why it drains when it was not asked to (agent/health.py: a broken store)
    url: str | None = None  # its HTTP server (design/dashboard.md): where an open dashboard tab looks for the leader

    @property
    def weight(self) -> int:
        """Its share of the queue (ledger/owners.py): its capacity, none while it drains."""
        return 0 if self.draining else max(self.capacity, 0)

    @property
    def full(self) -> bool:
        """Running as many episodes as it has workers (as of its last record: see ``running``)."""
        return self.running >= self.capacity

    def to_bytes(self) -> bytes:
        data = {name: getattr(self, name) for name in _HOST_FIELDS}
        data["v"] = SCHEMA
        return pack(data)

    @classmethod
    def from_bytes(cls, data: bytes, key: str = "?") -> HostInfo:
        try:
            return cls(**_HOST_READ.of(unpack_map(data, key)))
        except (TypeError, ValueError, AttributeError) as exc:
            raise CorruptRecord(key, str(exc)) from exc


_HOST_FIELDS = tuple(HostInfo.__dataclass_fields__)
_HOST_NAMES = frozenset(_HOST_FIELDS)

_HOST_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "capacity": (int,),
    "running": (int,),
    "address": OPT_STR,
    "labels": (dict,),
    "version": (str,),
    "started_at": NUM,
    "pid": (int,),
    "machine": (str,),
    "draining": (bool,),
    "reason": OPT_STR,
    "url": OPT_STR,
}
_HOST_READ = Fields(_HOST_NAMES, _HOST_TYPES)
