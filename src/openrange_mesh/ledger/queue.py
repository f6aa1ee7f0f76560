"""The queue of pending episodes: one entry per claimable group.

An entry (``queue/<owner>/<name>``: in its owner's mailbox, ledger/placement.py) lists the
ids of pending episodes that one claim takes together: a single episode, or up to ``batch``
consecutive episodes of one submission that asked for batching. Grouping happens when
episodes are enqueued (submitted, requeued, retried), so an agent claims an entry as a whole:
one queue delete per group, and one small watch event per group for its owner, instead of one
per episode. Records name their entry's path
(``record.queue``: "<owner>/<name>") while pending, so a cancel can take one episode out of its
group.

An entry written in the txn that writes its records also carries their values (``with``):
their mod_revision is then the entry's own, so an agent claims it without reading them (one
round trip per claim instead of two). An entry rewritten later (a cancel took an id out) lists
ids only, and the claiming agent reads the records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import CorruptRecord
from ..keys import Keys
from ..model import EpisodeRecord, pack, unpack
from ..registry import Delete, KeyValue, Op, Put
from .placement import Place

log = logging.getLogger(__name__)

# A sign that work was queued (ctl/queued) reaches every agent: a writer sends one this often at most.
MARKER_EVERY = 1.0


class QueuedMarker:
    """A writer's sign for idle agents that it queued work they got no share of (agent/peers.py:
    they steal after it): a client's submissions, an heir's requeues. Threads: its writer's."""

    def __init__(self, keys: Keys, writer: str) -> None:
        self._op = Put(keys.queued_marker(), writer.encode())
        self._sent_at = -MARKER_EVERY  # monotonic

    def ops(self) -> list[Op]:
        """The marker's put, unless one went less than ``MARKER_EVERY`` ago."""
        now = time.monotonic()
        if now - self._sent_at < MARKER_EVERY:
            return []
        self._sent_at = now
        return [self._op]


@dataclass(frozen=True, slots=True)
class QueueEntry:
    name: str  # the claim id its claim will have
    ids: tuple[str, ...]
    mod_revision: int
    values: tuple[bytes, ...] = ()  # the records' values as written with the entry, if they were
    owner: str = ""  # whose mailbox holds it ("": a flat key of an older agent, queue/<name>)

    @property
    def path(self) -> str:
        """Its key below ``queue/`` (Keys.queued)."""
        return f"{self.owner}/{self.name}" if self.owner else self.name

    def without(self, episode_id: str) -> tuple[str, ...]:
        return tuple(i for i in self.ids if i != episode_id)


def groups(records: Sequence[EpisodeRecord]) -> list[list[EpisodeRecord]]:
    """Runs of consecutive records of one submitter with the same ``batch`` > 1, up to that
    size; every other record alone."""
    out: list[list[EpisodeRecord]] = []
    start = 0
    while start < len(records):
        end = start + 1  # records[start:end]: one submitter's
        while end < len(records) and records[end].submitter == records[start].submitter:
            end += 1
        for size in batch_runs([r.spec.batch for r in records[start:end]]):
            out.append(list(records[start : start + size]))
            start += size
    return out


def batch_runs(batches: Sequence[int]) -> list[int]:
    """The sizes of the groups ``groups`` forms of one submitter's records with these
    ``batch`` values (a client allocates each group's ids as one block before it has records)."""
    sizes: list[int] = []
    previous = 0
    for batch in batches:
        if sizes and batch > 1 and batch == previous and sizes[-1] < batch:
            sizes[-1] += 1
        else:
            sizes.append(1)
        previous = batch
    return sizes


def entry_name(group: Sequence[EpisodeRecord]) -> str:
    return f"{group[0].id}.{group[0].attempt}"


def named(group: Sequence[EpisodeRecord], place: Place) -> list[EpisodeRecord]:
    """The group's records, each naming the path of the entry that lists it: in the mailbox
    ``place`` picks for it."""
    name = entry_name(group)
    path = f"{place(name)}/{name}"
    return [r if r.queue == path else r.replace(queue=path) for r in group]


def entry_ops(keys: Keys, group: Sequence[EpisodeRecord], encoded: Sequence[bytes] | None = None) -> list[Op]:
    """Write a named group's pending records and their entry (one revision for all of them)."""
    data = encoded if encoded is not None else [r.to_bytes() for r in group]
    ops: list[Op] = [Put(keys.episode(r.id), d) for r, d in zip(group, data, strict=True)]
    ops.append(entry_put(keys, group, data))
    return ops


# An entry carries its records' values up to this size: every agent receives every entry, and a
# big spec (up to 512 KiB) would double the submission's bytes. Bigger records are read by the
# claimer instead.
CARRY_LIMIT = 64 * 1024


def carried_bytes(values: Sequence[bytes]) -> int:
    """How many bytes an entry carrying ``values`` adds to its txn: their size, or 0 when they
    are too big to carry."""
    size = sum(len(v) for v in values)
    return size if size <= CARRY_LIMIT else 0


def entry_put(keys: Keys, group: Sequence[EpisodeRecord], values: Sequence[bytes] = ()) -> Put:
    """The queue entry listing a named group (at the path its records name), with the values
    of its records written in the same txn (or none)."""
    entry: dict[str, object] = {"ids": [r.id for r in group]}
    if values and carried_bytes(values):
        entry["with"] = list(values)
    return Put(keys.queued(group[0].queue or entry_name(group)), pack(entry))


def rewrite_ops(keys: Keys, entry: QueueEntry, remaining: tuple[str, ...]) -> list[Op]:
    """The entry without some of its ids (deleted once none remain); its name stays."""
    if not remaining:
        return [Delete(keys.queued(entry.path))]
    return [Put(keys.queued(entry.path), pack({"ids": list(remaining)}))]


def owner_and_name(keys: Keys, key: bytes) -> tuple[str, str]:
    """Whose mailbox a queue key is in ("" for an older agent's flat key) and the entry's name."""
    owner, _, name = keys.name_of(key, keys.queue()).rpartition("/")
    return owner, name


def decode_entry(keys: Keys, kv: KeyValue) -> QueueEntry | None:
    """An entry as the registry holds it; a corrupt one is logged and skipped."""
    owner, name = owner_and_name(keys, kv.key)
    try:
        entry = unpack(kv.value, name)
        ids = entry.get("ids") if isinstance(entry, dict) else entry  # a list: ids only (older agents)
        values = entry.get("with") or [] if isinstance(entry, dict) else []
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise CorruptRecord(name, "a queue entry must list episode ids")
    except CorruptRecord as exc:
        log.warning("skipping %s", exc)
        return None
    if not isinstance(values, list) or not all(isinstance(v, bytes) for v in values):
        log.warning("queue entry %s carries values that are not byte strings; its records will be read", name)
        values = []  # the ids are what matters: the claimer reads the records instead
    return QueueEntry(name, tuple(ids), kv.mod_revision, tuple(values), owner)
