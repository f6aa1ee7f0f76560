"""How the agent's parts are put together: ``assemble`` gives each part what it uses and
nothing more (no part sees the agent, nor a part it does not call). ``Agent`` runs what it
returns; tests assemble the same parts without a loop or threads (tests/agentkit.py).

Who owns what, on which thread, under which lock: design/agent-parts.md, and each part's
docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import Settings
from ..dashboard.process import Serving
from ..keys import Keys
from ..ledger.catalog import Catalog
from ..ledger.ledger import Ledger
from ..ledger.placement import Placement
from ..registry import Registry
from ..worker.pool import Pool
from .claimer import Claimer
from .committer import Committer
from .health import Health
from .holdings import Holdings
from .host_record import HostRecord
from .inbox import Inbox
from .leadership import Leadership
from .lease import LeaseKeeper
from .metrics import Metrics
from .mover import Mover
from .orphans import Orphans
from .owned import OwnedQueue
from .peers import Peers
from .selfcheck import SelfCheck
from .stopper import Stopper
from .watcher import Watcher


@dataclass(frozen=True)
class Parts:
    """The parts of one agent (references only: each part's state is its own)."""

    holdings: Holdings
    inbox: Inbox
    peers: Peers
    owned: OwnedQueue
    host_record: HostRecord
    leadership: Leadership
    claimer: Claimer
    committer: Committer
    orphans: Orphans
    stopper: Stopper
    selfcheck: SelfCheck
    mover: Mover
    watcher: Watcher


def assemble(
    settings: Settings,
    registry: Registry,
    *,
    lease: LeaseKeeper,
    pool: Pool,
    health: Health,
    metrics: Metrics,
    draining: Callable[[], bool],
    wake: Callable[[], None],
    url: Callable[[], str],
    serving: Serving | None,
) -> Parts:
    """The parts of the agent ``settings`` describe. ``draining``: whether it was asked to drain;
    ``wake``: run the loop now; ``url``: its dashboard's ("" without one); ``serving``: the
    dashboard's cell that says whether it may serve (None without one)."""
    host, keys = settings.host_id, Keys(settings.namespace)

    def takes_no_work() -> bool:  # draining, asked to or sick (agent/health.py)
        return draining() or health.is_sick

    placement = Placement(host, own_weight=lambda: 0 if takes_no_work() else settings.capacity)
    ledger, catalog = Ledger(registry, keys, place=placement), Catalog(registry, keys)
    holdings, inbox, peers = Holdings(), Inbox(), Peers(host)
    owned = OwnedQueue(host, keys)
    host_record = HostRecord(
        settings,
        registry,
        keys,
        lease,
        running=lambda: holdings.running,
        takes_no_work=takes_no_work,
        reason=lambda: health.reason,
        url=url,
    )
    leadership = Leadership(
        host,
        registry,
        keys,
        lease,
        ledger,
        metrics,
        ttl=settings.ttl,
        retention=settings.retention,
        draining=draining,
        url=url,
        serving=serving,
    )
    claimer = Claimer(
        host,
        registry,
        keys,
        ledger,
        lease,
        pool,
        owned=owned,
        peers=peers,
        holdings=holdings,
        host_record=host_record,
        metrics=metrics,
        takes_no_work=takes_no_work,
        wake=wake,
        inbox=inbox,
    )
    mover = Mover(registry, keys, catalog, ledger, placement, leadership, wake=wake, on_moved=metrics.moves.inc)
    committer = Committer(
        claimer, holdings, pool, ledger, metrics, host=host, registry=registry, keys=keys, draining=draining
    )
    return Parts(  # in the order Parts lists them (mypy tells them apart)
        holdings,
        inbox,
        peers,
        owned,
        host_record,
        leadership,
        claimer,
        committer,
        Orphans(host, registry, keys, ledger, inbox, leadership, metrics),
        Stopper(pool, holdings, inbox),
        SelfCheck(settings.store, health, pool, host_record, metrics, wake),
        mover,
        Watcher(
            registry,
            keys,
            catalog,
            owned=owned,
            placement=placement,
            peers=peers,
            inbox=inbox,
            leadership=leadership,
            mover=mover,
            wake=wake,
        ),
    )
