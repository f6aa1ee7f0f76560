"""Collection in the store: what no record needs any more, once older than a grace period.

The leader runs it every ``--store-gc-interval`` from a thread of its own (store listings take
seconds at 100k episodes: never in the loop), and ``openrange-mesh gc`` runs it without one.
What goes, each only when last written more than ``grace`` seconds ago (so nothing being
written or just written, and no upload in flight, is ever touched: an upload becomes visible
at its final path only when complete, with the time it completed):

* ``episodes/<id>/...`` of an episode with no record (collected by retention, ledger/retention.py);
* ``artifacts-<token>/`` of an attempt no record names under that token (a stale owner's late
  uploads: its claim was fenced off, so no record will ever name them);
* ``batches/<claim>/`` and ``shared/<name>.jsonl`` that no attempt of any record names;
* snapshot blobs (``cas/``) that no name and no pending or running episode refers to.

The records are read first, at one revision, then the store: an object written after that read
is younger than the grace period. A name pointed at an old unreferenced blob during a collection
may lose its blob; submitting then fails clearly ("not in the store") and ``snapshot put`` of
the same content uploads it again.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..keys import Keys
from ..model import EpisodeRecord, State
from ..registry import Registry
from ..store import Store
from ..store.events import names_file
from ..store.layout import parse_cas_path
from .catalog import Catalog

log = logging.getLogger(__name__)

_ATTEMPT = re.compile(r"episodes/(?P<id>[^/]+)/attempt-\d+/(?P<rest>.*)")
_ARTIFACTS = re.compile(r"artifacts-(?P<token>\d+)/")
_BATCH = re.compile(r"batches/(?P<claim>[^/]+)/")
_SHARED = re.compile(r"shared/(?P<name>.+)\.jsonl")


@dataclass
class Needed:
    """What the records refer to in the store."""

    episodes: set[str] = field(default_factory=set)
    tokens: dict[str, set[int]] = field(default_factory=dict)  # episode -> its attempts' tokens
    batches: set[str] = field(default_factory=set)
    shared: set[str] = field(default_factory=set)
    snapshots: set[str] = field(default_factory=set)  # of pending and running episodes

    def add(self, record: EpisodeRecord) -> None:
        self.episodes.add(record.id)
        self.tokens[record.id] = {a.token for a in record.history if a.token is not None}
        self.batches.update(a.batch for a in record.history if a.batch)
        self.shared.update(a.events for a in record.history if names_file(a.events))
        if record.state in (State.PENDING, State.RUNNING) and record.spec.snapshot:
            self.snapshots.add(record.spec.snapshot)


def needed(registry: Registry, keys: Keys, names: Iterable[str]) -> Needed:
    """What every record (read at one revision) and every snapshot name refers to."""
    found = Needed()
    for record, _ in Catalog(registry, keys).episodes():
        found.add(record)
    found.snapshots.update(names)
    return found


def collect(
    store: Store, need: Needed, grace: float, now: float | None = None, *, dry_run: bool = False
) -> dict[str, int]:
    """Delete what ``need`` does not hold and was written more than ``grace`` seconds before
    ``now``; how many objects went (or would, ``dry_run``), by kind."""
    cutoff = (time.time() if now is None else now) - grace
    gone = {"episodes": 0, "artifacts": 0, "batches": 0, "shared": 0, "snapshots": 0}
    for path, written in store.modified().items():
        if written > cutoff:
            continue
        kind = _unneeded(path, need)
        if kind is not None:
            if not dry_run:
                store.delete(path)
            gone[kind] += 1
    if any(gone.values()) and not dry_run:
        log.info("store collection removed %s", ", ".join(f"{n} {k}" for k, n in gone.items() if n))
    return gone


def _unneeded(path: str, need: Needed) -> str | None:
    """The kind of object ``path`` is if no record needs it, else None (kept)."""
    if m := _ATTEMPT.fullmatch(path):
        episode = m["id"]
        if episode not in need.episodes:
            return "episodes"
        a = _ARTIFACTS.match(m["rest"])
        return "artifacts" if a and int(a["token"]) not in need.tokens.get(episode, set()) else None
    if m := _BATCH.match(path):
        return None if m["claim"] in need.batches else "batches"
    if m := _SHARED.fullmatch(path):
        return None if m["name"] in need.shared else "shared"
    digest = parse_cas_path(path)
    if digest is not None:
        return None if digest in need.snapshots else "snapshots"
    return None  # reports/, meshes/, probes/ and anything not ours: never
