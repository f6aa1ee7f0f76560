"""Parsing ``etcd://`` registry URLs: endpoints, credentials, TLS files, timeout."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote

from ...errors import ConfigError

SCHEMES = ("etcd", "etcd+http", "etcd+https")
DEFAULT_PORT = 2379
DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class _Target:
    """A parsed registry URL."""

    url: str  # without credentials
    protocol: str
    endpoints: tuple[tuple[str, int], ...]
    user: str | None
    timeout: float
    cacert: str | None
    cert: str | None
    key: str | None
    password: str | None = field(default=None, repr=False)


def _parse_host(item: str, safe: str) -> tuple[str, int]:
    host, port = item, ""
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigError(f"bad host {item!r} in etcd URL {safe}")
        port = rest[1:]
    elif item.count(":") == 1:
        host, _, port = item.partition(":")
    elif ":" in item:
        raise ConfigError(f"bad host {item!r} in etcd URL {safe}: write IPv6 addresses as [addr]:port")
    if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise ConfigError(f"bad host {item!r} in etcd URL {safe}")
    return host, int(port) if port else DEFAULT_PORT


def parse_url(url: str) -> _Target:
    """Split an etcd registry URL; raise ``ConfigError`` with a one-line reason."""
    scheme, sep, rest = url.partition("://")
    # Credentials end at the last "@" anywhere: an unencoded "/" or "?" in a password must not
    # push part of it into what follows, which error messages show.
    userinfo, at, rest = rest.rpartition("@")
    rest, _, fragment = rest.partition("#")
    hosts, _, query = rest.partition("?")
    hosts, _, path = hosts.partition("/")
    safe = f"{scheme}://{hosts}" + (f"?{query}" if query else "")
    if not sep or scheme not in SCHEMES:
        raise ConfigError(f"not an etcd URL: {safe!r} (expected {', '.join(s + '://' for s in SCHEMES)})")
    if path or fragment:
        raise ConfigError(f"etcd URL {safe} must not have a path or fragment")
    if not hosts:
        raise ConfigError(f"etcd URL {safe} names no host")
    endpoints = tuple(_parse_host(item.strip(), safe) for item in hosts.split(","))
    user = password = None
    if at:
        user, colon, password = (unquote(part) for part in userinfo.partition(":"))
        if not user or not colon:
            raise ConfigError(f"etcd URL {safe}: credentials must be user:password@")
    options = _parse_options(query, safe)
    protocol = "https" if scheme == "etcd+https" else "http"
    if protocol == "http" and options.keys() & {"cacert", "cert", "key"}:
        raise ConfigError(f"etcd URL {safe}: cacert/cert/key need the etcd+https:// scheme")
    if ("cert" in options) != ("key" in options):
        raise ConfigError(f"etcd URL {safe}: give cert and key together")
    try:
        timeout = float(options.get("timeout", DEFAULT_TIMEOUT))
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        raise ConfigError(f"etcd URL {safe}: timeout must be a positive number of seconds")
    return _Target(
        url=safe,
        protocol=protocol,
        endpoints=endpoints,
        user=user,
        password=password,
        timeout=timeout,
        cacert=options.get("cacert"),
        cert=options.get("cert"),
        key=options.get("key"),
    )


def _parse_options(query: str, safe: str) -> dict[str, str]:
    known = ("cacert", "cert", "key", "timeout")
    try:
        parsed = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ConfigError(f"etcd URL {safe}: malformed query") from None
    for name, values in parsed.items():
        if name not in known:
            raise ConfigError(f"etcd URL {safe}: unknown option {name!r} (known: {', '.join(known)})")
        if len(values) != 1 or not values[0]:
            raise ConfigError(f"etcd URL {safe}: option {name!r} needs exactly one value")
    return {name: values[0] for name, values in parsed.items()}
