"""Reading the cluster: records and hosts, paged at one consistent revision, decoded tolerantly.

Listing never loads the whole keyspace: it pages ``page_size`` keys at a time, every page read at
the revision of the first, so 100k records list in bounded memory and show one moment in time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial

from ..errors import EpisodeNotFound
from ..ids import home_id
from ..keys import Keys
from ..model import EpisodeRecord, HostInfo, State, decode_in_states, decode_or_none, decode_records
from ..registry import KeyValue, Registry
from . import homes
from .records import claim_episode_ids

PAGE_SIZE = 500


@dataclass(frozen=True)
class EpisodeFilter:
    states: frozenset[State] = frozenset()
    hosts: frozenset[str] = frozenset()
    runtimes: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)
    submitter: str | None = None

    def __call__(self, record: EpisodeRecord) -> bool:
        return (
            (not self.states or record.state in self.states)
            and (not self.hosts or record.owner in self.hosts or _ran_on(record, self.hosts))
            and (not self.runtimes or record.spec.runtime in self.runtimes)
            and all(record.spec.labels.get(k) == v for k, v in self.labels.items())
            and (self.submitter is None or record.submitter == self.submitter)
        )


def _ran_on(record: EpisodeRecord, hosts: frozenset[str]) -> bool:
    return bool(record.history) and record.history[-1].host in hosts


class Catalog:
    def __init__(self, registry: Registry, keys: Keys) -> None:
        self.registry = registry
        self.keys = keys

    def get(self, episode_id: str) -> EpisodeRecord:
        found = homes.read(self.registry, self.keys, [episode_id]).get(episode_id)
        if found is None:
            raise EpisodeNotFound(episode_id)
        return found.record

    def episodes(
        self,
        where: Callable[[EpisodeRecord], bool] | None = None,
        *,
        revision: int | None = None,
        page_size: int = PAGE_SIZE,
        after: str | None = None,
    ) -> Iterator[tuple[EpisodeRecord, int]]:
        """Yield (record, mod_revision) in id order (a batch's group record lists its members
        where its key sorts, just before their ids), all read at one revision (the first page's,
        unless ``revision`` is given). ``after``: resume past that episode id. An
        ``EpisodeFilter`` with states decodes only the records in them (``decode_in_states``)."""
        start = home_id(after) or after if after else None  # the rest of its group comes first
        states = where.states if isinstance(where, EpisodeFilter) else None
        decode = partial(decode_in_states, states=states) if states else decode_records
        for kv, _ in self.scan(self.keys.episodes(), revision, page_size, start, inclusive=start != after):
            for record in decode_or_none(decode, kv.value, kv.key) or ():
                if (after is None or record.id > after) and (where is None or where(record)):
                    yield record, kv.mod_revision

    def hosts(self) -> list[HostInfo]:
        return [host for host, _ in self.host_leases()]

    def host_leases(self) -> list[tuple[HostInfo, int]]:
        """Live hosts with the lease their record is bound to, each with the episodes its
        live claims hold as its running count (a record's own count is as of its last write:
        agent/host_record.py)."""
        result = self.registry.range(self.keys.hosts())
        running = self.running_by_host(result.revision)
        hosts = ((decode_or_none(HostInfo.from_bytes, kv.value, kv.key), kv.lease) for kv in result.kvs)
        return [(replace(h, running=running.get(h.id, 0)), lease) for h, lease in hosts if h is not None]

    def running_by_host(self, revision: int | None = None) -> dict[str, int]:
        """Episodes each host's live claims list (a batch's members until its last commit)."""
        counts: dict[str, int] = {}
        for kv, _ in self.scan(self.keys.claims(), revision):
            host = self.keys.name_of(kv.key, self.keys.claims()).partition("/")[0]
            counts[host] = counts.get(host, 0) + len(claim_episode_ids(kv))
        return counts

    def heartbeats(self) -> list[tuple[HostInfo, int | None]]:
        """Live hosts with the seconds since their agent last refreshed its lease (from the
        lease's remaining ttl; whole seconds, etcd's granularity), None if it just expired."""
        out: list[tuple[HostInfo, int | None]] = []
        for host, lease in self.host_leases():
            ttl = self.registry.time_to_live(lease)
            out.append((host, None if ttl is None else max(0, ttl[1] - ttl[0])))
        return out

    def scan(
        self,
        prefix: bytes,
        revision: int | None,
        page_size: int = PAGE_SIZE,
        after: str | None = None,
        *,
        inclusive: bool = False,
    ) -> Iterator[tuple[KeyValue, int]]:
        """Every key under ``prefix`` (past ``after``, or from it if ``inclusive``) with the
        revision it was read at, paged, one revision."""
        start = prefix + after.encode() + (b"" if inclusive else b"\0") if after else None
        while True:
            page = self.registry.range(prefix, start=start, revision=revision, limit=page_size)
            if revision is None:  # later pages read at the first page's revision
                revision = page.revision
            for kv in page.kvs:
                yield kv, revision
            if not page.more or not page.kvs:
                return
            start = page.kvs[-1].key + b"\0"
