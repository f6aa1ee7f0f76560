"""Episode runtimes, loaded by name (the contract is in ``base.py``).

A runtime name is, in the order we look:

* a built-in from the table below: ``command``, ``gymnasium``, ``sleep``. Their modules are
  imported lazily (fsspec-style), so an agent that only runs ``sleep`` never imports gymnasium;
* ``"pkg.module:attr"``, imported directly;
* a name another package registers in the ``openrange_mesh.runtimes`` entry-point group, e.g.
  ``[project.entry-points."openrange_mesh.runtimes"] myworld = "myworld.runtime:MyRuntime"``.

Each target is a ``Runtime`` object or a class whose no-argument instance is one. Runtimes are
stateless factories: a child process re-loads one by name (or unpickles it) and gets the same thing.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
from typing import Any, cast

from ..errors import RuntimeFailure, SpecError, UnknownRuntime
from ._params import import_object
from .base import Handle, Outcome, Runtime, new_event

__all__ = [
    "ENTRY_POINT_GROUP",
    "Handle",
    "Outcome",
    "Runtime",
    "known_runtimes",
    "load_runtime",
    "new_event",
    "release_kept",
]

ENTRY_POINT_GROUP = "openrange_mesh.runtimes"

log = logging.getLogger(__name__)

_BUILTINS: dict[str, str] = {
    "command": "openrange_mesh.runtimes.command:CommandRuntime",
    "gymnasium": "openrange_mesh.runtimes.gym:GymnasiumRuntime",
    "sleep": "openrange_mesh.runtimes.sleep:SleepRuntime",
}


_loaded: list[Runtime] = []  # every runtime load_runtime made, for release_kept


def release_kept() -> None:
    """Ask every runtime loaded so far to close what it keeps between episodes (base.py). One
    that raises is logged: the sweep that follows must still run."""
    for runtime in list(_loaded):
        release = getattr(runtime, "release_kept", None)
        if callable(release):
            try:
                release()
            except Exception:
                log.warning("runtime %s: release_kept failed", runtime.name, exc_info=True)


@functools.cache
def load_runtime(name: str) -> Runtime:
    """The runtime called ``name``. Unknown names raise ``UnknownRuntime`` listing the known ones;
    an import path that does not import raises ``SpecError`` on the ``runtime`` field."""
    if name in _BUILTINS:
        target = import_object(_BUILTINS[name], "runtime")
    elif ":" in name:
        target = import_object(name, "runtime")
    else:
        entry_point = _entry_points().get(name)
        if entry_point is None:
            raise UnknownRuntime(name, known_runtimes())
        try:
            target = entry_point.load()
        except Exception as exc:
            raise RuntimeFailure(f"runtime {name!r} ({entry_point.value}) does not load: {exc}") from exc
    runtime = _as_runtime(target, name)
    _loaded.append(runtime)
    return runtime


def known_runtimes() -> list[str]:
    """Built-in and entry-point runtime names (``module:attr`` names are not listed)."""
    return sorted({*_BUILTINS, *_entry_points()})


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _as_runtime(target: Any, name: str) -> Runtime:
    runtime = target() if isinstance(target, type) else target
    if not isinstance(getattr(runtime, "name", None), str) or not all(
        callable(getattr(runtime, method, None)) for method in ("validate", "realize")
    ):
        raise SpecError("runtime", f"{name!r} is not a runtime (it needs name, validate and realize)")
    return cast(Runtime, runtime)
