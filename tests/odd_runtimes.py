"""Runtimes that hand back data no episode should: named by import path (``tests.odd_runtimes:...``)
by tests that run them in real worker processes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from openrange_mesh.runtimes.base import Outcome


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


class _Odd:
    def __init__(self, result: dict[Any, Any], events: list[dict[str, Any]]) -> None:
        self.result, self.events, self.done = result, events, False

    def reset(self) -> None:
        pass

    def surface(self) -> dict[str, Any]:
        return {}

    def advance(self, max_seconds: float) -> None:
        self.done = True

    def poll_events(self) -> list[dict[str, Any]]:
        events, self.events = self.events, []
        return events

    def terminal(self) -> Outcome | None:
        return Outcome(succeeded=True) if self.done else None

    def collect(self) -> dict[Any, Any]:
        return self.result

    def stop(self) -> None:
        pass


class OddData:
    """params: ``result`` one of "deep" (2000 levels: too deep to pickle), "packdeep" (600: too
    deep for msgpack), "intkey", "surrogate" (a str UTF-8 cannot hold), "fine"; ``events``
    "deep" or "fine"."""

    name = "odd"

    def validate(self, params: Mapping[str, Any]) -> None:
        pass

    def realize(self, params: Mapping[str, Any], *, seed: int | None, snapshot: bytes | None = None) -> _Odd:
        results = {
            "deep": {"x": nested(2000)},
            "packdeep": {"x": nested(600)},
            "intkey": {"x": {1: "one"}},
            "surrogate": {"x": "\ud800"},
            "fine": {"ok": True},
        }
        event = {"type": "odd", "x": nested(5000)} if params.get("events") == "deep" else {"type": "fine"}
        return _Odd(results[params.get("result", "fine")], [event, {"type": "fine"}])


odd = OddData()


class _Files(_Odd):
    """Writes ``files`` into $OPENRANGE_ARTIFACTS and reports what its snapshot held."""

    def __init__(self, params: Mapping[str, Any], snapshot_path: Any) -> None:
        super().__init__({}, [])
        self.params, self.snapshot_path = params, snapshot_path

    def advance(self, max_seconds: float) -> None:
        out = Path(os.environ["OPENRANGE_ARTIFACTS"])
        for name, text in dict(self.params.get("files", {})).items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text(text)
        seen = Path(self.snapshot_path) if self.snapshot_path is not None else None
        if seen is not None and seen.is_dir():
            self.result = {"snapshot": sorted(p.relative_to(seen).as_posix() for p in seen.rglob("*") if p.is_file())}
        elif seen is not None:
            self.result = {"snapshot": seen.read_text()}
        self.result["env"] = os.environ.get("OPENRANGE_SNAPSHOT") == (str(seen) if seen else None)
        self.done = True


class Files:
    """params: ``files`` {name: text} written as artifacts; takes its snapshot as a path."""

    name = "files"

    def validate(self, params: Mapping[str, Any]) -> None:
        pass

    def realize(self, params: Mapping[str, Any], *, seed: int | None, snapshot_path: Any = None) -> _Files:
        return _Files(params, snapshot_path)


files = Files()


class Picky:
    """Refuses params holding ``"refuse": true`` or ``seconds`` 2, and notes every params it
    was asked about; runs nothing."""

    name = "picky"

    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []

    def validate(self, params: Mapping[str, Any]) -> None:
        from openrange_mesh.errors import SpecError

        self.asked.append(dict(params))
        if params.get("refuse") is True or params.get("seconds") == 2:
            raise SpecError("params", "picky refuses these")

    def realize(self, params: Mapping[str, Any], *, seed: int | None, snapshot: bytes | None = None) -> _Odd:
        return _Odd({}, [])


picky = Picky()


class _Leaves(_Odd):
    """Starts ``sleep <seconds>`` and leaves it running: the worker's sweep is to kill it."""

    def __init__(self, seconds: float) -> None:
        super().__init__({}, [])
        self.seconds = seconds

    def advance(self, max_seconds: float) -> None:
        subprocess.Popen(["sleep", str(self.seconds)], start_new_session=True)
        self.done = True


class KeepsBadly:
    """params: ``seconds`` (the leftover process it starts, named for a test to find); its
    ``release_kept`` raises, as a third party's might."""

    name = "keeps-badly"

    def validate(self, params: Mapping[str, Any]) -> None:
        pass

    def realize(self, params: Mapping[str, Any], *, seed: int | None, snapshot: bytes | None = None) -> _Leaves:
        return _Leaves(float(params["seconds"]))

    def release_kept(self) -> None:
        raise RuntimeError("cannot release what it keeps")


keeps_badly = KeepsBadly()
