"""The ``sleep`` runtime: a deterministic stand-in for testing the machinery around episodes.

Params: ``seconds`` (number >= 0, default 0); ``mode``: ``"ok"`` (the default), ``"fail"`` (ends
with ``Outcome(False, FAIL_ERROR)``), ``"hang"`` (never ends and emits nothing after ``"reset"``: for
timeouts and watchdogs) or ``"crash"`` (SIGKILLs its own process when the time is up: for worker
crashes); ``events`` (int: that many ``"tick"`` events spread evenly over the time); ``result``
(the dict ``collect()`` returns, ``{}`` by default). Time runs on the clock from ``reset()``; a
checkpoint holds the elapsed time and the ticks already emitted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import RuntimeFailure, SpecError
from . import _params
from .base import EventsAndOutcome, Outcome, new_event

log = logging.getLogger(__name__)

MODES = ("ok", "fail", "hang", "crash")
FAIL_ERROR = "sleep runtime asked to fail"
_PARAMS = ("seconds", "mode", "events", "result")
_CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class SleepParams:
    seconds: float
    mode: str
    events: int
    result: dict[str, Any]


def parse_params(params: Mapping[str, Any]) -> SleepParams:
    _params.check_keys(params, allowed=_PARAMS)
    mode = _params.get_str(params, "mode") or "ok"
    if mode not in MODES:
        raise SpecError(_params.field("mode"), f"must be one of {', '.join(MODES)}, not {mode!r}")
    return SleepParams(
        seconds=_params.get_float(params, "seconds", 0.0, minimum=0.0),
        mode=mode,
        events=_params.get_int(params, "events", minimum=0) or 0,
        result=_params.get_dict(params, "result"),
    )


class SleepRuntime:
    name = "sleep"

    def validate(self, params: Mapping[str, Any]) -> None:
        parse_params(params)

    def realize(self, params: Mapping[str, Any], *, seed: int | None, snapshot: bytes | None = None) -> SleepHandle:
        p = parse_params(params)
        start = _decode(snapshot) if snapshot is not None else (0.0, 0)
        return SleepHandle(p, start)


class SleepHandle(EventsAndOutcome):
    supports_checkpoint = True

    def __init__(self, p: SleepParams, start: tuple[float, int]) -> None:
        self._p = p
        self._start = start
        self._events: list[dict[str, Any]] = []
        self._offset, self._ticks = start
        self._started_at: float | None = None
        self._end: float | None = None  # elapsed time when the episode ended
        self._outcome: Outcome | None = None
        self._stopped = False

    def reset(self) -> None:
        self._resume(*self._start)
        self._events.append(new_event("reset", elapsed=self._offset))

    def surface(self) -> dict[str, Any]:
        return {"seconds": self._p.seconds, "mode": self._p.mode, "events": self._p.events}

    def advance(self, max_seconds: float) -> None:
        self._check_started()
        if self._outcome is not None:
            return
        hangs = self._p.mode == "hang"
        deadline = time.monotonic() + max_seconds
        while True:
            now = time.monotonic()
            elapsed = self._elapsed(now)
            if not hangs:
                self._emit_ticks(elapsed)
                if elapsed >= self._p.seconds:
                    self._finish(elapsed)
                    return
            if now >= deadline:
                return
            due = math.inf if hangs else min(self._next_tick(), self._p.seconds)
            time.sleep(min(deadline - now, due - elapsed))

    def checkpoint(self) -> bytes:
        self._check_started()
        state = {"v": _CHECKPOINT_VERSION, "elapsed": self._elapsed(time.monotonic()), "ticks": self._ticks}
        return json.dumps(state).encode()

    def restore(self, data: bytes) -> None:
        self._resume(*_decode(data))

    def collect(self) -> dict[str, Any]:
        return dict(self._p.result)

    def stop(self) -> None:
        self._stopped = True

    def _resume(self, elapsed: float, ticks: int) -> None:
        if self._stopped:
            raise RuntimeFailure("sleep: handle is stopped")
        self._offset, self._ticks = elapsed, ticks
        self._started_at = time.monotonic()
        self._end = None
        self._outcome = None

    def _elapsed(self, now: float) -> float:
        if self._end is not None:
            return self._end
        assert self._started_at is not None
        return self._offset + now - self._started_at

    def _next_tick(self) -> float:
        return self._p.seconds * (self._ticks + 1) / self._p.events if self._ticks < self._p.events else math.inf

    def _emit_ticks(self, elapsed: float) -> None:
        while self._ticks < self._p.events and self._next_tick() <= elapsed:
            self._ticks += 1
            self._events.append(new_event("tick", index=self._ticks))

    def _finish(self, elapsed: float) -> None:
        self._emit_ticks(math.inf)  # rounding can put the last tick a hair after the end
        if self._p.mode == "crash":
            log.warning("sleep runtime: killing this process (pid %d) as asked", os.getpid())
            os.kill(os.getpid(), signal.SIGKILL)
        self._end = elapsed
        self._outcome = Outcome(True) if self._p.mode == "ok" else Outcome(False, FAIL_ERROR)
        self._events.append(
            new_event("terminal", succeeded=self._outcome.succeeded, error=self._outcome.error, elapsed=elapsed)
        )

    def _check_started(self) -> None:
        if self._stopped:
            raise RuntimeFailure("sleep: handle is stopped")
        if self._started_at is None:
            raise RuntimeFailure("sleep: advance() or checkpoint() before reset()")


def _decode(data: bytes) -> tuple[float, int]:
    try:
        state = json.loads(data)
        if state["v"] == _CHECKPOINT_VERSION:
            elapsed, ticks = float(state["elapsed"]), int(state["ticks"])
            if elapsed >= 0 and ticks >= 0:
                return elapsed, ticks
    except (ValueError, TypeError, KeyError) as exc:
        raise RuntimeFailure(f"not a sleep checkpoint: {exc}") from exc
    raise RuntimeFailure("not a sleep checkpoint, or one from a newer version")
