"""The leader key's value: who leads, where its dashboard is, and its term (design/README.md, "The dashboard")."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CorruptRecord
from .wire import pack, unpack


@dataclass(frozen=True)
class Seat:
    host: str
    url: str | None  # the leader's dashboard, when it serves one
    term: int = 0  # the leader key's create_revision: one per election

    def to_bytes(self) -> bytes:
        return pack({"host": self.host, **({"url": self.url} if self.url else {})})


def read_seat(value: bytes, term: int = 0) -> Seat | None:
    """The seat a leader key's value names; None when it names nobody readable (an unknown
    leader: the seat is then taken over by compare-and-swap, agent/leadership.py)."""
    try:
        data = unpack(value)
    except CorruptRecord:
        return None
    host = data.get("host") if isinstance(data, dict) else None
    url = data.get("url") if isinstance(data, dict) else None
    if not isinstance(host, str) or not host:
        return None
    return Seat(host, url if isinstance(url, str) and url else None, term)
