"""One store per mesh: the first agent records its store in etcd, every other agent and every
reader finds it there (design/README.md, "The store seam and layout").

The record (``meta/store``, no lease) holds the store's URL as the first agent opened it
(``Store.url``: normalised, no credentials) and a random marker that the same agent writes
into the store (``meshes/<namespace>/<marker>``). Every other agent's store must hold that marker,
or it is refused with one line: another URL with the marker is the same store (one NFS export
mounted at another path), the same URL without it is not (a local directory on another host).
An agent started without ``--store`` uses the
recorded one, and so do ``logs``, ``show``, ``artifacts``, ``report`` and ``MeshClient``;
``--store`` still overrides for readers (a laptop reading the mesh's bucket through another
endpoint).

Why etcd and a marker, not the URL alone: two agents writing results to two stores lose
events and artifacts silently (each reader sees half), and one URL can name two stores
(``/data`` on two hosts without NFS) as two URLs can name one (one export, two mount points).
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass

from .config import DEFAULT_STORE
from .errors import ConfigError, CorruptRecord, StoreError
from .keys import Keys
from .model import pack, unpack
from .registry import Compare, Put, Registry
from .store import Store, open_store
from .store.layout import mesh_marker_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MeshStore:
    url: str  # as the first agent opened it (Store.url)
    marker: str  # a random id: meshes/<namespace>/<marker> exists in the mesh's store

    def to_bytes(self) -> bytes:
        return pack({"url": self.url, "marker": self.marker})


def recorded(registry: Registry, keys: Keys) -> MeshStore | None:
    """The mesh's store as etcd records it; None if no agent with a store joined yet, or if
    the record cannot be read (logged: the next agent with a store writes it again)."""
    kv, _ = registry.get(keys.store())
    return _decode(kv.value, keys) if kv is not None else None


def _decode(value: bytes, keys: Keys) -> MeshStore | None:
    try:
        data = unpack(value, keys.store().decode())
    except CorruptRecord as exc:
        log.warning("ignoring the mesh's store record: %s", exc)
        return None
    url, marker = (data.get("url"), data.get("marker")) if isinstance(data, dict) else (None, None)
    if not isinstance(url, str) or not url or not isinstance(marker, str) or not marker:
        log.warning("ignoring the mesh's store record: it names no store")
        return None
    return MeshStore(url, marker)


def recorded_url(registry: Registry, keys: Keys) -> str:
    """For an agent given no store: the mesh's, else ``DEFAULT_STORE`` (a directory here)."""
    mine = recorded(registry, keys)
    return mine.url if mine is not None else DEFAULT_STORE


def join(registry: Registry, keys: Keys, store: Store | None) -> Store | None:
    """For an agent at start, after its store's probe: the store it must use. With a store,
    record it if the mesh has none yet, else check it is the recorded one (``ConfigError``
    if not); without one, open the recorded store (None if there is none)."""
    mine = recorded(registry, keys)
    if store is None:
        return open_store(mine.url) if mine is not None else None
    if mine is None:
        mine = _record(registry, keys, store)
    if not _holds_marker(store, keys, mine.marker):
        if mine.url == store.url:  # the same name, another store: a local directory on another host
            raise ConfigError(
                f"store {store.url} here is not the mesh's store of that name (its marker "
                f"{mesh_marker_path(keys.namespace, mine.marker)} is missing): give every host one shared "
                "store (an NFS path or s3://)"
            )
        raise ConfigError(
            f"this mesh's store is {mine.url} (recorded in etcd by its first agent), not {store.url}: "
            f"start with --store {mine.url}, or with no --store to use it"
        )
    if mine.url != store.url:
        log.info("store %s is the mesh's store %s (its marker matches)", store.url, mine.url)
    return store


def find(registry: Registry, keys: Keys, url: str | None) -> Store | None:
    """For readers (CLI, client): the store at ``url`` if given, else the mesh's recorded one."""
    if url:
        return open_store(url)
    mine = recorded(registry, keys)
    return open_store(mine.url) if mine is not None else None


def _record(registry: Registry, keys: Keys, store: Store) -> MeshStore:
    """Write our marker into the store, then the record if there is none; the record etcd
    holds afterwards (another agent's, if it was first)."""
    mine = MeshStore(store.url, uuid.uuid4().hex)
    path = mesh_marker_path(keys.namespace, mine.marker)
    store.put_bytes(path, json.dumps({"namespace": keys.namespace, "url": store.url}).encode())
    key = keys.store()
    for _ in range(3):  # each failure is someone else's write: theirs stands, or is garbage
        kv, _ = registry.get(key)
        if kv is not None and (theirs := _decode(kv.value, keys)) is not None:
            return theirs  # judged on the value the compare below would swap: one read
        # absent, or a record nobody can read: replace only what we read (compare-and-swap)
        compare = Compare(key, "mod", "==", kv.mod_revision) if kv else Compare(key, "create", "==", 0)
        if registry.txn([compare], [Put(key, mine.to_bytes())]).succeeded:
            log.info("recorded %s as the mesh's store", store.url)
            return mine
    raise ConfigError(f"could not record the mesh's store in etcd ({key.decode()} keeps changing)")


def _holds_marker(store: Store, keys: Keys, marker: str) -> bool:
    try:
        return store.exists(mesh_marker_path(keys.namespace, marker))
    except StoreError:  # a marker no path can hold (garbage in etcd): not this store's
        return False
