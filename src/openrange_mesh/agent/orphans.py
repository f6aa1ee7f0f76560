"""``Orphans``: puts back the episodes of hosts that died, as the control watch saw their keys go.

Every peer does this; the first requeue wins, the others' compares fail. What nobody saw (every
agent down when a lease expired, a watch re-listed past the deletion) the leader's sweep finds
(agent/leadership.py).

Threads: the loop thread; no state of its own (the dead hosts wait in the Inbox).
"""

from __future__ import annotations

from ..errors import Compacted, RegistryError
from ..keys import Keys
from ..ledger.ledger import Ledger
from ..ledger.records import claim_episode_ids
from ..registry import Registry
from .inbox import DeadHost, Inbox
from .leadership import Leadership
from .metrics import Metrics


class Orphans:
    def __init__(
        self, registry: Registry, keys: Keys, ledger: Ledger, inbox: Inbox, leadership: Leadership, metrics: Metrics
    ) -> None:
        self.registry = registry
        self.keys = keys
        self.ledger = ledger
        self.inbox = inbox
        self.leadership = leadership
        self.metrics = metrics

    def step(self) -> str | None:
        requeued: list[str] = []
        while (dead := self.inbox.next_dead_host()) is not None:
            try:
                requeued += self._requeue_claims_of(dead)
            except RegistryError:
                self.inbox.host_died(dead)  # idempotent: try again next pass, or nobody would
                raise
        self.metrics.requeues.inc(len(requeued))
        return f"requeued {len(requeued)} episodes of dead hosts" if requeued else None

    def _requeue_claims_of(self, dead: DeadHost) -> list[str]:
        """Put back the episodes of a dead host's claims: its lease took its host key and its
        claim keys in one revision, so they are read at the one before."""
        try:
            claims = self.registry.range(self.keys.host_claims(dead.host), revision=dead.revision - 1)
        except Compacted:
            self.leadership.sweep_soon()  # that revision is gone: the sweep finds them
            return []
        requeued: list[str] = []
        for kv in claims.kvs:
            if kv.lease == dead.lease:
                claim_id = self.keys.name_of(kv.key, self.keys.host_claims(dead.host))
                reason = f"host {dead.host} lost its lease"
                requeued += self.ledger.requeue(dead.host, claim_id, claim_episode_ids(kv), reason, kv.create_revision)
        return requeued
