"""Open a registry by URL. Backends are imported lazily from a protocol table (fsspec-style),
so ``memory://`` never imports etcd3gw.

* ``memory://`` or ``memory://NAME``: in-process, shared by every opener of NAME in this process.
* ``etcd://host1:2379,host2:2379[?timeout=S]``: etcd's v3 HTTP gateway, failing over along the list.
* ``etcd+https://user:password@host1:2379,...?cacert=PATH&cert=PATH&key=PATH``: TLS and auth.
* etcdctl's endpoints: ``http://h1:2379,http://h2:2379``, ``https://h1:2379`` (TLS, the system's CAs), or
  bare ``h1:2379,[::1]:2379`` (plain http).
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ConfigError
from .base import (
    ERROR_KINDS,
    MAX_REQUEST_BYTES,
    MAX_TXN_OPS,
    OPERATIONS,
    Compare,
    Delete,
    Event,
    Get,
    KeyValue,
    Observer,
    Op,
    Put,
    RangeResult,
    Registry,
    Txn,
    TxnResult,
    Watch,
    WatchBatch,
    prefix_end,
)

__all__ = [
    "ERROR_KINDS",
    "MAX_REQUEST_BYTES",
    "MAX_TXN_OPS",
    "OPERATIONS",
    "Compare",
    "Delete",
    "Event",
    "Get",
    "KeyValue",
    "Observer",
    "Op",
    "Put",
    "RangeResult",
    "Registry",
    "Txn",
    "TxnResult",
    "Watch",
    "WatchBatch",
    "open_registry",
    "prefix_end",
]

# scheme -> (module, class). The class is constructed as cls(url, retry_timeout=..., observer=...).
_BACKENDS: dict[str, tuple[str, str]] = {
    "memory": ("openrange_mesh.registry.memory", "MemoryRegistry"),
    "etcd": ("openrange_mesh.registry.etcd", "EtcdRegistry"),
    "etcd+http": ("openrange_mesh.registry.etcd", "EtcdRegistry"),
    "etcd+https": ("openrange_mesh.registry.etcd", "EtcdRegistry"),
    "http": ("openrange_mesh.registry.etcd", "EtcdRegistry"),
    "https": ("openrange_mesh.registry.etcd", "EtcdRegistry"),
    "": ("openrange_mesh.registry.etcd", "EtcdRegistry"),  # bare host:port, as etcdctl takes them
}


def open_registry(
    url: str, *, retry_timeout: float = 10.0, observer: Observer | None = None, answers: Any = None
) -> Registry:
    """Open the registry named by ``url``. ``retry_timeout`` bounds how long one call keeps
    retrying an unavailable backend before raising ``Unavailable``; ``observer`` is told of
    every request (base.py); ``answers``: another process's ``share_answers()`` table."""
    # The first item's scheme decides: an endpoint list repeats it (http://a:2379,http://b:2379).
    scheme, sep, _ = url.split(",", 1)[0].strip().partition("://")
    scheme = scheme if sep else ""
    if scheme not in _BACKENDS:
        known = ", ".join(f"{s}://" for s in _BACKENDS if s)
        raise ConfigError(f"unknown registry URL {url.split('@')[-1]!r}: expected one of {known}, or host:port")
    module_name, class_name = _BACKENDS[scheme]
    cls = getattr(importlib.import_module(module_name), class_name)
    shared = {"answers": answers} if answers is not None else {}
    registry: Registry = cls(url, retry_timeout=retry_timeout, observer=observer, **shared)
    return registry
