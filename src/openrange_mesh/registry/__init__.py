"""Open a registry by URL. Backends are imported lazily from a protocol table (fsspec-style),
so ``memory://`` never imports etcd3gw.

* ``memory://`` or ``memory://NAME``: in-process, shared by every opener of NAME in this process.
* ``etcd://host1:2379,host2:2379[?timeout=S]``: etcd's v3 HTTP gateway, failing over along the list.
* ``etcd+https://user:password@host1:2379,...?cacert=PATH&cert=PATH&key=PATH``: TLS and auth.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from ..errors import ConfigError
from .base import (
    Compare,
    Delete,
    Event,
    Get,
    KeyValue,
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
    "Compare",
    "Delete",
    "Event",
    "Get",
    "KeyValue",
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

# scheme -> (module, class). The class is constructed as cls(url, retry_timeout=...).
_BACKENDS: dict[str, tuple[str, str]] = {
    "memory": ("openrange_mesh.registry.memory", "MemoryRegistry"),
    "etcd": ("openrange_mesh.registry.etcd", "EtcdRegistry"),
    "etcd+http": ("openrange_mesh.registry.etcd", "EtcdRegistry"),
    "etcd+https": ("openrange_mesh.registry.etcd", "EtcdRegistry"),
}


def open_registry(url: str, *, retry_timeout: float = 10.0) -> Registry:
    """Open the registry named by ``url``. ``retry_timeout`` bounds how long one call keeps
    retrying an unavailable backend before raising ``Unavailable``."""
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme not in _BACKENDS:
        known = ", ".join(f"{s}://" for s in _BACKENDS)
        raise ConfigError(f"unknown registry URL {url.split('@')[-1]!r}: expected one of {known}")
    module_name, class_name = _BACKENDS[scheme]
    cls = getattr(importlib.import_module(module_name), class_name)
    registry: Registry = cls(url, retry_timeout=retry_timeout)
    return registry
