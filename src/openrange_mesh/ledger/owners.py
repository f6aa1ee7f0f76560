"""Which live host's mailbox an agent or the leader writes a queue entry to: weighted
rendezvous hashing over the hosts' capacities (ledger/placement.py; a client deals its runs
instead). Any writer computes the same owner from the same weights, with no state. Each host's
score for an entry is ``weight / -ln(u)``, ``u`` a uniform hash of (host, entry) in (0, 1);
the highest score owns it. A host owns a share of the entries proportional to its weight (its
capacity; 0 while it drains), and the owner in a set of hosts stays the owner in every subset
that contains it: the entries the leader moves out of a departed host's mailbox land where
they would have gone had it never been there, and no other entry moves.

A dead host's heir (the one live host that puts its claims back, agent/orphans.py) is found on
a hash ring instead (``Ring``): every agent names one for every host that dies, and rendezvous
costs a pass over the live hosts each time (~0.6 us a host), so a wave of D deaths among N hosts
cost each survivor D x N of them; on a ring kept sorted it is a bisection.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
from collections.abc import Iterable, Mapping

_MASK = (1 << 64) - 1


def owner(name: str, weights: Mapping[str, float]) -> str | None:
    """The host of ``weights`` (host -> weight) that owns entry ``name``; None if no host has a
    weight above 0."""
    point = _hash(name)
    best: tuple[float, str] | None = None
    for host, weight in weights.items():
        if weight <= 0:
            continue
        unit = (_mix(point ^ _host_hash(host)) + 0.5) / 2.0**64  # in (0, 1)
        candidate = (weight / -math.log(unit), host)
        if best is None or candidate > best:
            best = candidate
    return None if best is None else best[1]


def heir(dead: str, live: Iterable[str]) -> str | None:
    """The host of ``live`` that puts back the claims of host ``dead`` (``Ring.heir``)."""
    return Ring(live).heir(dead)


class Ring:
    """Hosts at points of a hash ring (their names' hashes), kept sorted. Not thread-safe: its
    holder's lock guards it (agent/peers.py)."""

    def __init__(self, hosts: Iterable[str] = ()) -> None:
        self._points = sorted({(_host_hash(host), host) for host in hosts})

    def add(self, host: str) -> None:
        point = (_host_hash(host), host)
        at = bisect.bisect_left(self._points, point)
        if at == len(self._points) or self._points[at] != point:
            self._points.insert(at, point)

    def remove(self, host: str) -> None:
        point = (_host_hash(host), host)
        at = bisect.bisect_left(self._points, point)
        if at < len(self._points) and self._points[at] == point:
            del self._points[at]

    def heir(self, dead: str) -> str | None:
        """The host that puts back the claims of host ``dead`` (agent/orphans.py): the first
        after ``dead``'s point, itself left out. The same for every agent that knows the same
        live hosts (those at the revision that deleted ``dead``'s key), so a departure costs
        one agent its share instead of every peer a read and a losing txn per claim; and the
        dead of one wave go to many heirs, as their points fall apart. None if none is live."""
        points = self._points
        if not points:
            return None
        # past its own point if it is still on the ring: the host found is another, unless
        # it was the only one
        host = points[bisect.bisect_right(points, (_host_hash(dead), dead)) % len(points)][1]
        return None if host == dead else host


@functools.lru_cache(maxsize=4096)
def _host_hash(host: str) -> int:
    return _hash(host)


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _mix(value: int) -> int:
    """splitmix64's finalizer: every bit of the input moves every bit of the output."""
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
    return value ^ (value >> 31)
