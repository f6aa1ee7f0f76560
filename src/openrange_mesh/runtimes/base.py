"""The runtime seam: how an episode is realised and driven, whatever runs it.

A ``Runtime`` is a stateless factory, loaded by name (see ``load_runtime``); it can be pickled or
re-loaded by name in a child process. ``realize`` returns a ``Handle`` that holds one episode's state.
The caller drives a handle from one thread::

    handle = runtime.realize(params, seed=seed, snapshot=snapshot)
    try:
        handle.reset()
        while (outcome := handle.terminal()) is None:
            handle.advance(0.5)              # a slice; check cancel and timeouts between slices
            publish(handle.poll_events())
        publish(handle.poll_events())        # the last events, "terminal" among them
        summary = handle.collect()
    finally:
        handle.stop()

Contract, for every runtime:

* ``validate(params)`` is cheap and realises nothing; bad params raise ``errors.SpecError`` whose
  ``field`` is ``params.<name>``. ``realize`` validates too, so it never starts on bad params.
* ``realize`` prepares the episode; ``reset()`` starts it: from ``snapshot`` when realize was given
  one, else from the beginning (seeded by ``seed``). Calling ``reset()`` again starts over from the
  same point. ``advance()`` before ``reset()`` (or after ``stop()``) raises ``errors.RuntimeFailure``;
  a failure to start raises ``errors.RuntimeFailure`` from ``realize``/``reset``.
* ``advance(max_seconds)`` makes progress for about ``max_seconds`` at most, then returns; autonomous
  runtimes (a subprocess, a timer) progress on their own and ``advance`` only waits and collects.
  It is a no-op once the handle is terminal. A failure of the episode itself (a policy or env that
  raises, a command that exits non-zero) is an ``Outcome`` with ``succeeded=False``, not an exception.
* ``poll_events()`` returns the events produced since the last poll, in order: dicts that msgpack and
  JSON can carry, each with at least ``"type"`` (str) and ``"t"`` (``time.time()``). Every runtime emits
  ``"reset"`` when an episode starts and ``"terminal"`` when it ends.
* ``terminal()`` is ``None`` while running, then the final ``Outcome``; it never blocks.
* ``checkpoint()``/``restore()`` exist when ``supports_checkpoint`` is true; otherwise (or when the
  state at hand cannot be saved) they raise ``errors.RuntimeFailure``. A checkpoint can be passed to
  ``realize(snapshot=...)`` of the same runtime with the same params.
* ``collect()`` is a small JSON-able summary (the return, the step count, an exit status...).
* ``stop()`` is idempotent and releases everything, child processes included. It does not change
  ``terminal()``.
* A runtime may keep state between episodes to start the next sooner (gymnasium keeps its envs)
  if it offers ``release_kept()``, which closes that state. A worker calls it before it kills
  the processes an episode left (worker/reaper.py): a kept env that runs a simulator process
  is closed by its own ``close()`` then, rather than broken under it for the next episode.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Outcome:
    succeeded: bool
    error: str | None = None


class Handle(Protocol):
    supports_checkpoint: bool

    def reset(self) -> None: ...

    def surface(self) -> dict[str, Any]:
        """A JSON-able description of the IO surface a harness connects to."""
        ...

    def advance(self, max_seconds: float) -> None: ...

    def poll_events(self) -> list[dict[str, Any]]: ...

    def terminal(self) -> Outcome | None: ...

    def checkpoint(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...

    def collect(self) -> dict[str, Any]: ...

    def stop(self) -> None: ...


class Runtime(Protocol):
    name: str

    def validate(self, params: Mapping[str, Any]) -> None: ...

    def realize(self, params: Mapping[str, Any], *, seed: int | None, snapshot: bytes | None = None) -> Handle: ...


class EventsAndOutcome:
    """``poll_events`` and ``terminal`` for handles that keep ``_events`` and ``_outcome``."""

    _events: list[dict[str, Any]]
    _outcome: Outcome | None

    def poll_events(self) -> list[dict[str, Any]]:
        events, self._events = self._events, []
        return events

    def terminal(self) -> Outcome | None:
        return self._outcome


def new_event(type_: str, **fields: Any) -> dict[str, Any]:
    """An event dict stamped with the wall-clock time."""
    return {"type": type_, "t": time.time(), **fields}
