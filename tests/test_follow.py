"""``Follower`` through a real etcd outage (a SIGSTOPped etcd): what it logs, and that it
delivers what happened meanwhile once etcd is back."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from openrange_mesh.registry import Put, Registry, open_registry
from openrange_mesh.registry.follow import Follower

from .etcdkit import EtcdServer
from .helpers import current_revision, wait_until

LOGGER = "openrange_mesh.registry.follow"


@pytest.fixture
def impatient(own_etcd: EtcdServer) -> Iterator[Registry]:
    """A registry that gives up quickly, as an agent's does with a short ttl."""
    registry = open_registry(own_etcd.url, retry_timeout=0.5)
    yield registry
    registry.close()


def test_outage_is_logged_once_then_one_line_per_poll_and_back_only_when_etcd_answers(
    own_etcd: EtcdServer, impatient: Registry, prefix: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Polls shorter than the registry's retry_timeout: a watch the follower has just opened
    again has not reported the outage yet, so they come back empty while etcd is still away.
    That is no sign that it is back (it was taken for one, and the next failure logged its
    traceback again, every few polls of an 8 s partition)."""
    writer = open_registry(own_etcd.url, retry_timeout=10.0)
    follower = Follower(impatient, prefix)
    follower.start(current_revision(writer))
    writer.txn([], [Put(prefix + b"before", b"1")])
    assert wait_until(lambda: follower.poll(0.3), 5, what="the first event")[0].kv.key == prefix + b"before"

    caplog.set_level(logging.INFO, logger=LOGGER)
    own_etcd.pause()
    try:
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            assert follower.poll(0.3) == []
    finally:
        own_etcd.resume()
    writer.txn([], [Put(prefix + b"after", b"2")])
    delivered = wait_until(lambda: follower.poll(0.3), 10, what="the event written after the outage")
    assert [e.kv.key for e in delivered] == [prefix + b"after"]
    follower.close()
    writer.close()

    lines = [(r.getMessage(), r.exc_info) for r in caplog.records if r.name == LOGGER]
    failing = [(m, exc) for m, exc in lines if "failing" in m]
    assert failing, lines
    backs = [i for i, (m, _) in enumerate(lines) if "is back" in m]
    assert len(backs) == 1 and backs[0] == len(lines) - 1, lines  # once, after every failure
    first, *later = failing
    assert " failing: etcd unavailable" in first[0] and not first[1], first  # an outage: one line, no traceback
    assert later and all("still failing" in m and not exc for m, exc in later), later
