"""Globally unique, creation-sortable episode IDs without an etcd round trip per ID.

An ID is ``<revision:010x>-<seq:04x>-<host>``. ``revision`` is the revision of a write *this
allocator itself made* (its incarnation write, or later one of its own submission txns): etcd
gives every write a distinct revision, so no two allocators anywhere can hold the same one, and
``seq`` counts IDs issued under it. Adopting the revision of our latest own write keeps IDs
sorted by creation across clients to within one submission. ``host`` is for humans.

A batch whose records share one etcd key (a group record, ledger/homes.py) takes an aligned block
of sequence numbers from the upper half (single episodes take the lower half): blocks of 64 from
``GROUP_BASE`` for batches of up to 63, blocks of 256 from ``WIDE_BASE`` for wider ones. The
block's first number names the group's key and no episode, the members take the next ones. So
whether an episode is a batch member, and which group key holds it, follow from its id alone
(``home_id``), and no member id is ever a group key.
"""

from __future__ import annotations

import threading

from .keys import Keys, check_name
from .registry import Put, Registry

_SEQ_LIMIT = 0x10000
GROUP_BASE = 0x8000  # sequence numbers from here on are group blocks
GROUP_ALIGN = 64  # sequence numbers per group block: the group key's and up to 63 members'
# Wide blocks got a range of their own, so that ids issued before they existed keep their home
# (but for batches past the 256th under one revision, which used to reach this range).
WIDE_BASE = 0xC000
WIDE_ALIGN = 256
MAX_GROUP = WIDE_ALIGN - 1  # members of the widest group
_BLOCKS = {GROUP_ALIGN: (GROUP_BASE, WIDE_BASE), WIDE_ALIGN: (WIDE_BASE, _SEQ_LIMIT)}  # block size: its range


def format_id(revision: int, seq: int, host: str) -> str:
    return f"{revision:010x}-{seq:04x}-{host}"


def home_id(episode_id: str) -> str | None:
    """The id naming the group key an episode of a batch lives in (None: its id is aligned,
    so it is no group member, or it is not one of our ids)."""
    parts = episode_id.split("-", 2)
    if len(parts) != 3 or len(parts[1]) != 4:
        return None
    try:
        revision, seq = int(parts[0], 16), int(parts[1], 16)
    except ValueError:
        return None
    if not GROUP_BASE <= seq < _SEQ_LIMIT:
        return None
    aligned = seq - seq % (WIDE_ALIGN if seq >= WIDE_BASE else GROUP_ALIGN)
    return None if aligned == seq else format_id(revision, aligned, parts[2])


class IdAllocator:
    def __init__(self, registry: Registry, keys: Keys, host: str) -> None:
        self._registry = registry
        self._keys = keys
        self._host = check_name("host id", host)
        self._lock = threading.Lock()
        self._revision = self._seq = 0
        self._block_seq: dict[int, int] = {}  # block size: its next free block
        self._id_template = ""  # format_id's text for this revision, the seq left to format
        self._adopt_locked(0)

    def next_ids(self, count: int) -> list[str]:
        ids: list[str] = []
        with self._lock:
            while len(ids) < count:
                if self._revision == 0 or self._seq >= GROUP_BASE:
                    self._adopt_locked(self._incarnate())
                first = self._seq
                self._seq = min(first + count - len(ids), GROUP_BASE)
                # format_id's text from a template made once per revision: the single-host
                # service takes one id per run()
                ids += map(self._id_template.format, range(first, self._seq))
        return ids

    def next_group(self, size: int) -> tuple[str, list[str]]:
        """(the group key's id, ``size`` member ids) from one aligned block."""
        if not 1 <= size <= MAX_GROUP:
            raise ValueError(f"a group holds 1-{MAX_GROUP} episodes, not {size}")
        align = GROUP_ALIGN if size < GROUP_ALIGN else WIDE_ALIGN
        with self._lock:
            if self._revision == 0 or self._block_seq[align] >= _BLOCKS[align][1]:
                self._adopt_locked(self._incarnate())
            start = self._block_seq[align]
            self._block_seq[align] += align
            return format_id(self._revision, start, self._host), [
                format_id(self._revision, s, self._host) for s in range(start + 1, start + size + 1)
            ]

    def adopt(self, revision: int) -> None:
        """Tell the allocator a revision produced by one of its own successful writes."""
        with self._lock:
            if revision > self._revision:
                self._adopt_locked(revision)

    def _adopt_locked(self, revision: int) -> None:
        self._revision = revision
        self._seq = 0
        self._id_template = f"{revision:010x}-{{:04x}}-{self._host}"  # host ids hold no braces (check_name)
        self._block_seq = {align: first for align, (first, _) in _BLOCKS.items()}

    def _incarnate(self) -> int:
        result = self._registry.txn([], [Put(self._keys.incarnation(self._host), b"")])
        return result.revision
