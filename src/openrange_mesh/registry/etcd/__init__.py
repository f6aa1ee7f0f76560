"""The registry over etcd's v3 JSON gateway (etcd >= 3.4), with etcd3gw's clients.

The request path: one etcd3gw client per endpoint gives the URLs, the exceptions HTTP errors become and
the session watches stream through; request/response calls skip its ``post`` and requests and go over
keep-alive ``http.client`` connections that the calling threads share (``_transport``): about half the
client CPU per call.

How it copes with failure:

* Calls go to the current endpoint; a connection failure, a timeout or an etcd "unavailable" answer
  moves to the next one. A call that fails is retried under one tenacity policy (entered only after a
  first failure) that retries only those failures and never runs past ``retry_timeout`` (each
  attempt's timeout is clamped to what is left), then raises ``Unavailable``.
* A failure names its cause and endpoint ("cannot resolve host h", "connection refused by h:p",
  "h:p did not answer within N s", "TLS handshake with h:p failed: ..."; ``_causes``). TLS
  failures are ``TlsError``, never retried: a certificate or protocol mismatch does not heal.
* A timed-out *write* may have been applied, so a write is retried only when the request certainly never
  reached etcd (connection refused, connect timeout); otherwise ``Unavailable`` is raised at once rather
  than risk applying it twice (a retried claim would read as "lost" though it was won). A kept-alive
  connection that etcd closed (a restart) is noticed before it is used, not by a request failing on it.
* A watch is a streaming POST to ``/v3/watch`` read by a daemon thread (etcd3gw's Watcher leaves executor
  threads behind and drops cancel responses). It resumes from the last seen revision + 1 after any
  break. A second thread probes the endpoint while the stream is quiet and breaks the stream when the
  probe fails, or when calls have failed over to another endpoint (a probe would go there): a hung etcd
  (SIGSTOP, a stalled disk) looks exactly like a quiet one, and reconnecting on every quiet spell
  would make etcd replay all history since the last event each time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from etcd3gw.exceptions import Etcd3Exception
from tenacity import RetryCallState, Retrying, retry_if_exception

from ...errors import LeaseLost, RegistryError
from ..base import (
    MAX_REQUEST_BYTES,
    Compare,
    Get,
    KeyValue,
    Observer,
    Op,
    Put,
    RangeResult,
    TxnResult,
    error_kind,
)
from ._causes import timed_out
from ._refusals import refusal
from ._transport import (
    _MIN_ATTEMPT,
    _as_broken,
    _Broken,
    _Client,
    _Ctx,
    _GatewayError,
    _InvalidToken,
    _stream_session,
    _tls_context,
    _Unreachable,
)
from ._url import Access, parse_url, with_access
from ._watch import EtcdWatch
from ._wire import _b64, _int, _kv, _leaves, _op_size, _range_request, _revision, _txn_request, _txn_result

log = logging.getLogger(__name__)

__all__ = ["MAX_REQUEST_BYTES", "Access", "EtcdRegistry", "EtcdWatch", "parse_url", "with_access"]


class EtcdRegistry:
    def __init__(
        self, url: str, *, retry_timeout: float = 10.0, observer: Observer | None = None, answers: Any = None
    ) -> None:
        self.observer = observer
        self._target = parse_url(url)
        self.url = self._target.url
        self.endpoints = ",".join(self._where(i) for i in range(len(self._target.endpoints)))
        self.retry_timeout = retry_timeout
        self.request_timeout = max(min(retry_timeout / 2, self._target.timeout), _MIN_ATTEMPT)
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        self._clients: dict[int, _Client] = {}
        self._current = 0
        self._token: str | None = None
        self._in_outage = False
        # endpoint index -> monotonic time it last answered a request: proof of life that the
        # watches' probers use instead of probing themselves (an agent's lease keepalive makes
        # its idle watches cost etcd nothing); shared with another process (``share_answers``),
        # whose table it takes if it has as many endpoints (CLOCK_MONOTONIC is the machine's)
        count = len(self._target.endpoints)
        self._answered: Any = answers if answers is not None and len(answers) == count else [0.0] * count
        self._watches: set[EtcdWatch] = set()
        self._closed = False

    # -- endpoints, auth and the one retry policy --

    def _endpoint(self) -> tuple[int, _Client]:
        with self._lock:
            if self._closed:
                raise RegistryError(f"etcd registry {self.url} is closed")
            index = self._current
            client = self._clients.get(index)
            if client is None:
                client = self._client(index)
                self._clients[index] = client
            return index, client

    def _client(self, index: int) -> _Client:
        host, port = self._target.endpoints[index]
        cacert, cert, key = self._target.cacert, self._target.cert, self._target.key
        if self._target.protocol == "https" and self._tls is None:
            self._tls = _tls_context(cacert, cert, key)  # loading the CA bundle takes milliseconds: once
        session = _stream_session(cacert, cert, key)
        return _Client(host, port, self.request_timeout, self._tls, session)

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
        log.log(level, "etcd: %s; %s", reason, nxt)

    def answered_at(self, index: int) -> float:
        """When endpoint ``index`` last answered a request of this registry, or of one sharing
        its table (monotonic; 0: never)."""
        return float(self._answered[index])

    def share_answers(self) -> Any:
        with self._lock:
            if not isinstance(self._answered, list):
                return self._answered
            shared = multiprocessing.get_context("spawn").RawArray("d", self._answered)
            self._answered = shared
            return shared

    def _recovered(self, index: int) -> None:
        self._answered[index] = time.monotonic()  # one store: cheaper than a lock, and a race only ages it
        if self._in_outage:
            self._in_outage = False
            log.info("etcd answers again at %s", self._where(index))

    def _headers(self, client: _Client, *, renew: bool = False, deadline: float | None = None) -> dict[str, str]:
        if self._target.user is None:
            return {}
        with self._lock:
            token = None if renew else self._token
        if token is None:
            payload = {"name": self._target.user, "password": self._target.password}
            try:
                token = str(client.call("/auth/authenticate", payload, {}, self._timeout(deadline))["token"])
            except Etcd3Exception as exc:
                if "authentication is not enabled" not in str(exc.detail_text):
                    raise
                token = ""  # credentials given, auth off: send none until etcd asks for them
            with self._lock:
                self._token = token
        return {"Authorization": token} if token else {}

    def _timeout(self, deadline: float | None) -> float:
        """An attempt's timeout: never past the retry deadline, and never below ``_MIN_ATTEMPT``."""
        if deadline is None:
            return self.request_timeout
        return min(self.request_timeout, max(deadline - time.monotonic(), _MIN_ATTEMPT))

    def _attempt(
        self, path: str, payload: Mapping[str, Any], ctx: _Ctx, deadline: float | None = None
    ) -> dict[str, Any]:
        """One request (a call retries by making several), told to ``observer`` if one is set:
        one attribute read when none is."""
        observer = self.observer
        if observer is None or not ctx.operation:
            return self._exchange(path, payload, ctx, deadline)
        began = time.perf_counter()
        try:
            result = self._exchange(path, payload, ctx, deadline)
        except RegistryError as exc:
            observer(ctx.operation, time.perf_counter() - began, error_kind(exc))
            raise
        observer(ctx.operation, time.perf_counter() - began, None)
        return result

    def _exchange(
        self, path: str, payload: Mapping[str, Any], ctx: _Ctx, deadline: float | None = None
    ) -> dict[str, Any]:
        index, client = self._endpoint()
        renew = False
        while True:
            try:
                headers = self._headers(client, renew=renew, deadline=deadline)
                result: dict[str, Any] = client.call(path, payload, headers, self._timeout(deadline))
                if isinstance(result.get("error"), dict):  # a streaming endpoint's error object
                    raise _GatewayError(json.dumps(result))
                self._recovered(index)
                return result
            except (Etcd3Exception, _Broken, _GatewayError) as exc:
                error = self._translate(exc, ctx, index)
                if isinstance(error, _InvalidToken) and not renew:
                    renew = True
                    continue
                if isinstance(error, _Unreachable):
                    self._fail_over(index, error.cause)
                raise error from exc

    def _call(self, path: str, payload: Mapping[str, Any], ctx: _Ctx) -> dict[str, Any]:
        deadline = time.monotonic() + self.retry_timeout
        try:
            return self._attempt(path, payload, ctx, deadline)  # most calls: no retry machinery at all
        except _Unreachable as exc:
            failed: _Unreachable | None = exc
            causes = {exc.where: exc.cause}  # each endpoint's latest, for the error if all fail

        def attempt() -> dict[str, Any]:
            # The policy's first attempt is the one that just failed, so its schedule is unchanged.
            nonlocal failed
            if failed is not None:
                error, failed = failed, None
                raise error
            try:
                return self._attempt(path, payload, ctx, deadline)
            except _Unreachable as exc:
                causes[exc.where] = exc.cause
                raise

        try:
            result: dict[str, Any] = self._retrying(ctx, deadline)(attempt)
        except _Unreachable as exc:
            if len(causes) < 2:
                raise
            raise _Unreachable(
                self.endpoints,
                exc.where,
                "; ".join(causes.values()),
                maybe_applied=exc.maybe_applied,
                timed_out=exc.timed_out,
            ) from exc
        return result

    def _retrying(self, ctx: _Ctx, deadline: float) -> Retrying:
        count = len(self._target.endpoints)

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, _Unreachable) and (ctx.idempotent or not exc.maybe_applied)

        def wait(state: RetryCallState) -> float:
            # Try every endpoint once at once; then back off, without sleeping past the deadline.
            if state.attempt_number % count:
                return 0.0
            backoff = min(0.05 * 2.0 ** (state.attempt_number // count - 1), 1.0)
            return max(min(backoff, deadline - time.monotonic() - _MIN_ATTEMPT), 0.0)

        return Retrying(
            retry=retry_if_exception(retryable),
            stop=lambda state: time.monotonic() >= deadline - _MIN_ATTEMPT,
            wait=wait,
            reraise=True,
        )

    def _translate(self, exc: BaseException, ctx: _Ctx, index: int) -> RegistryError:
        """The one place where transport, etcd3gw, requests and gateway errors become ``errors`` classes."""
        where = self._where(index)
        broken = _as_broken(exc, where, self.request_timeout)
        if broken is not None and broken.tls is not None:  # a certificate or protocol problem: not retryable
            return broken.tls(where, broken.reason)
        if broken is not None:
            return _Unreachable(
                self.endpoints,
                where,
                broken.reason,
                maybe_applied=not broken.never_sent,
                timed_out=timed_out(broken.cause) if isinstance(broken.cause, BaseException) else False,
            )
        return refusal(
            exc, ctx, endpoints=self.endpoints, where=where, user=self._target.user, oldest=self._oldest_revision
        )

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
        result = self._call("/lease/grant", {"TTL": ttl, "ID": 0}, _Ctx("grant a lease", "lease_grant"))
        if result.get("error"):
            raise RegistryError(f"etcd refused to grant a lease: {result['error']}")
        return _int(result, "ID")

    def refresh(self, lease: int) -> int:
        result = self._call("/lease/keepalive", {"ID": lease}, _Ctx("refresh a lease", "lease_refresh", lease=lease))
        ttl = _int(result.get("result", result), "TTL")
        if ttl <= 0:  # etcd omits the TTL of an expired lease
            raise LeaseLost(lease)
        return ttl

    def time_to_live(self, lease: int) -> tuple[int, int] | None:
        try:
            result = self._call("/kv/lease/timetolive", {"ID": lease}, _Ctx("read a lease", "lease_ttl", lease=lease))
        except LeaseLost:
            return None
        left = _int(result, "TTL")
        return (left, _int(result, "grantedTTL")) if left >= 0 else None  # etcd: -1 once expired

    def revoke(self, lease: int) -> None:
        with contextlib.suppress(LeaseLost):  # already gone is as good as revoked
            self._call("/kv/lease/revoke", {"ID": lease}, _Ctx("revoke a lease", "lease_revoke", lease=lease))

    def get(self, key: bytes) -> tuple[KeyValue | None, int]:
        result = self._call("/kv/range", {"key": _b64(key)}, _Ctx("read a key", "get"))
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
        result = self._call("/kv/range", payload, _Ctx("read a range", "range", revision=revision or 0))
        kvs = [_kv(item) for item in result.get("kvs", [])]
        # At an explicit revision the header still carries the current one.
        return RangeResult(kvs=kvs, revision=revision or _revision(result), more=bool(result.get("more", False)))

    def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        payload = _txn_request(compares, success, failure)
        ops = _leaves([*success, *failure])
        ctx = _Ctx(
            "run a txn",
            "txn",
            idempotent=all(isinstance(op, Get) for op in ops),
            lease=next((op.lease for op in ops if isinstance(op, Put) and op.lease), 0),
            size=sum(_op_size(op) for op in ops),
        )
        result = self._call("/kv/txn", payload, ctx)
        succeeded = bool(result.get("succeeded", False))
        return _txn_result(result, succeeded, success if succeeded else failure, _revision(result))

    def watch(self, prefix: bytes, start_revision: int, *, prev_kv: bool = False, puts_only: bool = False) -> EtcdWatch:
        watch = EtcdWatch(self, prefix, start_revision, prev_kv=prev_kv, puts_only=puts_only)
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
            client.close()

    def _forget(self, watch: EtcdWatch) -> None:
        with self._lock:
            self._watches.discard(watch)

    def __repr__(self) -> str:
        return f"EtcdRegistry({self.url!r})"
