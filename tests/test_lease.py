"""LeaseKeeper against a real etcd: the lease is lost only when etcd says so."""

from __future__ import annotations

import time

import pytest

from openrange_mesh.agent.lease import LeaseKeeper
from openrange_mesh.errors import RegistryError
from openrange_mesh.registry import open_registry

from .etcdkit import EtcdServer
from .helpers import wait_until

TTL = 2


def test_an_etcd_restart_longer_than_the_estimate_loses_no_lease(own_etcd: EtcdServer) -> None:
    """etcd renews every lease when it restarts: past the local estimate the keeper must ask
    etcd, not drop the lease (issue 11, defect 5: finished results were thrown away)."""
    registry = open_registry(own_etcd.url, retry_timeout=0.5)
    lost: list[int] = []
    keeper = LeaseKeeper(registry, TTL, interval=0.25, on_lost=lost.append)
    lease = keeper.start()
    try:
        own_etcd.kill()
        wait_until(lambda: not keeper.is_alive, TTL + 2, what="the local estimate to lapse")
        time.sleep(0.5)  # the keeper keeps failing past the estimate
        assert keeper.lease == lease and not lost
        with pytest.raises(RegistryError):
            keeper.confirm()  # etcd cannot say: neither alive nor lost
        own_etcd.restart()
        wait_until(keeper.refresh, 15, what="etcd to confirm the lease")
        assert keeper.lease == lease and keeper.is_alive and not lost
        assert registry.time_to_live(lease) is not None
    finally:
        keeper.stop()
        registry.close()


def test_a_lease_etcd_says_is_gone_is_lost_once(etcd: EtcdServer) -> None:
    registry = open_registry(etcd.url, retry_timeout=0.5)
    lost: list[int] = []
    keeper = LeaseKeeper(registry, TTL, interval=0.25, on_lost=lost.append)
    lease = keeper.start()
    try:
        registry.revoke(lease)  # by hand, as an operator might
        wait_until(lambda: lost, 5, what="the keeper to hear the lease is gone")
        assert lost == [lease] and keeper.lease == 0 and not keeper.is_alive
        assert keeper.confirm() is False and lost == [lease]
        assert keeper.ensure() != lease  # a fresh one
    finally:
        keeper.stop()
        registry.close()
