"""Settings: defaults < environment (``OPENRANGE_*``) < flags. Frozen once built.

Timing words are Patroni's. ``ttl`` is the lease time to live; ``loop_wait`` the longest an agent
sleeps between loop passes; ``retry_timeout`` the longest one registry call may keep retrying.
An agent must notice a failing lease refresh and stop its episodes before the lease can expire
under it, so ``loop_wait + 2 * retry_timeout <= ttl`` (one refresh attempt may have just started
when trouble begins, a second must still fit before expiry).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import ConfigError
from .keys import check_name

ENV_ETCD = "OPENRANGE_ETCD"
ENV_NAMESPACE = "OPENRANGE_NAMESPACE"
ENV_HOST_ID = "OPENRANGE_HOST_ID"
ENV_CAPACITY = "OPENRANGE_CAPACITY"
ENV_STORE = "OPENRANGE_STORE"
ENV_TTL = "OPENRANGE_TTL"
ENV_LOOP_WAIT = "OPENRANGE_LOOP_WAIT"
ENV_RETRY_TIMEOUT = "OPENRANGE_RETRY_TIMEOUT"
ENV_LABELS = "OPENRANGE_LABELS"
ENV_LOG_LEVEL = "OPENRANGE_LOG_LEVEL"
ENV_RETENTION = "OPENRANGE_RETENTION"

# field name -> environment variable
_ENV = {
    "registry": ENV_ETCD,
    "namespace": ENV_NAMESPACE,
    "host_id": ENV_HOST_ID,
    "capacity": ENV_CAPACITY,
    "store": ENV_STORE,
    "ttl": ENV_TTL,
    "loop_wait": ENV_LOOP_WAIT,
    "retry_timeout": ENV_RETRY_TIMEOUT,
    "labels": ENV_LABELS,
    "log_level": ENV_LOG_LEVEL,
    "retention": ENV_RETENTION,
}
MIN_TTL = 2  # etcd's minimum lease TTL


def default_host_id() -> str:
    """The hostname, reduced to one safe path segment."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname().split(".")[0]).strip("-._")
    return (name or "host")[:63]


def registry_url(endpoints: str) -> str:
    """``--etcd`` takes bare endpoints (``h1:2379,h2:2379``) or a full registry URL."""
    endpoints = endpoints.strip()
    if not endpoints:
        raise ConfigError(f"no etcd endpoints given: pass --etcd or set {ENV_ETCD}")
    return endpoints if "://" in endpoints else f"etcd://{endpoints}"


def parse_labels(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` -> dict. Empty text is no labels."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"bad label {item!r}: expected key=value")
        labels[key.strip()] = value.strip()
    return labels


@dataclass(frozen=True)
class Settings:
    registry: str = "memory://"
    namespace: str = "default"
    host_id: str = field(default_factory=default_host_id)
    capacity: int = field(default_factory=lambda: os.cpu_count() or 1)
    store: str = "./openrange-store"
    ttl: int = 10
    loop_wait: float = 1.0
    retry_timeout: float = 4.0
    labels: Mapping[str, str] = field(default_factory=dict)
    log_level: str = "INFO"
    # Acked finished records older than this (seconds) are deleted by the leader; 0 keeps all.
    retention: float = 7 * 24 * 3600.0

    def __post_init__(self) -> None:
        check_name("namespace", self.namespace)
        check_name("host id", self.host_id)
        if self.capacity < 1:
            raise ConfigError(f"capacity must be at least 1, not {self.capacity}")
        if self.ttl < MIN_TTL:
            raise ConfigError(f"ttl must be at least {MIN_TTL} s (etcd's minimum lease), not {self.ttl}")
        if self.retention < 0:
            raise ConfigError(f"retention must be >= 0 seconds (0 keeps everything), not {self.retention}")
        if self.loop_wait <= 0 or self.retry_timeout <= 0:
            raise ConfigError("loop_wait and retry_timeout must be positive")
        if self.loop_wait + 2 * self.retry_timeout > self.ttl:
            raise ConfigError(
                f"timing rule broken: loop_wait ({self.loop_wait}) + 2 * retry_timeout ({self.retry_timeout}) "
                f"must be <= ttl ({self.ttl})"
            )

    @classmethod
    def load(cls, flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Settings:
        """Defaults, overridden by the environment, overridden by flags that are not None."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, var in _ENV.items():
            if env.get(var):
                values[name] = env[var]
        values.update({k: v for k, v in (flags or {}).items() if v is not None})
        return cls(**_coerce(values))

    def with_timing(self, ttl: int) -> Settings:
        """The same settings with ``ttl`` and timing derived from it by the documented ratio."""
        return replace(self, ttl=ttl, loop_wait=ttl / 8, retry_timeout=ttl * 7 / 16)


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    types = {f.name: f.type for f in fields(Settings)}
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name not in types:
            raise ConfigError(f"unknown setting {name!r}")
        try:
            if name == "labels" and isinstance(value, str):
                value = parse_labels(value)
            elif name == "registry":
                value = registry_url(str(value))
            elif types[name] == "int":
                value = int(value)
            elif types[name] == "float":
                value = float(value)
        except ValueError as exc:
            raise ConfigError(f"bad value for {name}: {value!r}") from exc
        out[name] = value
    return out
