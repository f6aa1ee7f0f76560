"""``Orphans``: puts back the episodes of hosts that died, as the control watch saw their keys go.

A dead host's claims are put back by its heir (ledger/owners.heir: one of the hosts live at the
revision that deleted its key, the same for every agent) and by the leader, whose compares fail
if the heir got there first: a departure costs two agents a read of its claims and a txn per
claim, not every peer (issue 15: 12 hosts killed among 48 had cost etcd 4.6 more requests per
episode of the run, and the requeues came 5 s late). If the heir died too before it could, the
leader does it; if the leader died too, the next one's first sweep (agent/leadership.py), which
also finds what nobody saw (every agent down when a lease expired, a watch re-listed past the
deletion).

The episodes go back where ``place`` puts them now, which may be the mailbox of a host that died
at the same time and whose key has not gone yet: a queued marker (the one a client writes with
a submission) tells idle agents to steal them rather than wait for the leader to move them.

Threads: the loop thread. Owns its marker's last time (ledger/queue.QueuedMarker) and whether
a marker is owed (a requeue landed, and no marker went since: a later requeue of the same step
that raised would have left none, and its retry finds its work done); the dead hosts wait in the
Inbox.
"""

from __future__ import annotations

from ..errors import Compacted, RegistryError
from ..keys import Keys
from ..ledger.ledger import Ledger
from ..ledger.queue import QueuedMarker
from ..ledger.records import claim_episode_ids
from ..registry import Registry
from .inbox import DeadHost, Inbox
from .leadership import Leadership
from .metrics import Metrics


class Orphans:
    def __init__(
        self,
        host: str,
        registry: Registry,
        keys: Keys,
        ledger: Ledger,
        inbox: Inbox,
        leadership: Leadership,
        metrics: Metrics,
    ) -> None:
        self.host = host
        self.registry = registry
        self.keys = keys
        self.ledger = ledger
        self.inbox = inbox
        self.leadership = leadership
        self.metrics = metrics
        self._marker = QueuedMarker(keys, host)
        self._marker_owed = False  # a requeue landed and no marker went since

    def step(self) -> str | None:
        requeued = 0
        while (dead := self.inbox.next_dead_host()) is not None:
            if dead.heir != self.host and not self.leadership.is_leader:
                continue  # its heir's, and the leader's
            try:
                requeued += self._requeue_claims_of(dead)
            except RegistryError:
                self.inbox.host_died(dead)  # idempotent: try again next pass, or nobody would
                raise
        marked = self._marker_owed and self._mark()
        if requeued:
            return f"requeued {requeued} episodes of dead hosts"
        return "queued marker for episodes requeued before" if marked else None

    def _mark(self) -> bool:
        """Write the queued marker owed (unless one went within MARKER_EVERY: later, then)."""
        if marker := self._marker.ops():
            self.registry.txn([], marker)
            self._marker_owed = False
        return not self._marker_owed

    def _requeue_claims_of(self, dead: DeadHost) -> int:
        """Put back the episodes of a dead host's claims: its lease took its host key and its
        claim keys in one revision, so they are read at the one before. Returns how many; each
        requeue is counted, and owes a marker, as it lands (a later one may raise)."""
        try:
            claims = self.registry.range(self.keys.host_claims(dead.host), revision=dead.revision - 1)
        except Compacted:
            self.leadership.sweep_soon()  # that revision is gone: the sweep finds them
            return 0
        requeued = 0
        for kv in claims.kvs:
            if kv.lease == dead.lease:
                claim_id = self.keys.name_of(kv.key, self.keys.host_claims(dead.host))
                reason = f"host {dead.host} lost its lease"
                ids = self.ledger.requeue(dead.host, claim_id, claim_episode_ids(kv), reason, kv.create_revision)
                if ids:
                    self.metrics.requeues.inc(len(ids))
                    self._marker_owed = True
                    requeued += len(ids)
        return requeued
