"""Settings: defaults < environment (``OPENRANGE_*``) < flags. Frozen once built. etcd's
endpoints, TLS files and credentials fall back, below ours, to etcdctl's ``ETCDCTL_*``
variables, and become one registry URL (``registry_url``).

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
ENV_METRICS_PORT = "OPENRANGE_METRICS_PORT"
ENV_CACERT = "OPENRANGE_CACERT"
ENV_CERT = "OPENRANGE_CERT"
ENV_KEY = "OPENRANGE_KEY"
ENV_USER = "OPENRANGE_USER"
ENV_PASSWORD = "OPENRANGE_PASSWORD"
ENV_DASHBOARD_HOST = "OPENRANGE_DASHBOARD_HOST"
ENV_DASHBOARD_PORT = "OPENRANGE_DASHBOARD_PORT"
ENV_DASHBOARD_URL = "OPENRANGE_DASHBOARD_URL"
ENV_DASHBOARD_TOKEN = "OPENRANGE_DASHBOARD_TOKEN"
ENV_REPORT_INTERVAL = "OPENRANGE_REPORT_INTERVAL"
DEFAULT_DASHBOARD_PORT = 7465
ENV_CACHE_DIR = "OPENRANGE_CACHE_DIR"
ENV_CACHE_SIZE = "OPENRANGE_CACHE_SIZE"
ENV_STORE_GC_INTERVAL = "OPENRANGE_STORE_GC_INTERVAL"
ENV_STORE_GRACE = "OPENRANGE_STORE_GRACE"
DEFAULT_STORE = "./openrange-store"  # an agent's store when it was given none and the mesh has none
DEFAULT_CACHE_SIZE = 20 * 2**30  # bytes of snapshots a host keeps (those in use may exceed it)


def default_cache_dir() -> str:
    """Where a host caches snapshots: ``$XDG_CACHE_HOME`` (else ``~/.cache``)/openrange-mesh/snapshots;
    one directory for every agent and worker of the host (they share it safely)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "openrange-mesh", "snapshots")


# etcdctl's own, honoured where ours are unset: a host set up for etcdctl needs nothing more.
ETCDCTL_ENDPOINTS = "ETCDCTL_ENDPOINTS"
ETCDCTL_CACERT = "ETCDCTL_CACERT"
ETCDCTL_CERT = "ETCDCTL_CERT"
ETCDCTL_KEY = "ETCDCTL_KEY"
ETCDCTL_USER = "ETCDCTL_USER"
ETCDCTL_PASSWORD = "ETCDCTL_PASSWORD"

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
    "dashboard_host": ENV_DASHBOARD_HOST,
    "dashboard_port": ENV_DASHBOARD_PORT,
    "dashboard_url": ENV_DASHBOARD_URL,
    "dashboard_token": ENV_DASHBOARD_TOKEN,
    "report_interval": ENV_REPORT_INTERVAL,
    "metrics_port": ENV_METRICS_PORT,
    "cache_dir": ENV_CACHE_DIR,
    "cache_size": ENV_CACHE_SIZE,
    "store_gc_interval": ENV_STORE_GC_INTERVAL,
    "store_grace": ENV_STORE_GRACE,
}
# etcd credentials and TLS files, as etcdctl's flags name them -> (our variable, etcdctl's)
ACCESS_ENV = {
    "cacert": (ENV_CACERT, ETCDCTL_CACERT),
    "cert": (ENV_CERT, ETCDCTL_CERT),
    "key": (ENV_KEY, ETCDCTL_KEY),
    "user": (ENV_USER, ETCDCTL_USER),
    "password": (ENV_PASSWORD, ETCDCTL_PASSWORD),
}
MIN_TTL = 2  # etcd's minimum lease TTL


def default_host_id() -> str:
    """The hostname, reduced to one safe path segment."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname().split(".")[0]).strip("-._")
    return (name or "host")[:63]


def etcd_endpoints(flag: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """``--etcd``/``--endpoints``, else ``OPENRANGE_ETCD``, else ``ETCDCTL_ENDPOINTS``; None if none is set."""
    env = os.environ if env is None else env
    return flag or env.get(ENV_ETCD) or env.get(ETCDCTL_ENDPOINTS) or None


def registry_url(
    flag: str | None, flags: Mapping[str, str | None] | None = None, env: Mapping[str, str] | None = None
) -> str:
    """The registry URL for the endpoints ``etcd_endpoints(flag)`` names (a registry URL or etcdctl's
    endpoints) with the credentials and TLS files named in ``ACCESS_ENV``: each from ``flags``, else
    ``OPENRANGE_*``, else ``ETCDCTL_*``."""
    env = os.environ if env is None else env
    endpoints = (etcd_endpoints(flag, env) or "").strip()
    if not endpoints:
        raise ConfigError(f"no etcd endpoints given: pass --etcd or set {ENV_ETCD} or {ETCDCTL_ENDPOINTS}")
    ours, theirs = _access(flags or {}, env, 0), _access({}, env, 1)
    if endpoints.startswith("memory://"):
        if any(ours.values()):
            raise ConfigError("etcd credentials and TLS files are for etcd, not a memory:// registry")
        return endpoints
    if not any(ours.values()) and not any(theirs.values()):
        return endpoints if "://" in endpoints else f"etcd://{endpoints}"
    from .registry.etcd import Access, with_access  # imports etcd3gw: only when there is access to add

    from_etcdctl = not (flag or env.get(ENV_ETCD))
    return with_access(endpoints, Access(**ours), Access(**theirs), url_is_default=from_etcdctl)


def _access(flags: Mapping[str, str | None], env: Mapping[str, str], tier: int) -> dict[str, str | None]:
    """Credentials and TLS files from ``flags`` or one tier of ``ACCESS_ENV`` (0: ours, 1: etcdctl's)."""
    values = {name: flags.get(name) or env.get(names[tier]) or None for name, names in ACCESS_ENV.items()}
    user = values["user"]
    if user is not None and ":" in user:  # etcdctl's --user name:password
        if values["password"] is not None:
            raise ConfigError("the etcd password is given twice: in user:password and on its own")
        values["user"], _, values["password"] = user.partition(":")
    return values


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
    registry: str = field(default="memory://", repr=False)  # may hold a password
    namespace: str = "default"
    host_id: str = field(default_factory=default_host_id)
    capacity: int = field(default_factory=lambda: os.cpu_count() or 1)
    # The mesh's store (meshstore.py); "": the one the mesh recorded, else DEFAULT_STORE.
    store: str = ""
    ttl: int = 10
    loop_wait: float = 1.0
    retry_timeout: float = 4.0
    labels: Mapping[str, str] = field(default_factory=dict)
    log_level: str = "INFO"
    # Acked finished records older than this (seconds) are deleted by the leader; 0 keeps all.
    retention: float = 7 * 24 * 3600.0
    # Every agent serves HTTP (design/dashboard.md): the leader the dashboard, the others a redirect.
    dashboard: bool = True
    dashboard_host: str = "0.0.0.0"
    dashboard_port: int = DEFAULT_DASHBOARD_PORT  # 0: a free port
    dashboard_url: str = ""  # how others reach it; default http://<hostname or host>:<port>
    dashboard_token: str = field(default="", repr=False)  # needed to cancel from the page; none: read-only
    # The leader's server writes the run report to the store this often (seconds; 0: never), and
    # the leader at a drain (dashboard/report.py: reports/latest.json and .html).
    report_interval: float = 600.0
    # Also serve /metrics on this port on every interface (None: only on loopback, for the
    # dashboard child to proxy).
    metrics_port: int | None = None
    # The host's snapshot cache (store/cache.py): where, and how many bytes of snapshots not in use.
    cache_dir: str = field(default_factory=default_cache_dir)
    cache_size: int = DEFAULT_CACHE_SIZE
    # The leader collects store objects no record needs (ledger/storage_gc.py) this often
    # (seconds; 0: never), those unwritten for store_grace seconds.
    store_gc_interval: float = 3600.0
    store_grace: float = 3600.0

    def __post_init__(self) -> None:
        check_name("namespace", self.namespace)
        check_name("host id", self.host_id)
        if self.capacity < 1:
            raise ConfigError(f"capacity must be at least 1, not {self.capacity}")
        if self.ttl < MIN_TTL:
            raise ConfigError(f"ttl must be at least {MIN_TTL} s (etcd's minimum lease), not {self.ttl}")
        if self.retention < 0:
            raise ConfigError(f"retention must be >= 0 seconds (0 keeps everything), not {self.retention}")
        if self.report_interval < 0:
            raise ConfigError(f"report interval must be >= 0 seconds (0: never), not {self.report_interval}")
        if not 0 <= self.dashboard_port < 65536:
            raise ConfigError(f"dashboard port must be 0-65535 (0: a free port), not {self.dashboard_port}")
        if self.cache_size < 0:
            raise ConfigError(f"cache size must be >= 0 bytes, not {self.cache_size}")
        if self.store_gc_interval < 0 or self.store_grace < 0:
            raise ConfigError("store collection interval and grace must be >= 0 seconds")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics port must be 0-65535, not {self.metrics_port}")
        if self.loop_wait <= 0 or self.retry_timeout <= 0:
            raise ConfigError("loop_wait and retry_timeout must be positive")
        if self.loop_wait + 2 * self.retry_timeout > self.ttl:
            raise ConfigError(
                f"timing rule broken: loop_wait ({self.loop_wait}) + 2 * retry_timeout ({self.retry_timeout}) "
                f"must be <= ttl ({self.ttl})"
            )

    @classmethod
    def load(cls, flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Settings:
        """Defaults, overridden by the environment, overridden by flags that are not None. The
        registry is ``--etcd`` with ``ACCESS_ENV``'s flags folded in (see ``registry_url``)."""
        env = os.environ if env is None else env
        flags = dict(flags or {})
        access = {name: flags.pop(name, None) for name in ACCESS_ENV}  # folded into the registry URL
        values: dict[str, Any] = {}
        for name, var in _ENV.items():
            if env.get(var):
                values[name] = env[var]
        values.update({k: v for k, v in flags.items() if v is not None})
        if etcd_endpoints(flags.get("registry"), env):
            values["registry"] = registry_url(flags.get("registry"), access, env)
        return cls(**_coerce(values))

    def with_timing(self, ttl: int) -> Settings:
        """The same settings with ``ttl`` and timing derived from it by the documented ratio."""
        return replace(self, ttl=ttl, loop_wait=ttl / 8, retry_timeout=ttl * 7 / 16)


_SIZE = re.compile(r"(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>[KMGT]?)(?:i?B)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from ``20G``, ``512M``, ``1.5TiB``, ``1000`` (binary units: a cache is disk)."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise ConfigError(f"bad size {text!r}: expected bytes, or a number with K, M, G or T (e.g. 20G)")
    return int(float(m["n"]) * 1024 ** "_KMGT".index(m["unit"].upper() or "_"))


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    types = {f.name: f.type for f in fields(Settings)}
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name not in types:
            raise ConfigError(f"unknown setting {name!r}")
        try:
            if name == "labels" and isinstance(value, str):
                value = parse_labels(value)
            elif name == "cache_size" and isinstance(value, str):
                value = parse_size(value)
            elif types[name] in ("int", "int | None"):
                value = int(value)
            elif types[name] == "float":
                value = float(value)
        except ValueError as exc:
            raise ConfigError(f"bad value for {name}: {value!r}") from exc
        out[name] = value
    return out
