"""What names an etcd: registry URLs (``etcd[+https]://user:pass@h1,h2?cacert=...``), etcdctl's
endpoint lists (``http://h1:2379,http://h2:2379``, ``https://h``, bare ``h1:2379,[::1]:2379``), and
writing either back as a registry URL that also carries credentials and TLS files given apart
(etcdctl's ``--user``, ``--cacert``, ``--cert``, ``--key``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, unquote, urlencode

from ...errors import ConfigError

SCHEMES = ("etcd", "etcd+http", "etcd+https")
ENDPOINT_SCHEMES = ("http", "https")
DEFAULT_PORT = 2379
DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Access:
    """Credentials and TLS files, given apart from the endpoints."""

    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class _Target:
    """A parsed registry URL or endpoint list."""

    url: str  # without credentials
    protocol: str
    endpoints: tuple[tuple[str, int], ...]
    user: str | None
    timeout: float
    cacert: str | None
    cert: str | None
    key: str | None
    password: str | None = field(default=None, repr=False)
    # Whether the text named the protocol: bare ``h:2379`` takes TLS when TLS files come with it, as etcdctl does.
    stated: bool = True


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
    if not host or item.endswith(":") or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise ConfigError(f"bad host {item!r} in etcd URL {safe}")
    return host, int(port) if port else DEFAULT_PORT


def parse_url(url: str) -> _Target:
    """Split a registry URL or an endpoint list; raise ``ConfigError`` with a one-line reason."""
    # The first item decides: a password may hold a "," (etcd://u:p,w@h), an endpoint list never a "@".
    scheme, sep, _ = url.split(",", 1)[0].partition("://")
    if sep and scheme.strip() in SCHEMES:
        return _parse_registry_url(url.strip())
    return _parse_endpoints(url)


def _parse_endpoints(text: str) -> _Target:
    items = [item.strip() for item in text.split(",")]
    safe = ",".join(_without_credentials(item) for item in items)
    protocols: set[str] = set()
    endpoints = []
    for item in items:
        scheme, sep, rest = item.rpartition("://")
        if not item or (sep and not rest.strip("/")):
            raise ConfigError(f"etcd endpoints {safe!r}: an empty endpoint")
        if sep and scheme not in ENDPOINT_SCHEMES:
            known = ", ".join(s + "://" for s in (*ENDPOINT_SCHEMES, *SCHEMES))
            raise ConfigError(f"etcd endpoint {_without_credentials(item)!r}: unknown scheme (expected {known})")
        if "@" in rest:
            raise ConfigError(f"etcd endpoints {safe!r}: give credentials with --user, not in an endpoint")
        rest = rest.removesuffix("/")  # etcd itself advertises http://h:2379/ at times
        if any(c in rest for c in "/?#"):
            raise ConfigError(f"etcd endpoint {item!r}: host:port only, no path or query")
        protocols.update([scheme] if sep else [])
        endpoints.append(_parse_host(rest, safe))
    if len(protocols) > 1:
        raise ConfigError(f"etcd endpoints {safe!r} mix http:// and https://: etcd serves one or the other per port")
    protocol = next(iter(protocols), "http")
    url = ",".join(items)
    return _Target(url, protocol, tuple(endpoints), None, DEFAULT_TIMEOUT, None, None, None, stated=bool(protocols))


def _without_credentials(item: str) -> str:
    scheme, sep, rest = item.rpartition("://")
    return scheme + sep + rest.rpartition("@")[2]


def _parse_registry_url(url: str) -> _Target:
    scheme, _, rest = url.partition("://")
    # Credentials end at the last "@" anywhere: an unencoded "/" or "?" in a password must not
    # push part of it into what follows, which error messages show.
    userinfo, at, rest = rest.rpartition("@")
    rest, _, fragment = rest.partition("#")
    hosts, _, query = rest.partition("?")
    hosts, _, path = hosts.partition("/")
    safe = f"{scheme}://{hosts}" + (f"?{query}" if query else "")
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


# -- credentials and TLS files given apart ---------------------------------------------------------


def with_access(url: str, access: Access, defaults: Access = Access(), *, url_is_default: bool = False) -> str:
    """``url`` (anything ``parse_url`` takes) as a registry URL that also carries ``access``, and
    ``defaults`` (etcdctl's environment) where neither gives a value.

    A value ``url`` carries and ``access`` contradicts is an error; one that ``defaults``
    contradict is kept. TLS files make bare endpoints https; with explicitly plain endpoints they
    are an error, or dropped when they are only ``defaults`` (etcdctl drops them too). The
    defaults' TLS files make bare endpoints https only when ``url_is_default`` too: they describe
    etcdctl's etcd, not a plain one named apart (``openrange-mesh up``'s local etcd)."""
    target = parse_url(url)
    merged: dict[str, str | None] = {}
    for name in ("cacert", "cert", "key", "user", "password"):
        own, given = getattr(target, name), getattr(access, name)
        if own is not None and given is not None and given != own:
            shown = name if name == "password" else f"{name} {given!r}"
            raise ConfigError(f"etcd {shown} contradicts the URL {target.url}")
        merged[name] = own or given
    files = ("cacert", "cert", "key")
    if any(merged[name] for name in files) and target.protocol == "http" and target.stated:
        raise ConfigError(f"etcd {target.url} is plain http: TLS files need https:// endpoints")
    made_https = any(merged[name] for name in files)
    if target.protocol == "https" or (not target.stated and (url_is_default or made_https)):
        for name in files:
            merged[name] = merged[name] or getattr(defaults, name)
    # The defaults' password goes with the defaults' user (ETCDCTL_USER=name:password), or with any
    # user when it comes alone (ETCDCTL_PASSWORD).
    if merged["password"] is None and defaults.user in (None, merged["user"] or defaults.user):
        merged["password"] = defaults.password
    merged["user"] = merged["user"] or defaults.user
    if merged["user"] is not None and merged["password"] is None:
        raise ConfigError(f"etcd user {merged['user']!r} has no password (give user:password, or the password apart)")
    if bool(merged["cert"]) != bool(merged["key"]):
        raise ConfigError("etcd TLS: give the client certificate and its key together")
    protocol = "https" if any(merged[name] for name in files) else target.protocol
    return _unparse(target, protocol, Access(**merged))


def _unparse(target: _Target, protocol: str, access: Access) -> str:
    userinfo = ""
    if access.user is not None:
        userinfo = f"{quote(access.user, safe='')}:{quote(access.password or '', safe='')}@"
    hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in target.endpoints)
    options = {name: value for name in ("cacert", "cert", "key") if (value := getattr(access, name))}
    if target.timeout != DEFAULT_TIMEOUT:
        options["timeout"] = f"{target.timeout:g}"
    query = f"?{urlencode(options)}" if options else ""
    return f"etcd+{protocol}://{userinfo}{hosts}{query}"
