"""A watch as a streaming POST to ``/v3/watch``, read by a daemon thread (see the package's
docstring)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import requests

from ...errors import Compacted, RegistryError, Unavailable
from ..base import (
    Event,
    WatchBatch,
    WatchIterMixin,
    error_kind,
)
from ._transport import _Ctx, _GatewayError, _InvalidToken, _Unreachable
from ._wire import _b64, _event, _int, _range_request, _revision

if TYPE_CHECKING:
    from . import EtcdRegistry

_STREAM_BACKSTOP = 300.0  # read timeout on an established watch stream, should the prober ever stall
log = logging.getLogger(__name__)


class EtcdWatch(WatchIterMixin):
    def __init__(
        self, registry: EtcdRegistry, prefix: bytes, start_revision: int, *, prev_kv: bool, puts_only: bool = False
    ) -> None:
        self._registry = registry
        self._prefix = prefix
        self._create = {**_range_request(prefix, True), "prev_kv": prev_kv, "progress_notify": True}
        if puts_only:
            self._create["filters"] = ["NODELETE"]
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
            began = time.monotonic()
            try:
                self._stream()
                delay = 0.05  # the server ended the stream (a restart?): reconnect at once
                self._reopening(began, None)
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
                self._reopening(began, error)
                self._cancelled.wait(delay)
                delay = min(delay * 2, 1.0)

    def _reopening(self, began: float, error: RegistryError | None) -> None:
        """Tell the registry's observer that this stream broke and another is opened."""
        observer = self._registry.observer
        if observer is not None and not self._cancelled.is_set():
            observer("watch", time.monotonic() - began, error_kind(error) if error is not None else None)

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
            # A byte on the stream, or any answer from its endpoint to this registry (the lease
            # keepalive, a txn) proves the endpoint alive: a quiet watch probes only when its
            # process is otherwise silent too.
            contact = max(self._contact, registry.answered_at(self._index))
            if self._response is None or time.monotonic() - contact < every:
                continue
            if registry._current != self._index:
                # A call failed on this stream's endpoint and the registry moved on: a probe would
                # go to the registry's endpoint and prove nothing about this one (a hung member
                # kept its watch silent until the backstop). Reconnect, to the registry's endpoint:
                # one resume per failover, whose answers then vouch for the stream again. A move,
                # not an outage: the reader reports one only if the new endpoint fails too.
                log.debug("watch on %r: the registry left its endpoint, reconnecting", self._prefix)
                self._contact = time.monotonic()
                self._break_stream()
                continue
            try:
                registry._attempt("/kv/range", probe, _Ctx("probe"))
                self._contact = time.monotonic()
            except _Unreachable:
                log.debug("watch on %r: endpoint stopped answering, reconnecting", self._prefix)
                self._break_stream()
            except Exception:  # refused (permissions?): the probe cannot tell, the stream goes on
                log.debug("watch probe refused", exc_info=True)
