"""The registry over etcd's v3 JSON gateway (etcd >= 3.4), through etcd3gw.

How it copes with failure:

* One ``Etcd3Client`` per endpoint. Calls go to the current endpoint; a connection failure, a timeout
  or an etcd "unavailable" answer moves to the next one. Every call runs under one tenacity policy that
  retries only those failures and never runs past ``retry_timeout`` (each attempt's timeout is clamped
  to what is left), then raises ``Unavailable``.
* A timed-out *write* may have been applied, so a write is retried only when the request certainly never
  reached etcd (connection refused, connect timeout); otherwise ``Unavailable`` is raised at once rather
  than risk applying it twice (a retried claim would read as "lost" though it was won).
* A watch is a streaming POST to ``/v3/watch`` read by a daemon thread (etcd3gw's Watcher leaves executor
  threads behind and drops cancel responses). It resumes from the last seen revision + 1 after any
  break. A second thread probes the endpoint while the stream is quiet and breaks the stream when the
  probe fails: a hung etcd (SIGSTOP, a stalled disk) looks exactly like a quiet one, and reconnecting
  on every quiet spell would make etcd replay all history since the last event each time.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from json import dumps as _dumps
from typing import Any, Literal
from urllib.parse import parse_qs, unquote

import certifi
import requests
import urllib3
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import ConnectionFailedError, ConnectionTimeoutError, Etcd3Exception
from requests.structures import CaseInsensitiveDict
from tenacity import RetryCallState, Retrying, retry_if_exception

from ..errors import Compacted, ConfigError, LeaseLost, RegistryError, TooLarge, Unavailable
from .base import (
    Compare,
    Delete,
    Event,
    Get,
    KeyValue,
    Op,
    Put,
    RangeResult,
    Txn,
    TxnResult,
    WatchBatch,
    WatchIterMixin,
    prefix_end,
)

log = logging.getLogger(__name__)

SCHEMES = ("etcd", "etcd+http", "etcd+https")
DEFAULT_PORT = 2379
DEFAULT_TIMEOUT = 5.0
MAX_REQUEST_BYTES = 1572864  # etcd's default --max-request-bytes (1.5 MiB)
_MIN_ATTEMPT = 0.05  # seconds: no attempt is started with less time than this left
_STREAM_BACKSTOP = 300.0  # read timeout on an established watch stream, should the prober ever stall
# etcd answers that mean "this member cannot serve now"; the first group also means "nothing was applied".
_NOT_APPLIED = ("no leader", "not capable", "too many requests", "connection refused")
_UNAVAILABLE = (*_NOT_APPLIED, "request timed out", "leader changed", "transport is closing", "stopped")
_COMPARE_FIELDS = {"value": "value", "version": "version", "create": "create_revision", "mod": "mod_revision"}
_COMPARE_OPS = {"==": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}


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


# -- JSON gateway encoding: bytes are base64, int64 fields arrive as strings and are omitted when zero --


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _int(obj: Mapping[str, Any], name: str) -> int:
    return int(obj.get(name, 0))


def _kv(obj: Mapping[str, Any]) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(obj.get("key", "")),
        value=base64.b64decode(obj.get("value", "")),
        create_revision=_int(obj, "create_revision"),
        mod_revision=_int(obj, "mod_revision"),
        version=_int(obj, "version"),
        lease=_int(obj, "lease"),
    )


def _event(obj: Mapping[str, Any]) -> Event:
    prev = obj.get("prev_kv")
    kind: Literal["put", "delete"] = "delete" if obj.get("type") == "DELETE" else "put"
    return Event(type=kind, kv=_kv(obj.get("kv", {})), prev=_kv(prev) if prev else None)


def _revision(obj: Mapping[str, Any]) -> int:
    return _int(obj.get("header", {}), "revision")


def _range_request(key: bytes, prefix: bool) -> dict[str, Any]:
    if not prefix:
        return {"key": _b64(key)}
    # etcd rejects an empty key; "\0" up to range_end "\0" means every key.
    return {"key": _b64(key or b"\0"), "range_end": _b64(prefix_end(key))}


def _compare(cmp: Compare) -> dict[str, Any]:
    if cmp.target not in (*_COMPARE_FIELDS, "lease") or cmp.op not in _COMPARE_OPS:
        raise ValueError(f"bad compare {cmp!r}")
    if (cmp.target == "value") != isinstance(cmp.operand, bytes):
        raise TypeError(f"compare on {cmp.target} needs a {'bytes' if cmp.target == 'value' else 'int'} operand")
    name = _COMPARE_FIELDS.get(cmp.target, "lease")
    operand = _b64(cmp.operand) if isinstance(cmp.operand, bytes) else cmp.operand
    return {"key": _b64(cmp.key), "target": cmp.target.upper(), "result": _COMPARE_OPS[cmp.op], name: operand}


def _request_op(op: Op) -> dict[str, Any]:
    if isinstance(op, Put):
        return {"request_put": {"key": _b64(op.key), "value": _b64(op.value), "lease": op.lease}}
    if isinstance(op, Delete):
        return {"request_delete_range": _range_request(op.key, op.prefix)}
    if isinstance(op, Txn):
        return {"request_txn": _txn_request(op.compares, op.success, op.failure)}
    return {"request_range": _range_request(op.key, op.prefix)}


def _txn_request(compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> dict[str, Any]:
    return {
        "compare": [_compare(c) for c in compares],
        "success": [_request_op(op) for op in success],
        "failure": [_request_op(op) for op in failure],
    }


def _txn_result(answer: Mapping[str, Any], succeeded: bool, branch: Sequence[Op], revision: int) -> TxnResult:
    """A txn's result from etcd's answer (a nested txn's answer carries no header)."""
    answers = answer.get("responses", [])
    responses: list[list[KeyValue]] = []
    nested: list[TxnResult] = []
    for i, op in enumerate(branch):
        found = answers[i] if i < len(answers) else {}
        if isinstance(op, Get):
            responses.append([_kv(kv) for kv in found.get("response_range", {}).get("kvs", [])])
            continue
        responses.append([])
        if isinstance(op, Txn):
            inner = found.get("response_txn", {})
            held = bool(inner.get("succeeded", False))
            nested.append(_txn_result(inner, held, op.success if held else op.failure, revision))
    return TxnResult(succeeded=succeeded, revision=revision, responses=responses, nested=nested)


def _leaves(ops: Sequence[Op]) -> list[Put | Delete | Get]:
    """The plain ops of a txn, nested txns' (both branches) included."""
    out: list[Put | Delete | Get] = []
    for op in ops:
        out += _leaves([*op.success, *op.failure]) if isinstance(op, Txn) else [op]
    return out


def _op_size(op: Op) -> int:
    return len(op.key) + len(op.value) if isinstance(op, Put) else len(op.key) if not isinstance(op, Txn) else 0


# -- failures ----------------------------------------------------------------------------------------


class _Unreachable(Unavailable):
    """An attempt at one endpoint failed in a retryable way; ``maybe_applied`` if etcd may have
    executed the request anyway (so only reads and other idempotent calls may retry)."""

    def __init__(self, endpoints: str, where: str, cause: str, *, maybe_applied: bool) -> None:
        super().__init__(endpoints, cause if endpoints == where else f"{where}: {cause}")
        self.where = where
        self.cause = cause
        self.maybe_applied = maybe_applied


class _InvalidToken(RegistryError):
    """The auth token expired: authenticate again and repeat once."""


class _GatewayError(Exception):
    """An error object inside a 200 answer (streams): ``message`` as etcd wrote it."""


@dataclass(frozen=True, slots=True)
class _Ctx:
    """What a request was, for building the error it may turn into."""

    what: str
    idempotent: bool = True
    lease: int = 0
    revision: int = 0
    size: int = 0


def _error_message(exc: BaseException) -> str:
    text = exc.detail_text if isinstance(exc, Etcd3Exception) else str(exc)
    try:
        body = json.loads(text or "")
    except ValueError:
        return (text or repr(exc)).strip()
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):  # stream errors: {"error": {"grpc_code": .., "message": ..}}
            return str(error.get("message", error))
        return str(body.get("message") or error or body)
    return str(body)


def _transport_error(exc: BaseException) -> requests.RequestException | None:
    """The requests exception behind ``exc`` (etcd3gw re-raises them as its own, without ``from``)."""
    for candidate in (exc, exc.__cause__, exc.__context__):
        if isinstance(candidate, requests.RequestException) and not isinstance(
            candidate, requests.exceptions.JSONDecodeError
        ):
            return candidate
    return None


def _cause(error: requests.RequestException) -> object:
    """What urllib3 reported under requests' wrapping (``MaxRetryError.reason``)."""
    inner = error.args[0] if error.args else None
    return getattr(inner, "reason", inner)


def _never_sent(error: requests.RequestException) -> bool:
    # Refused, unresolvable or timed out while connecting: etcd never saw the request.
    return isinstance(error, requests.exceptions.ConnectTimeout) or isinstance(
        _cause(error), urllib3.exceptions.ConnectTimeoutError
    )


def _short(error: requests.RequestException) -> str:
    if isinstance(error, requests.exceptions.Timeout):
        return "timed out"
    if _never_sent(error):
        return "connection refused"
    return "connection lost"


# -- the registry ------------------------------------------------------------------------------------


_PLAIN_POST = {"json", "headers", "timeout"}  # the keyword arguments etcd3gw's post passes


class _Session(requests.Session):
    """A session that clamps each request's timeout to the calling thread's deadline, so that an
    attempt made through etcd3gw (whose clients have one fixed timeout) never outlives the retry
    budget, and that verifies TLS with the URL's ``cacert`` even when REQUESTS_CA_BUNDLE is set
    (requests lets that variable override ``Session.verify``)."""

    def __init__(self, local: threading.local) -> None:
        super().__init__()
        self._local = local
        self._pool: urllib3.PoolManager | None = None
        # No proxies, netrc or CA bundle from the environment: etcd is reached directly, and
        # requests re-reads the whole environment on every call (~0.2 ms a request here).
        self.trust_env = False

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        deadline: float | None = getattr(self._local, "deadline", None)
        if deadline is not None and not kwargs.get("stream"):
            left = max(deadline - time.monotonic(), _MIN_ATTEMPT)
            timeout = kwargs.get("timeout")
            kwargs["timeout"] = left if not isinstance(timeout, int | float) else min(timeout, left)
        if kwargs.get("data") is None:
            kwargs.pop("data", None)  # Session.post passes data=None
        if not args and isinstance(method, str) and isinstance(url, str) and set(kwargs) <= _PLAIN_POST:
            return self._plain(method, url, **kwargs)
        kwargs.setdefault("verify", self.verify)
        return super().request(method, url, *args, **kwargs)

    def _plain(
        self, method: str, url: str, json: Any = None, headers: Mapping[str, str] | None = None, timeout: Any = None
    ) -> requests.Response:
        """A request/response round trip (every etcd3gw call but a watch) straight through
        urllib3, the transport requests itself uses: requests' own per-call work (preparing,
        hooks, cookies, adapters) cost ~0.35 ms of CPU a call here, most of an agent's CPU per
        short episode. Failures are raised as the requests exceptions requests would raise."""
        seconds = timeout if isinstance(timeout, int | float) else None
        try:
            answer = self._pool_manager().request(
                method,
                url,
                body=_dumps(json).encode() if json is not None else None,
                headers={"Content-Type": "application/json", **(headers or {})},
                timeout=urllib3.Timeout(connect=seconds, read=seconds),
                retries=False,
            )
        except urllib3.exceptions.NewConnectionError as exc:  # refused, unresolvable: never sent
            raise requests.ConnectionError(exc) from exc
        except urllib3.exceptions.ConnectTimeoutError as exc:
            raise requests.ConnectTimeout(exc) from exc
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise requests.ReadTimeout(exc) from exc
        except urllib3.exceptions.SSLError as exc:
            raise requests.exceptions.SSLError(exc) from exc
        except urllib3.exceptions.HTTPError as exc:  # reset, closed mid-answer ...
            raise requests.ConnectionError(exc) from exc
        response = requests.Response()
        response.status_code = answer.status
        response.reason = answer.reason or ""
        response.headers = CaseInsensitiveDict(answer.headers)
        response._content = answer.data
        response.encoding = "utf-8"
        response.url = url
        return response

    def _pool_manager(self) -> urllib3.PoolManager:
        if self._pool is None:
            verify = self.verify
            tls: dict[str, Any] = {}
            if verify is not False:
                tls = {"cert_reqs": "CERT_REQUIRED", "ca_certs": verify if isinstance(verify, str) else certifi.where()}
            if isinstance(self.cert, tuple):
                tls.update(cert_file=self.cert[0], key_file=self.cert[1])
            self._pool = urllib3.PoolManager(num_pools=4, maxsize=4, **tls)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.clear()
        super().close()


class EtcdRegistry:
    def __init__(self, url: str, *, retry_timeout: float = 10.0) -> None:
        self._target = parse_url(url)
        self.url = self._target.url
        self.endpoints = ",".join(self._where(i) for i in range(len(self._target.endpoints)))
        self.retry_timeout = retry_timeout
        self.request_timeout = max(min(retry_timeout / 2, self._target.timeout), _MIN_ATTEMPT)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._clients: dict[int, Etcd3Client] = {}
        self._current = 0
        self._token: str | None = None
        self._in_outage = False
        self._watches: set[EtcdWatch] = set()
        self._closed = False

    # -- endpoints, auth and the one retry policy --

    def _endpoint(self) -> tuple[int, Etcd3Client]:
        with self._lock:
            if self._closed:
                raise RegistryError(f"etcd registry {self.url} is closed")
            index = self._current
            client = self._clients.get(index)
            if client is None:
                host, port = self._target.endpoints[index]
                session = _Session(self._local)
                session.verify = self._target.cacert or True
                if self._target.cert and self._target.key:
                    session.cert = (self._target.cert, self._target.key)
                client = Etcd3Client(
                    host=host,
                    port=port,
                    protocol=self._target.protocol,
                    timeout=self.request_timeout,
                    api_path="/v3/",
                    session=session,
                )
                self._clients[index] = client
            return index, client

    def _where(self, index: int) -> str:
        host, port = self._target.endpoints[index]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _fail_over(self, index: int, reason: str) -> None:
        with self._lock:
            if self._current != index:
                return  # another thread already moved on
            self._current = (index + 1) % len(self._target.endpoints)
            first, self._in_outage = not self._in_outage, True
        level = logging.WARNING if first else logging.DEBUG
        nxt = "retrying" if self._current == index else f"trying {self._where(self._current)}"
        log.log(level, "etcd %s: %s; %s", self._where(index), reason, nxt)

    def _recovered(self, index: int) -> None:
        if self._in_outage:
            self._in_outage = False
            log.info("etcd answers again at %s", self._where(index))

    def _headers(self, client: Etcd3Client, *, renew: bool = False) -> dict[str, str]:
        if self._target.user is None:
            return {}
        with self._lock:
            token = None if renew else self._token
        if token is None:
            payload = {"name": self._target.user, "password": self._target.password}
            try:
                token = str(client.post(client.get_url("/auth/authenticate"), json=payload)["token"])
            except Etcd3Exception as exc:
                if "authentication is not enabled" not in str(exc.detail_text):
                    raise
                token = ""  # credentials given, auth off: send none until etcd asks for them
            with self._lock:
                self._token = token
        return {"Authorization": token} if token else {}

    def _attempt(self, path: str, payload: Mapping[str, Any], ctx: _Ctx) -> dict[str, Any]:
        index, client = self._endpoint()
        renew = False
        while True:
            try:
                result: dict[str, Any] = client.post(
                    client.get_url(path), json=payload, headers=self._headers(client, renew=renew)
                )
                if isinstance(result.get("error"), dict):  # a streaming endpoint's error object
                    raise _GatewayError(json.dumps(result))
                self._recovered(index)
                return result
            except (Etcd3Exception, requests.RequestException, _GatewayError) as exc:
                error = self._translate(exc, ctx, index)
                if isinstance(error, _InvalidToken) and not renew:
                    renew = True
                    continue
                if isinstance(error, _Unreachable):
                    self._fail_over(index, error.cause)
                raise error from exc

    def _call(self, path: str, payload: Mapping[str, Any], ctx: _Ctx) -> dict[str, Any]:
        deadline = time.monotonic() + self.retry_timeout
        count = len(self._target.endpoints)

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, _Unreachable) and (ctx.idempotent or not exc.maybe_applied)

        def wait(state: RetryCallState) -> float:
            # Try every endpoint once at once; then back off, without sleeping past the deadline.
            if state.attempt_number % count:
                return 0.0
            backoff = min(0.05 * 2.0 ** (state.attempt_number // count - 1), 1.0)
            return max(min(backoff, deadline - time.monotonic() - _MIN_ATTEMPT), 0.0)

        policy = Retrying(
            retry=retry_if_exception(retryable),
            stop=lambda state: time.monotonic() >= deadline - _MIN_ATTEMPT,
            wait=wait,
            reraise=True,
        )
        self._local.deadline = deadline
        try:
            result: dict[str, Any] = policy(self._attempt, path, payload, ctx)
            return result
        finally:
            self._local.deadline = None

    def _translate(self, exc: BaseException, ctx: _Ctx, index: int) -> RegistryError:
        """The one place where etcd3gw, requests and gateway errors become ``errors`` classes."""
        where = self._where(index)
        transport = _transport_error(exc)
        if isinstance(transport, requests.exceptions.SSLError):  # a certificate problem: not retryable
            return RegistryError(f"TLS with etcd {where} failed: {_cause(transport)}")
        if transport is not None:
            applied = not _never_sent(transport)
            return _Unreachable(self.endpoints, where, _short(transport), maybe_applied=applied)
        message = _error_message(exc)
        lowered = message.lower()
        if "request is too large" in lowered:
            return TooLarge(ctx.what, ctx.size, MAX_REQUEST_BYTES)
        if "larger than max" in lowered:  # gRPC's own limit: "... larger than max (3072010 vs. 2097152)"
            numbers = [int(n) for n in re.findall(r"\d+", message)]
            size, limit = numbers[-2:] if len(numbers) >= 2 else (ctx.size, MAX_REQUEST_BYTES)
            return TooLarge(ctx.what, size, limit)
        if "requested lease not found" in lowered:
            return LeaseLost(ctx.lease)
        if "required revision has been compacted" in lowered:
            return Compacted(ctx.revision, self._oldest_revision())
        user = self._target.user
        if user is not None and ("invalid auth token" in lowered or "user name is empty" in lowered):
            return _InvalidToken(message)  # expired, or auth was enabled after we last authenticated
        if user is None and ("user name is empty" in lowered or "permission denied" in lowered):
            return RegistryError(f"etcd at {self.endpoints} requires authentication: add user:password@ to the URL")
        if "authentication failed" in lowered:
            return RegistryError(f"etcd authentication failed for user {user!r}: wrong user name or password")
        if "permission denied" in lowered:
            return RegistryError(f"etcd user {user!r} may not {ctx.what}: permission denied")
        if isinstance(exc, ConnectionFailedError | ConnectionTimeoutError) or any(s in lowered for s in _UNAVAILABLE):
            applied = not any(s in lowered for s in _NOT_APPLIED)
            return _Unreachable(self.endpoints, where, message, maybe_applied=applied)
        return RegistryError(f"etcd refused {ctx.what}: {message}")

    def _oldest_revision(self) -> int:
        """The compaction revision, learnt from a watch at revision 1 (etcd reports it nowhere else)."""
        try:
            _, client = self._endpoint()
            request = {"create_request": {"key": _b64(b"\0"), "start_revision": 1}}
            with client.session.post(
                client.get_url("/watch"),
                json=request,
                headers=self._headers(client),
                stream=True,
                timeout=self.request_timeout,
            ) as response:
                for line in response.iter_lines():  # "created", then "canceled" with the revision
                    result = json.loads(line).get("result", {}) if line.strip() else {}
                    if result.get("canceled") or "compact_revision" in result:
                        return _int(result, "compact_revision")
        except Exception:  # best effort: the caller only needs the fact that it was compacted
            log.debug("could not learn etcd's compaction revision", exc_info=True)
        return 0

    # -- the Registry protocol --

    def grant(self, ttl: int) -> int:
        # Retried even when an attempt may have been applied: the orphan lease just expires.
        result = self._call("/lease/grant", {"TTL": ttl, "ID": 0}, _Ctx("grant a lease"))
        if result.get("error"):
            raise RegistryError(f"etcd refused to grant a lease: {result['error']}")
        return _int(result, "ID")

    def refresh(self, lease: int) -> int:
        result = self._call("/lease/keepalive", {"ID": lease}, _Ctx("refresh a lease", lease=lease))
        ttl = _int(result.get("result", result), "TTL")
        if ttl <= 0:  # etcd omits the TTL of an expired lease
            raise LeaseLost(lease)
        return ttl

    def time_to_live(self, lease: int) -> tuple[int, int] | None:
        try:
            result = self._call("/kv/lease/timetolive", {"ID": lease}, _Ctx("read a lease", lease=lease))
        except LeaseLost:
            return None
        left = _int(result, "TTL")
        return (left, _int(result, "grantedTTL")) if left >= 0 else None  # etcd: -1 once expired

    def revoke(self, lease: int) -> None:
        with contextlib.suppress(LeaseLost):  # already gone is as good as revoked
            self._call("/kv/lease/revoke", {"ID": lease}, _Ctx("revoke a lease", lease=lease))

    def get(self, key: bytes) -> tuple[KeyValue | None, int]:
        result = self._call("/kv/range", {"key": _b64(key)}, _Ctx("read a key"))
        kvs = result.get("kvs", [])
        return (_kv(kvs[0]) if kvs else None), _revision(result)

    def range(
        self,
        prefix: bytes,
        *,
        start: bytes | None = None,
        revision: int | None = None,
        limit: int = 0,
    ) -> RangeResult:
        payload = _range_request(prefix, True)
        if start is not None and start > prefix:  # a start before the prefix must not widen the range
            payload["key"] = _b64(start)
        if revision:
            payload["revision"] = revision
        if limit:
            payload["limit"] = limit
        result = self._call("/kv/range", payload, _Ctx("read a range", revision=revision or 0))
        kvs = [_kv(item) for item in result.get("kvs", [])]
        # At an explicit revision the header still carries the current one.
        return RangeResult(kvs=kvs, revision=revision or _revision(result), more=bool(result.get("more", False)))

    def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        payload = _txn_request(compares, success, failure)
        ops = _leaves([*success, *failure])
        ctx = _Ctx(
            "run a txn",
            idempotent=all(isinstance(op, Get) for op in ops),
            lease=next((op.lease for op in ops if isinstance(op, Put) and op.lease), 0),
            size=sum(_op_size(op) for op in ops),
        )
        result = self._call("/kv/txn", payload, ctx)
        succeeded = bool(result.get("succeeded", False))
        return _txn_result(result, succeeded, success if succeeded else failure, _revision(result))

    def watch(self, prefix: bytes, start_revision: int, *, prev_kv: bool = False) -> EtcdWatch:
        watch = EtcdWatch(self, prefix, start_revision, prev_kv=prev_kv)
        with self._lock:
            if self._closed:
                raise RegistryError(f"etcd registry {self.url} is closed")
            self._watches.add(watch)
        watch.start()
        return watch

    def close(self) -> None:
        with self._lock:
            self._closed = True
            watches, self._watches = list(self._watches), set()
            clients, self._clients = list(self._clients.values()), {}
        for watch in watches:
            watch.cancel()
        for client in clients:
            client.session.close()

    def _forget(self, watch: EtcdWatch) -> None:
        with self._lock:
            self._watches.discard(watch)

    def __repr__(self) -> str:
        return f"EtcdRegistry({self.url!r})"


class EtcdWatch(WatchIterMixin):
    def __init__(self, registry: EtcdRegistry, prefix: bytes, start_revision: int, *, prev_kv: bool) -> None:
        self._registry = registry
        self._prefix = prefix
        self._create = {**_range_request(prefix, True), "prev_kv": prev_kv, "progress_notify": True}
        self._seen = max(start_revision - 1, 0)  # every event up to here has been queued
        self._from_now = start_revision <= 0
        self._reported = self._seen  # the revision the consumer has been handed
        self._queue: deque[tuple[list[Event], int] | RegistryError] = deque()
        self._terminal: RegistryError | None = None
        self._cond = threading.Condition()
        self._cancelled = threading.Event()
        self._response: requests.Response | None = None
        self._index = 0
        self._renew = False  # authenticate afresh before the next connect
        self._outage_reported = False
        self._contact = time.monotonic()  # the last byte on the stream, or the last good probe
        self._reader = threading.Thread(target=self._read_loop, name=f"etcd-watch {prefix!r}", daemon=True)
        self._prober = threading.Thread(target=self._probe_loop, name=f"etcd-probe {prefix!r}", daemon=True)

    def start(self) -> None:
        self._reader.start()
        self._prober.start()

    # -- the consumer side --

    def next(self, timeout: float) -> WatchBatch:
        with self._cond:
            self._cond.wait_for(lambda: bool(self._queue) or self._cancelled.is_set(), timeout)
            events: list[Event] = []
            while self._queue:
                item = self._queue[0]
                if isinstance(item, RegistryError):
                    if events:
                        break  # hand over the events first, the error on the next call
                    if item is not self._terminal:
                        self._queue.popleft()
                    raise item
                self._queue.popleft()
                events.extend(item[0])
                self._reported = item[1]
            return WatchBatch(events=events, revision=self._reported)

    def cancel(self) -> None:
        if self._cancelled.is_set():
            return
        self._cancelled.set()
        with self._cond:
            self._cond.notify_all()
        self._break_stream()
        self._registry._forget(self)
        for thread in (self._reader, self._prober):
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=1.0)

    def _put(self, item: tuple[list[Event], int] | RegistryError) -> None:
        with self._cond:
            self._queue.append(item)
            self._cond.notify_all()

    def _break_stream(self) -> None:
        """Unblock the reader: shut the socket down under it (closing alone does not wake a recv)."""
        response = self._response
        if response is None:
            return
        try:
            response.raw.shutdown()
        except Exception:  # already closed or released: nothing to unblock
            log.debug("watch stream already closed", exc_info=True)

    # -- the reader thread --

    def _read_loop(self) -> None:
        delay = 0.05
        while not self._cancelled.is_set():
            try:
                self._stream()
                delay = 0.05  # the server ended the stream (a restart?): reconnect at once
            except Exception as exc:
                if self._cancelled.is_set():
                    return
                index = self._index  # _stream() picked the endpoint
                error = (
                    self._registry._translate(exc, _Ctx("watch"), index) if not isinstance(exc, RegistryError) else exc
                )
                if isinstance(error, _InvalidToken) and not self._renew:
                    self._renew = True
                    continue
                if not isinstance(error, _Unreachable):
                    self._terminal = error
                    self._put(error)
                    return
                self._unreachable(index, error)
                self._cancelled.wait(delay)
                delay = min(delay * 2, 1.0)

    def _unreachable(self, index: int, error: _Unreachable) -> None:
        registry = self._registry
        registry._fail_over(index, error.cause)
        if not self._outage_reported and time.monotonic() - self._contact >= registry.retry_timeout:
            self._outage_reported = True
            self._put(Unavailable(registry.endpoints, error.reason))

    def _stream(self) -> None:
        registry = self._registry
        self._index, client = registry._endpoint()
        request = dict(self._create)
        if not self._from_now:
            request["start_revision"] = self._seen + 1
        with client.session.post(
            client.get_url("/watch"),
            json={"create_request": request},
            headers=registry._headers(client, renew=self._renew),
            stream=True,
            timeout=registry.request_timeout,  # for connecting and for the "created" answer
        ) as response:
            self._response = response
            try:
                if response.status_code != 200:
                    raise _GatewayError(response.text)
                buffered = b""
                for chunk in response.iter_content(chunk_size=None):
                    if self._cancelled.is_set():
                        return
                    self._contact = time.monotonic()
                    *lines, buffered = (buffered + chunk).split(b"\n")
                    for line in lines:
                        if line.strip():
                            self._handle(json.loads(line), response)
            finally:
                self._response = None

    def _handle(self, message: Mapping[str, Any], response: requests.Response) -> None:
        if "error" in message:
            raise _GatewayError(json.dumps(message))
        result: Mapping[str, Any] = message.get("result", {})
        if _int(result, "compact_revision"):
            raise Compacted(self._seen + 1, _int(result, "compact_revision"))
        if result.get("canceled"):
            reason = str(result.get("cancel_reason") or "etcd canceled the watch")
            if "permission denied" in reason and self._registry._target.user is not None and not self._renew:
                raise _InvalidToken(reason)  # an expired token reads as "permission denied" here
            raise _GatewayError(reason)
        if result.get("created"):
            self._created(result, response)
            return
        events = [_event(e) for e in result.get("events", [])]
        if events:
            self._seen = max(self._seen, events[-1].kv.mod_revision)
        else:  # a progress notification: everything up to the header revision was sent
            self._seen = max(self._seen, _revision(result))
        self._put((events, self._seen))

    def _created(self, result: Mapping[str, Any], response: requests.Response) -> None:
        self._renew = self._outage_reported = False
        self._registry._recovered(self._index)
        if self._from_now:  # a watch from "now" starts synced at the header revision
            self._from_now = False
            self._seen = max(self._seen, _revision(result))
        # From here on a quiet stream is normal; the prober decides whether the endpoint is alive.
        sock = getattr(response.raw.connection, "sock", None)
        if sock is not None:
            sock.settimeout(_STREAM_BACKSTOP)

    # -- the prober thread --

    def _probe_loop(self) -> None:
        registry = self._registry
        every = max(registry.retry_timeout / 2, 0.2)
        probe = {"key": _b64(self._prefix or b"\0"), "keys_only": True}
        while not self._cancelled.wait(every) and self._reader.is_alive():
            if self._response is None or time.monotonic() - self._contact < every:
                continue
            try:
                registry._attempt("/kv/range", probe, _Ctx("probe"))
                self._contact = time.monotonic()
            except _Unreachable:
                log.debug("watch on %r: endpoint stopped answering, reconnecting", self._prefix)
                self._break_stream()
            except Exception:  # refused (permissions?): the probe cannot tell, the stream goes on
                log.debug("watch probe refused", exc_info=True)
