"""Failures of a call to etcd as this package tells them apart, and the connections calls travel on:
keep-alive ``http.client`` connections for request/response calls, a requests session for watch streams."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

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

from ...errors import ConfigError, RegistryError, TlsError, TlsRequired, Unavailable
from . import _causes

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
    """An attempt at ``where`` failed in a retryable way, ``cause`` saying how (naming ``where``);
    ``maybe_applied`` if etcd may have executed the request anyway (so only reads and other
    idempotent calls may retry)."""

    def __init__(self, endpoints: str, where: str, cause: str, *, maybe_applied: bool, timed_out: bool = False) -> None:
        super().__init__(endpoints, cause, timed_out=timed_out)
        self.where = where
        self.cause = cause
        self.maybe_applied = maybe_applied


class _InvalidToken(RegistryError):
    """The auth token expired: authenticate again and repeat once."""


class _GatewayError(Exception):
    """An error object inside a 200 answer (streams): ``message`` as etcd wrote it."""


class _Broken(Exception):
    """A call failed below HTTP. ``reason`` says how, naming the endpoint ("connection refused by
    h:2379", "cannot resolve host h", "h:2379 did not answer within 2 s"); ``never_sent`` if etcd
    certainly never saw the request; ``tls`` the error to raise if TLS itself failed (trying again
    cannot help), ``reason`` then being why."""

    def __init__(self, cause: object, reason: str, *, never_sent: bool, tls: type[TlsError] | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.reason = reason
        self.never_sent = never_sent
        self.tls = tls


@dataclass(frozen=True, slots=True)
class _Ctx:
    """What a request was, for building the error it may turn into."""

    what: str
    operation: str = ""  # for ``EtcdRegistry.observer`` (registry/base.py OPERATIONS); "": not observed
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


def _as_broken(exc: BaseException, where: str, timeout: float) -> _Broken | None:
    """``exc`` as a failure below HTTP, from our connections or from requests (watch streams; etcd3gw
    re-raises requests' exceptions as its own, without ``from``)."""
    if isinstance(exc, _Broken):
        return exc
    for candidate in (exc, exc.__cause__, exc.__context__):
        if isinstance(candidate, requests.RequestException) and not isinstance(
            candidate, requests.exceptions.JSONDecodeError
        ):
            return _from_requests(candidate, where, timeout)
    return None


def _from_requests(error: requests.RequestException, where: str, timeout: float) -> _Broken:
    inner = _causes.os_error(error)
    never_sent = _never_sent(error)
    if isinstance(error, requests.exceptions.SSLError):
        why = _causes.tls_cause(inner) if inner is not None else str(_cause(error))
        return _Broken(error, why, never_sent=never_sent, tls=TlsError)
    if isinstance(error, requests.exceptions.Timeout):
        why = f"{where} did not answer within {round(timeout, 2):g} s"
    elif inner is not None:
        why = _causes.reason(inner, where, timeout, connecting=never_sent)
    else:
        why = f"connection to {where} lost: {_cause(error)}"
    return _Broken(error, why, never_sent=never_sent)


def _cause(error: requests.RequestException) -> object:
    """What urllib3 reported under requests' wrapping (``MaxRetryError.reason``)."""
    inner = error.args[0] if error.args else None
    return getattr(inner, "reason", inner)


def _never_sent(error: requests.RequestException) -> bool:
    # Refused, unresolvable or timed out while connecting: etcd never saw the request.
    return isinstance(error, requests.exceptions.ConnectTimeout) or isinstance(
        _cause(error), urllib3.exceptions.ConnectTimeoutError
    )


def _is_tls_problem(exc: BaseException) -> TypeGuard[ssl.SSLError]:
    # A TLS alert or a certificate that does not verify; an EOF or a reset under TLS is a lost connection.
    return isinstance(exc, ssl.SSLError) and not isinstance(
        exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError
    )


# -- the connections --------------------------------------------------------------------------


def _trusted(cacert: str | None) -> str:
    """The CA file or directory etcd is verified with: ``cacert``, else the system's (what etcdctl
    and curl trust, ``SSL_CERT_FILE`` included), else certifi's where the system has none (a slim
    container)."""
    if cacert:
        return cacert
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.capath):
        if candidate and os.path.exists(candidate):
            return candidate
    return certifi.where()


def _tls_context(cacert: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    """Verifies etcd with ``_trusted(cacert)``, presents the client certificate if given, and checks
    the host name."""
    trusted = _trusted(cacert)
    try:
        if os.path.isdir(trusted):
            context = ssl.create_default_context(capath=trusted)
        else:
            context = ssl.create_default_context(cafile=trusted)
        if cert and key:
            context.load_cert_chain(cert, key)
    except OSError as exc:  # ssl.SSLError is one: a file that is not PEM, a key that does not fit
        files = ", ".join(path for path in (cacert, cert, key) if path) or trusted
        raise ConfigError(f"cannot load etcd TLS files {files}: {exc.strerror or exc}") from exc
    return context


def _stream_session(cacert: str | None, cert: str | None, key: str | None) -> requests.Session:
    """The requests session for watch streams."""
    session = requests.Session()
    # No proxies, netrc or REQUESTS_CA_BUNDLE from the environment: etcd is reached directly and
    # verified as our own connections are (requests lets that variable override ``Session.verify``).
    session.trust_env = False
    session.verify = _trusted(cacert)
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
        self._where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._tls = tls
        self._idle: deque[http.client.HTTPConnection] = deque()
        self._closed = False

    def exchange(self, path: str, body: bytes, headers: Mapping[str, str], timeout: float) -> tuple[int, str, bytes]:
        """POST ``body``; the answer's status, reason and body. Raises ``_Broken``."""
        conn, fresh = self._take(timeout)
        try:
            conn.sock.settimeout(timeout)
            # etcd may answer and close before it has read all of a request it refuses (urllib3 does the same).
            with contextlib.suppress(BrokenPipeError):
                conn.request("POST", path, body, headers)
            answer = conn.getresponse()
            data = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self._lost(exc, fresh, timeout) from exc
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

    def _lost(self, exc: OSError | http.client.HTTPException, fresh: bool, timeout: float) -> _Broken:
        """An exchange that failed: sent, or perhaps sent, so a write may have been applied and the
        caller must not repeat it."""
        if _is_tls_problem(exc):  # a TLS 1.3 server checks the client certificate after the handshake
            return _Broken(exc, _causes.tls_cause(exc), never_sent=False, tls=TlsError)
        # A TLS etcd closes a plain request's connection without a word (or resets it, when our
        # request was still unread: a race), just as a crashing etcd would: only a new
        # connection closed so is worth a look at whether it speaks TLS.
        closed = isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError)
        plain_closed = fresh and self._tls is None and closed
        if plain_closed and _causes.serves_tls(self._host, self._port, timeout):
            return _Broken(exc, f"use https://{self._where}", never_sent=True, tls=TlsRequired)
        if isinstance(exc, OSError):
            return _Broken(exc, _causes.reason(exc, self._where, timeout, connecting=False), never_sent=False)
        return _Broken(exc, f"connection to {self._where} lost: {exc}", never_sent=False)

    def _take(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection, or a new one (then True)."""
        while True:
            try:
                conn = self._idle.pop()  # the most recently used: the least likely to have been dropped
            except IndexError:
                break
            if not _dropped(conn):
                return conn, False
            conn.close()
        return self._connect(timeout), True

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        # Connected explicitly, so that a failure here is known to precede sending; and TCP apart from
        # TLS, so that a handshake failure is told apart from a refused or unresolvable endpoint.
        if self._tls is None:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        else:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._tls)
        try:
            http.client.HTTPConnection.connect(conn)
        except OSError as exc:
            conn.close()
            raise _Broken(exc, _causes.reason(exc, self._where, timeout, connecting=True), never_sent=True) from exc
        if self._tls is not None:
            try:
                conn.sock = self._tls.wrap_socket(conn.sock, server_hostname=self._host)
            except OSError as exc:
                conn.close()
                if isinstance(exc, TimeoutError):  # accepted, then silence: not a TLS problem as such
                    why = _causes.reason(exc, self._where, timeout, connecting=True)
                    raise _Broken(exc, why, never_sent=True) from exc
                raise _Broken(exc, _causes.tls_cause(exc), never_sent=True, tls=TlsError) from exc
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
    agent's CPU, and that halves its cost (design/registry.md; figures in design/performance.md)."""

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
