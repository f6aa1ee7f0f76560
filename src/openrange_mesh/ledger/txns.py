"""Packing the ledger's writes into txns etcd accepts (within ``registry.MAX_TXN_OPS`` ops and
``MAX_TXN_BYTES`` per request): a submission's groups, a settlement's nested parts, and plain
puts of records written behind (writebehind.py)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from ..keys import Keys
from ..model import EpisodeRecord, encode_group
from ..registry import MAX_REQUEST_BYTES, MAX_TXN_OPS, Delete, Put, Txn
from .homes import group_key
from .placement import Place
from .queue import carried_bytes, named

MAX_TXN_BYTES = MAX_REQUEST_BYTES * 2 // 3  # headroom for base64 and JSON on the way to etcd
# Per-episode ops one commit txn may hold: its fixed few (the claim's compare and delete, a
# group's compare and put, a queue entry) and a settle request's other parts fit beside them.
PART_OPS = 100


@dataclass(frozen=True, slots=True)
class Enqueued:
    """A group of pending records named for its queue entry, the key it shares (None: a key
    each), and the values it writes."""

    records: list[EpisodeRecord]
    home: bytes | None
    values: list[bytes]

    @classmethod
    def of(cls, keys: Keys, group: Sequence[EpisodeRecord], place: Place) -> Enqueued:
        records = named(group, place)
        home = group_key(keys, records)
        values = [encode_group(records)] if home is not None else [r.to_bytes() for r in records]
        return cls(records, home, values)

    @property
    def ops(self) -> int:
        return 1 + sum(1 for r in self.records if r.spec.idempotency_key) + (1 if self.home else len(self.records))

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.values) + carried_bytes(self.values)  # the entry's copy too


FIRST_TXN_RECORDS = 64  # records in a submission's first txn; each next txn may hold twice as many


def txn_chunks(keys: Keys, groups: Iterable[Sequence[EpisodeRecord]], place: Place) -> Iterator[list[Enqueued]]:
    """Whole groups packed into txns within etcd's limits (``MAX_TXN_OPS`` ops: a record or a
    group record, the idempotency keys, one entry per group; ``MAX_TXN_BYTES`` of values),
    and within a record count that starts at ``FIRST_TXN_RECORDS`` and doubles, encoded as
    they are packed: 10000 CartPole specs take ~0.1 s to encode, a worker's idle time if all
    of it came before the first txn. Nothing else shares a txn but the last's ``closing`` ops,
    so a txn of single entries holds whole runs of a host's capacity when it is a power of two
    (64 entries: 16 hosts of 4 workers, each claiming its run at once)."""
    chunk: list[Enqueued] = []
    ops, nbytes, count = 0, 0, 0
    limit = FIRST_TXN_RECORDS
    for records in groups:
        group = Enqueued.of(keys, records, place)
        over = ops + group.ops > MAX_TXN_OPS or nbytes + group.size > MAX_TXN_BYTES or count + len(records) > limit
        if chunk and over:
            yield chunk
            chunk, ops, nbytes, count, limit = [], 0, 0, 0, limit * 2
        chunk.append(group)
        ops, nbytes, count = ops + group.ops, nbytes + group.size, count + len(records)
    if chunk:
        yield chunk


def closing(chunks: Iterator[list[Enqueued]], room: int) -> Iterator[tuple[list[Enqueued], bool]]:
    """``chunks``, each with whether it is the last, which leaves ``room`` ops for what rides on
    it (its last group goes in a txn of its own if it would not; an empty last chunk: nothing
    but what rides). Looks one chunk ahead: a chunk is sent once the next is encoded."""
    chunk = next(chunks, None)
    while chunk is not None:
        following = next(chunks, None)
        if following is not None or sum(g.ops for g in chunk) + room <= MAX_TXN_OPS:
            yield chunk, following is None
        else:
            alone = chunk[-1:] if len(chunk) > 1 else []
            yield chunk[: len(chunk) - len(alone)], False
            yield alone, True
        chunk = following


def requests(parts: Sequence[Txn], extra: int) -> list[list[Txn]]:
    """Nested txns packed into requests etcd accepts: a request's list holds its parts and
    ``extra`` ops, and each part's compares and ops must fit in what that list left of
    ``MAX_TXN_OPS`` (etcd's checkTxnRequest counts a nested txn against its parent's width).
    Parts that write a key in common go in different requests: etcd refuses a request whose
    nested txns put a key twice, whatever their compares (as it did a claim of an entry an
    agent had just claimed, tried again beside the commit that rewrote its group, when agents
    still waited for the watch to drop claimed entries); apart, the stale one just fails."""
    requests: list[list[Txn]] = []
    widest = 0
    written: set[bytes] = set()
    for part in parts:
        width = max(len(part.compares), len(part.success), len(part.failure))
        keys = {op.key for op in (*part.success, *part.failure) if isinstance(op, Put | Delete)}
        fits = requests and len(requests[-1]) + 1 + extra + max(widest, width) <= MAX_TXN_OPS
        if fits and written.isdisjoint(keys):
            requests[-1].append(part)
            widest = max(widest, width)
            written |= keys
        else:
            requests.append([part])
            widest = width
            written = keys
    return requests


def put_chunks(puts: Iterable[Put]) -> Iterator[list[Put]]:
    """Puts packed in order into txns etcd accepts: at most ``MAX_TXN_OPS`` each, and at most
    ``MAX_TXN_BYTES`` of keys and values, but for a bigger put, which goes alone."""
    chunk: list[Put] = []
    nbytes = 0
    for put in puts:
        size = len(put.key) + len(put.value)
        if chunk and (len(chunk) == MAX_TXN_OPS or nbytes + size > MAX_TXN_BYTES):
            yield chunk
            chunk, nbytes = [], 0
        chunk.append(put)
        nbytes += size
    if chunk:
        yield chunk
