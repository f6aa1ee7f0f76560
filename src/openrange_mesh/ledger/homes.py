"""Where a record lives: under its own key, or in its batch's group record (its "home").

A batch submitted together (``spec.batch`` > 1) is stored as one group record, under the key
named by its id block's aligned id (``ids.home_id``): one etcd key per batch instead of one per
episode, so etcd's per-key cost (its JSON gateway's ~37 us per key written, every watch event)
is paid once per batch. Every member keeps its own id, state, attempts and result inside.

Members stay home while they are pending, running or finished. One that goes back to pending
while its claim goes on (a retry) moves out to a key of its own, in the txn that takes it out of
the group; those that go back to pending as their claim ends (a requeue, the last commit of a
claim) stay home, listed by one new queue entry (carrying the group's value only while no member
finished: an ack may rewrite finished members while the entry waits). So a group is held by at
most one claim or queue entry at a time, and a single owner writes it while that claim lives.
Lookups read a member's group first, and its own key only if it is not there.

Every write of a group compares the group key's mod_revision (optimistic concurrency with the
other writers of its members: acks, cancels); fencing stays with the claim key's token, which
commits compare as before (ledger.py).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from functools import partial

from ..ids import home_id
from ..keys import Keys
from ..model import (
    EpisodeRecord,
    State,
    decode_or_none,
    decode_records,
    decode_value,
    encode_group,
    finished_among,
)
from ..registry import MAX_TXN_OPS, Compare, Delete, Get, KeyValue, Op, Put, Registry
from .placement import Place, unowned
from .queue import QueueEntry, entry_ops, entry_put, groups, named

# Records under keys of their own that one txn claims or commits together: a compare and a put
# each, within etcd's ops per txn, with room for the claim's own keys (single-host runs,
# members that moved out of a group).
MAX_OWN_KEYS = (MAX_TXN_OPS - 8) // 2


@dataclass(slots=True)
class Home:
    """A group record as last read or written: its key, revision and members in order."""

    key: bytes
    mod_revision: int
    records: list[EpisodeRecord]


@dataclass(frozen=True, slots=True)
class Versioned:
    """A decoded record, the mod_revision of the key it was read from (what a txn compares
    against), and its group, if it lives in one."""

    record: EpisodeRecord
    mod_revision: int
    home: Home | None = None

    def key(self, keys: Keys) -> bytes:
        return self.home.key if self.home is not None else keys.episode(self.record.id)


def read(registry: Registry, keys: Keys, episode_ids: Sequence[str]) -> dict[str, Versioned]:
    """Read records where they live (``_read_where_they_live``). Corrupt values are skipped
    (logged)."""
    wanted = set(episode_ids)
    found: dict[str, Versioned] = {}

    def scan(kvs: list[KeyValue]) -> Container[str]:
        found.update(found_in(keys, kvs, wanted))
        return found

    _read_where_they_live(registry, keys, episode_ids, scan)
    return found


def read_finished(
    registry: Registry, keys: Keys, episode_ids: Sequence[str]
) -> tuple[set[str], dict[str, EpisodeRecord]]:
    """Which of some episodes exist, and the records of those that finished, as ``read``
    finds them, building only those records (a watcher of thousands of running episodes
    needs none of theirs). A finished record that does not decode is skipped (logged)."""
    wanted = set(episode_ids)
    present: set[str] = set()
    done: dict[str, EpisodeRecord] = {}

    def scan(kvs: list[KeyValue]) -> Container[str]:
        more, finished = _finished_in(kvs, wanted)
        present.update(more)
        done.update(finished)
        return present

    _read_where_they_live(registry, keys, episode_ids, scan)
    return present, done


def _read_where_they_live(
    registry: Registry, keys: Keys, episode_ids: Sequence[str], scan: Callable[[list[KeyValue]], Container[str]]
) -> None:
    """Hand ``scan`` the values episodes live in; it returns the ids found so far. A batch
    member is read in its group record (one get per group), and, if it is not there (it moved
    out), under its own key in a second round, which ``scan`` lets win. One round trip per
    ``MAX_TXN_OPS`` keys."""
    first = {keys.episode(home_id(i) or i): None for i in episode_ids}
    found = scan(get_many(registry, list(first)))
    moved = [i for i in episode_ids if i not in found and home_id(i) is not None]
    if moved:
        scan(get_many(registry, [keys.episode(i) for i in moved]))


def _finished_in(kvs: Iterable[KeyValue], wanted: set[str]) -> tuple[set[str], dict[str, EpisodeRecord]]:
    present: set[str] = set()
    done: dict[str, EpisodeRecord] = {}
    for kv in kvs:
        found = decode_or_none(partial(finished_among, wanted=wanted), kv.value, kv.key)
        if found is not None:
            present.update(found[0])
            done.update((r.id, r) for r in found[1])
    return present, done


def get_many(registry: Registry, key_list: list[bytes]) -> list[KeyValue]:
    """The values of some keys (those that exist), one read-only txn per ``MAX_TXN_OPS``."""
    kvs: list[KeyValue] = []
    for start in range(0, len(key_list), MAX_TXN_OPS):
        gets: list[Op] = [Get(k) for k in key_list[start : start + MAX_TXN_OPS]]
        kvs += [kv for found in registry.txn([], gets).responses for kv in found]
    return kvs


def found_in(keys: Keys, kvs: Iterable[KeyValue], wanted: set[str] | None = None) -> dict[str, Versioned]:
    """The records (all, or the ``wanted`` ones) in some values. A member that moves out
    leaves its group in the same txn, so no record is in two values of one revision."""
    own: dict[str, Versioned] = {}
    grouped: dict[str, Versioned] = {}
    for kv in kvs:
        records = decode_or_none(decode_records, kv.value, kv.key)
        if records is None:
            continue
        if len(records) == 1 and kv.key == keys.episode(records[0].id):  # a group's key names no member
            record = records[0]
            if wanted is None or record.id in wanted:
                own[record.id] = Versioned(record, kv.mod_revision)
            continue
        home = Home(kv.key, kv.mod_revision, records)
        for record in records:
            if wanted is None or record.id in wanted:
                grouped[record.id] = Versioned(record, kv.mod_revision, home)
    return grouped | own


def embedded(keys: Keys, entry: QueueEntry) -> dict[str, Versioned] | None:
    """The records a queue entry carries (written in its txn, so at its revision); None if
    it carries none, or they do not decode (the claimer reads them instead)."""
    if not entry.values:
        return None
    out: dict[str, Versioned] = {}
    for value in entry.values:
        decoded = decode_or_none(decode_value, value, keys.queued(entry.path))
        if decoded is None:
            return None
        records, grouped = decoded
        home = None
        if grouped:
            home_name = home_id(records[0].id) if records else None
            if home_name is None:
                return None  # no group record of ours: the claimer reads instead
            if any(r.state.is_terminal for r in records):
                return None  # an older writer's: an ack may have rewritten the group since (``rewrite``)
            home = Home(keys.episode(home_name), entry.mod_revision, records)
        out.update((r.id, Versioned(r, entry.mod_revision, home)) for r in records if r.id in entry.ids)
    return out


def compares(keys: Keys, versioned: Iterable[Versioned]) -> list[Compare]:
    """One mod compare per key the records were read from."""
    seen: dict[bytes, int] = {}
    for v in versioned:
        seen.setdefault(v.key(keys), v.mod_revision)
    return [Compare(key, "mod", "==", mod) for key, mod in seen.items()]


@dataclass(frozen=True, slots=True)
class Rewrite:
    """Ops writing changed records where they live, and the groups' members once they land."""

    ops: list[Op]
    homes: dict[bytes, list[EpisodeRecord]]

    def landed(self, homes: Iterable[Home], revision: int) -> None:
        """Bring ``homes`` up to date after the txn holding ``ops`` succeeded at ``revision``."""
        for home in homes:
            if home.key in self.homes:
                home.records = self.homes[home.key]
                home.mod_revision = revision


def rewrite(
    keys: Keys,
    changes: Sequence[tuple[EpisodeRecord, Home | None]],
    *,
    claim_ends: bool = False,
    place: Place = unowned,
) -> Rewrite:
    """Write records that changed. A group member is replaced in its group; one that goes back
    to pending moves out to a key of its own, unless the claim that held it ends in this txn
    (``claim_ends``): then nothing else holds the group, and its pending members stay home,
    listed by one new queue entry carrying the group's value, unless some members finished: an
    ack may rewrite those at any time, leaving the entry as it was and what it carried stale
    for good, so the claimer reads the group. Records of their own keep their keys. Pending
    records get queue entries, in the mailboxes ``place`` picks."""
    replaced: dict[bytes, dict[str, EpisodeRecord | None]] = {}
    by_key: dict[bytes, Home] = {}
    moving: list[EpisodeRecord] = []  # pending, written under keys of their own
    staying: dict[bytes, list[list[EpisodeRecord]]] = {}  # pending members staying home, as entries
    ops: list[Op] = []
    for record, home in changes:
        if home is None:
            if record.state is State.PENDING:
                moving.append(record)
            else:
                ops.append(Put(keys.episode(record.id), record.to_bytes()))
            continue
        by_key[home.key] = home
        moves = record.state is State.PENDING and not claim_ends
        if moves:
            moving.append(record)
        replaced.setdefault(home.key, {})[record.id] = None if moves else record
    for key, changed in replaced.items():
        pending = [r for r in changed.values() if r is not None and r.state is State.PENDING]
        staying[key] = [named(group, place) for group in groups(pending)]
        changed.update((r.id, r) for group in staying[key] for r in group)
    members: dict[bytes, list[EpisodeRecord]] = {}
    for key, changed in replaced.items():
        kept = [changed.get(r.id, r) for r in by_key[key].records]
        members[key] = [r for r in kept if r is not None]
        value = encode_group(members[key]) if members[key] else None
        ops.append(Put(key, value) if value is not None else Delete(key))
        carried = [] if value is None or any(r.state.is_terminal for r in members[key]) else [value]
        ops += [entry_put(keys, group, carried) for group in staying[key] if value is not None]
    for group in claimable(keys, moving):
        ops += entry_ops(keys, named(group, place))
    return Rewrite(ops, members)


def claimable(keys: Keys, records: Sequence[EpisodeRecord]) -> list[list[EpisodeRecord]]:
    """Pending records as queue entries will list them (``queue.groups``), a run of records
    under keys of their own cut to ``MAX_OWN_KEYS``: a claim compares each of their keys."""
    out: list[list[EpisodeRecord]] = []
    for group in groups(records):
        if len(group) <= MAX_OWN_KEYS or group_key(keys, group) is not None:
            out.append(group)
        else:
            out += [group[i : i + MAX_OWN_KEYS] for i in range(0, len(group), MAX_OWN_KEYS)]
    return out


def group_key(keys: Keys, group: Sequence[EpisodeRecord]) -> bytes | None:
    """The key a freshly submitted group of records shares, if their ids came from one block
    (``IdAllocator.next_group``); None: they are written one key each."""
    if len(group) < 2:
        return None
    home = home_id(group[0].id)
    if home is None or any(home_id(r.id) != home for r in group):
        return None
    return keys.episode(home)
