"""Every etcd key path, each built by a one-line method. No key is formatted anywhere else.

All keys live under ``/openrange/<namespace>/`` so several meshes (tenants, experiments) can
share one etcd. Keys are UTF-8 bytes (etcd3gw would encode str as latin-1). Agents watch their
own mailbox ``queue/<host>/`` (without previous values: a queue entry is a whole record; the
leader watches all of ``queue/``) and ``ctl/`` (cancels, hosts, leader; with previous values,
for the lease of a deleted host key). Records change three
times per episode and agents never need those events, so they live outside both; so do claims,
two events per episode for every agent: a dead host's claims are read when its host key goes
(agent/agent.py, ``_step_orphans``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from .errors import ConfigError

_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def check_name(kind: str, value: str) -> str:
    """Namespaces and host ids become path segments: keep them to one safe segment."""
    if not _NAMESPACE.match(value):
        raise ConfigError(f"bad {kind} {value!r}: use 1-63 letters, digits, '.', '_' or '-', starting alphanumeric")
    return value


@dataclass(frozen=True)
class Keys:
    namespace: str = "default"

    def __post_init__(self) -> None:
        check_name("namespace", self.namespace)

    @cached_property
    def root(self) -> bytes:
        return f"/openrange/{self.namespace}/".encode()

    def episodes(self) -> bytes:
        return self.root + b"episodes/"

    def episode(self, episode_id: str) -> bytes:
        return self._episodes + episode_id.encode()

    @cached_property
    def _episodes(self) -> bytes:  # the hot path builds two of these per episode
        return self.episodes()

    def control(self) -> bytes:
        return self.root + b"ctl/"

    def queue(self) -> bytes:
        return self.root + b"queue/"

    def mailbox(self, owner: str) -> bytes:  # the entries one host owns (ledger/placement.py)
        return self.queue() + owner.encode() + b"/"

    def queued(self, path: str) -> bytes:  # path: "<owner>/<entry name>" (QueueEntry.path)
        return self.queue() + path.encode()

    def claims(self) -> bytes:
        return self.root + b"claims/"

    def host_claims(self, host: str) -> bytes:
        return self.claims() + host.encode() + b"/"

    def claim(self, host: str, claim_id: str) -> bytes:
        return self.host_claims(host) + claim_id.encode()

    def cancels(self) -> bytes:
        return self.control() + b"cancel/"

    def cancel(self, episode_id: str) -> bytes:
        return self.cancels() + episode_id.encode()

    def hosts(self) -> bytes:
        return self.control() + b"hosts/"

    def host(self, host: str) -> bytes:
        return self.hosts() + host.encode()

    def leader(self) -> bytes:
        return self.control() + b"leader"

    def queued_marker(self) -> bytes:  # a client queued work (agent/peers.py: a sign for thieves)
        return self.control() + b"queued"

    def snapshots(self) -> bytes:  # snapshot names (aliases), each -> a digest (client/snapshots.py)
        return self.root + b"snapshots/"

    def snapshot(self, name: str) -> bytes:
        return self.snapshots() + name.encode()

    def store(self) -> bytes:  # the mesh's store: written once, by its first agent (meshstore.py)
        return self.root + b"meta/store"

    def idempotency(self, key: str) -> bytes:
        return self.root + b"idem/" + key.encode()

    def incarnation(self, host: str) -> bytes:
        return self.root + b"incarnations/" + host.encode()

    def name_of(self, key: bytes, prefix: bytes) -> str:
        """The last segment(s) of ``key`` below ``prefix``: an episode id, host id, claim id."""
        return key[len(prefix) :].decode()
