"""Small test utilities: poll-until-deadline instead of sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from openrange_mesh.ledger.claims import Claim
from openrange_mesh.ledger.ledger import Ledger
from openrange_mesh.model import EpisodeRecord
from openrange_mesh.registry import Event, Registry, Watch

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> T:
    """Poll ``predicate`` until it returns a truthy value; return that value.
    Fails the test with ``what`` when ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate!r}")
        time.sleep(interval)


def collect(watch: Watch, count: int, timeout: float) -> list[Event]:
    """At least ``count`` events from ``watch``, or fail after ``timeout``."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while len(events) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"got {len(events)} of {count} events: {events}"
        events.extend(watch.next(remaining).events)
    return events


def current_revision(registry: Registry) -> int:
    """The registry's revision now (read off a get of a key nobody writes)."""
    return registry.get(b"/no-such-key")[1]


def take(ledger: Ledger, host: str, lease: int, ids: list[str]) -> tuple[Claim, list[EpisodeRecord]]:
    """Claim the queue entry that lists exactly ``ids``, as an agent would; it must be won."""
    (entry,) = [e for e in ledger.queue() if sorted(e.ids) == sorted(ids)]
    won = ledger.claim(host, lease, entry, ledger.read(list(entry.ids)))
    assert won is not None, f"the claim of {ids} was lost"
    return won
