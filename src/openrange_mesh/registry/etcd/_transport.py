"""Failures of a call to etcd as this package tells them apart, and the connections calls travel on:
keep-alive ``http.client`` connections for request/response calls, a requests session for watch streams."""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import certifi
import requests
import urllib3
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import (
    ConnectionFailedError,
    ConnectionTimeoutError,
    Etcd3Exception,
    InternalServerError,
    PreconditionFailedError,
)

from ...errors import RegistryError, Unavailable

MAX_REQUEST_BYTES = 1572864  # etcd's default --max-request-bytes (1.5 MiB)
_MIN_ATTEMPT = 0.05  # seconds: no attempt is started with less time than this left
# etcd answers that mean "this member cannot serve now"; the first group also means "nothing was applied".
_NOT_APPLIED = ("no leader", "not capable", "too many requests", "connection refused")
_UNAVAILABLE = (*_NOT_APPLIED, "request timed out", "leader changed", "transport is closing", "stopped")
_IDLE_CONNECTIONS = 8  # per endpoint: more than the threads of an agent that call at once
# HTTP statuses as etcd3gw's Etcd3Client.post raises them (anything else but 200: Etcd3Exception).
_ERRORS_BY_STATUS: dict[int, type[Etcd3Exception]] = {
    500: InternalServerError,
    503: ConnectionFailedError,
    408: ConnectionTimeoutError,
    504: ConnectionTimeoutError,
    412: PreconditionFailedError,
}

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


class _Broken(Exception):
    """A call failed below HTTP. ``short`` says how ("timed out", "connection refused", "connection
    lost"); ``never_sent`` if etcd certainly never saw the request; ``tls`` if TLS itself failed (a
    certificate problem: trying again cannot help)."""

    def __init__(self, cause: object, short: str, *, never_sent: bool, tls: bool = False) -> None:
        super().__init__(cause)
        self.cause = cause
        self.short = short
        self.never_sent = never_sent
        self.tls = tls


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


def _as_broken(exc: BaseException) -> _Broken | None:
    """``exc`` as a failure below HTTP, from our connections or from requests (watch streams; etcd3gw
    re-raises requests' exceptions as its own, without ``from``)."""
    if isinstance(exc, _Broken):
        return exc
    for candidate in (exc, exc.__cause__, exc.__context__):
        if isinstance(candidate, requests.RequestException) and not isinstance(
            candidate, requests.exceptions.JSONDecodeError
        ):
            tls = isinstance(candidate, requests.exceptions.SSLError)
            return _Broken(_cause(candidate), _short(candidate), never_sent=_never_sent(candidate), tls=tls)
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


def _is_tls_problem(exc: BaseException) -> bool:
    # A TLS alert or a certificate that does not verify; an EOF or a reset under TLS is a lost connection.
    return isinstance(exc, ssl.SSLError) and not isinstance(
        exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError
    )


# -- the connections --------------------------------------------------------------------------


def _tls_context(cacert: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    """Verifies etcd with the URL's ``cacert`` (else certifi's bundle, as requests would), presents
    the client certificate if given, and checks the host name."""
    context = ssl.create_default_context(cafile=cacert or certifi.where())
    if cert and key:
        context.load_cert_chain(cert, key)
    return context


def _stream_session(cacert: str | None, cert: str | None, key: str | None) -> requests.Session:
    """The requests session for watch streams."""
    session = requests.Session()
    # No proxies, netrc or REQUESTS_CA_BUNDLE from the environment: etcd is reached directly and
    # verified with the URL's cacert (requests lets that variable override ``Session.verify``).
    session.trust_env = False
    session.verify = cacert or True
    if cert and key:
        session.cert = (cert, key)
    return session


class _Connections:
    """Keep-alive connections to one endpoint, shared by the threads that call it: a thread takes an
    idle one (or opens one), makes one exchange on it and puts it back. ``deque`` appends and pops
    are atomic, so no lock."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        self._host = host
        self._port = port
        self._tls = tls
        self._idle: deque[http.client.HTTPConnection] = deque()
        self._closed = False

    def exchange(self, path: str, body: bytes, headers: Mapping[str, str], timeout: float) -> tuple[int, str, bytes]:
        """POST ``body``; the answer's status, reason and body. Raises ``_Broken``."""
        conn = self._take(timeout)
        try:
            conn.sock.settimeout(timeout)
            # etcd may answer and close before it has read all of a request it refuses (urllib3 does the same).
            with contextlib.suppress(BrokenPipeError):
                conn.request("POST", path, body, headers)
            answer = conn.getresponse()
            data = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            # Sent, or perhaps sent: a write may have been applied, so the caller must not repeat it.
            short = "timed out" if isinstance(exc, TimeoutError) else "connection lost"
            raise _Broken(exc, short, never_sent=False, tls=_is_tls_problem(exc)) from exc
        except BaseException:
            conn.close()
            raise
        if conn.sock is not None and len(self._idle) < _IDLE_CONNECTIONS:  # None: etcd said "Connection: close"
            self._idle.append(conn)
            if self._closed:  # close() ran meanwhile
                self.close()
        else:
            conn.close()
        return answer.status, answer.reason, data

    def _take(self, timeout: float) -> http.client.HTTPConnection:
        while True:
            try:
                conn = self._idle.pop()  # the most recently used: the least likely to have been dropped
            except IndexError:
                break
            if not _dropped(conn):
                return conn
            conn.close()
        if self._tls is None:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        else:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._tls)
        try:
            conn.connect()  # explicitly, so that a failure here is known to precede sending
        except OSError as exc:
            conn.close()
            short = "timed out" if isinstance(exc, TimeoutError) else "connection refused"
            raise _Broken(exc, short, never_sent=True, tls=_is_tls_problem(exc)) from exc
        return conn

    def close(self) -> None:
        self._closed = True  # connections in use are closed as they come back
        while self._idle:
            try:
                self._idle.pop().close()
            except IndexError:
                break


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """Whether etcd closed this idle connection (it restarted, or let the connection go). Between
    exchanges there is nothing to read, so anything readable is an EOF, a reset or garbage. A request
    on such a connection would fail after it may have been sent, and a write could not be retried."""
    if conn.sock is None:
        return True
    poller = select.poll()
    poller.register(conn.sock, select.POLLIN)
    return bool(poller.poll(0))


class _Client(Etcd3Client):
    """etcd3gw's client for one endpoint: its URLs, its exceptions and its session (for watch streams).
    Request/response calls bypass ``Etcd3Client.post`` and requests: they go over our keep-alive
    connections and map HTTP errors to etcd3gw's exceptions as ``post`` does. This path is most of an
    agent's CPU, and that halves its cost (design §8 has the figures)."""

    def __init__(
        self, host: str, port: int, timeout: float, tls: ssl.SSLContext | None, session: requests.Session
    ) -> None:
        protocol = "http" if tls is None else "https"
        super().__init__(host=host, port=port, protocol=protocol, timeout=timeout, api_path="/v3/", session=session)
        self._connections = _Connections(host, port, tls)

    def call(self, path: str, payload: Mapping[str, Any], headers: Mapping[str, str], timeout: float) -> Any:
        """POST ``payload`` as JSON to ``/v3/<path>``; the decoded answer. Raises ``_Broken`` or
        etcd3gw's exceptions."""
        status, reason, data = self._connections.exchange(
            self.api_path + path.lstrip("/"),
            json.dumps(payload).encode(),
            {"Content-Type": "application/json", **headers},
            timeout,
        )
        if status != 200:
            raise _ERRORS_BY_STATUS.get(status, Etcd3Exception)(data.decode("utf-8", "replace"), reason)
        try:
            return json.loads(data)
        except ValueError:
            raise _GatewayError(f"etcd answered with something other than JSON: {data[:200]!r}") from None

    def close(self) -> None:
        self._connections.close()
        self.session.close()
