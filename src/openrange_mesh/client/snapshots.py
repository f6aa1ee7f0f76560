"""Snapshots by name: a name is an alias in etcd (``snapshots/<name>``) for a digest in the
store (store/cas.py). Specs name a snapshot by digest or by name; submit resolves a name to
its digest and checks the blob is there, so an episode always starts from the content it was
submitted with, whatever the name points at later.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from ..errors import ConfigError, CorruptRecord, SpecError, StoreError
from ..keys import Keys
from ..model import pack, unpack
from ..registry import Compare, Delete, Put, Registry
from ..store import Store, cas
from ..store.digest import Reader, parse_digest
from ..store.layout import component_problem

log = logging.getLogger(__name__)

DIGEST_PREFIX = "sha256:"


@dataclass(frozen=True)
class Named:
    """A snapshot's name and what it points at."""

    name: str
    digest: str
    size: int
    kind: str  # "file" or "dir"
    created_at: float

    def to_bytes(self) -> bytes:
        return pack({"digest": self.digest, "size": self.size, "kind": self.kind, "created_at": self.created_at})


def put(
    registry: Registry, keys: Keys, store: Store, source: str | os.PathLike[str] | Reader, name: str | None = None
) -> cas.Snapshot:
    """Store a file, a directory or a binary file object by content (once: a blob already there
    is not uploaded again) and, with ``name``, point that name at it."""
    if name is not None:
        check_name(name)
    snapshot = cas.put_snapshot(store, source)
    if name is not None:
        named = Named(name, snapshot.digest, snapshot.size, snapshot.kind, time.time())
        registry.txn([], [Put(keys.snapshot(name), named.to_bytes())])
    return snapshot


def names(registry: Registry, keys: Keys) -> list[Named]:
    """Every name, in name order (an unreadable one is logged and left out)."""
    found = []
    for kv in registry.range(keys.snapshots()).kvs:
        named = _decode(keys.name_of(kv.key, keys.snapshots()), kv.value)
        if named is not None:
            found.append(named)
    return found


def remove(registry: Registry, keys: Keys, ref: str) -> bool:
    """Forget a name; True if there was one. The blob stays until the leader's collection
    finds nothing (no name, no pending or running episode) refers to it (ledger/storage_gc.py)."""
    check_name(ref)
    key = keys.snapshot(ref)
    kv, _ = registry.get(key)
    if kv is None:
        return False
    # compare-and-delete: a name pointed elsewhere meanwhile is someone's newer choice
    return registry.txn([Compare(key, "mod", "==", kv.mod_revision)], [Delete(key)]).succeeded


def resolve(registry: Registry, keys: Keys, store: Store | None, ref: str) -> str:
    """The digest ``ref`` names (a digest, or a name), checked to be in ``store``; SpecError if not."""
    if ref.startswith(DIGEST_PREFIX):
        try:
            digest = parse_digest(ref)
        except StoreError as exc:
            raise SpecError("snapshot", str(exc)) from exc
    else:
        kv, _ = registry.get(keys.snapshot(ref))
        named = _decode(ref, kv.value) if kv is not None else None
        if named is None:
            raise SpecError("snapshot", f"no snapshot named {ref!r} (openrange-mesh snapshot ls lists them)")
        digest = named.digest
    if store is None:
        raise ConfigError(f"spec names snapshot {ref!r} but the mesh has no store (no agent with --store joined)")
    if not cas.has_snapshot(store, digest):
        raise SpecError("snapshot", f"snapshot {ref!r} ({digest}) is not in the store {store.url}")
    return digest


def check_name(name: str) -> None:
    if name.startswith(DIGEST_PREFIX):
        raise SpecError("name", f"{name!r}: a name may not start with {DIGEST_PREFIX!r} (digests do)")
    problem = component_problem(name)
    if problem is not None:
        raise SpecError("name", f"{name!r} {problem}")


def _decode(name: str, value: bytes) -> Named | None:
    try:
        data = unpack(value, name)
        if not isinstance(data, dict):
            raise CorruptRecord(name, "not a map")
        digest = parse_digest(data.get("digest"))
        size, kind, created = int(data.get("size", 0)), str(data.get("kind", "file")), float(data.get("created_at", 0))
        return Named(name, digest, size, kind, created)
    except (CorruptRecord, StoreError, TypeError, ValueError) as exc:
        log.warning("skipping snapshot name %r: %s", name, exc)
        return None
