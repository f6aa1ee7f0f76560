"""Failures of a call to etcd as this package tells them apart, and the HTTP session under
etcd3gw's clients."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from json import dumps as _dumps
from typing import Any

import certifi
import requests
import urllib3
from etcd3gw.exceptions import Etcd3Exception
from requests.structures import CaseInsensitiveDict

from ...errors import RegistryError, Unavailable

MAX_REQUEST_BYTES = 1572864  # etcd's default --max-request-bytes (1.5 MiB)
_MIN_ATTEMPT = 0.05  # seconds: no attempt is started with less time than this left
# etcd answers that mean "this member cannot serve now"; the first group also means "nothing was applied".
_NOT_APPLIED = ("no leader", "not capable", "too many requests", "connection refused")
_UNAVAILABLE = (*_NOT_APPLIED, "request timed out", "leader changed", "transport is closing", "stopped")

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


# -- the session --------------------------------------------------------------------------------


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
