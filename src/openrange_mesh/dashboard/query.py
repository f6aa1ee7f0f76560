"""The episodes filter of ``/api/episodes`` (and of a cancel by filter), parsed from a query
string; anything malformed is ``BadQuery`` with a one-line reason (a 400)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..model import State
from .index import Summary

MAX_LIMIT = 500
STATES = frozenset(s.value for s in State)


class BadQuery(ValueError):
    pass


@dataclass(frozen=True)
class EpisodeQuery:
    states: frozenset[str] = frozenset()
    hosts: frozenset[str] = frozenset()
    runtimes: frozenset[str] = frozenset()
    labels: tuple[tuple[str, str], ...] = ()
    submitter: str | None = None
    since: float | None = None
    until: float | None = None
    prefix: str = ""
    limit: int = 50
    revision: int = 0  # from the cursor: the listing's revision (0: now)
    after: str | None = field(default=None)  # from the cursor: the last id of the previous page

    @classmethod
    def parse(cls, params: Any) -> EpisodeQuery:
        """From a query (Starlette's QueryParams, or a plain mapping of lists or strings)."""
        get = _getter(params)
        states = _split(get("state"))
        unknown = states - STATES
        if unknown:
            raise BadQuery(f"unknown state {sorted(unknown)[0]!r}: one of {', '.join(sorted(STATES))}")
        revision, after = _cursor(get("cursor"))
        return cls(
            states=frozenset(states),
            hosts=frozenset(_split(get("host"))),
            runtimes=frozenset(_split(get("runtime"))),
            labels=tuple(_label(item) for item in get("label")),
            submitter=(get("submitter") or [None])[-1] or None,
            since=_number("since", get("since")),
            until=_number("until", get("until")),
            prefix=(get("q") or [""])[-1].strip(),
            limit=_limit(get("limit")),
            revision=revision,
            after=after,
        )

    def matches(self, summary: Summary) -> bool:
        return (
            (not self.states or summary.state in self.states)
            and (not self.hosts or summary.host in self.hosts)
            and (not self.runtimes or summary.runtime in self.runtimes)
            and (not self.prefix or summary.id.startswith(self.prefix))
            and (self.submitter is None or summary.submitter == self.submitter)
            and (self.since is None or summary.created_at >= self.since)
            and (self.until is None or summary.created_at <= self.until)
            and all(pair in summary.labels for pair in self.labels)
        )


def _getter(params: Any) -> Any:
    if hasattr(params, "getlist"):
        return params.getlist
    mapping: Mapping[str, Any] = params

    def get(name: str) -> list[str]:
        value = mapping.get(name)
        if value is None:
            return []
        return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]

    return get


def _split(values: list[str]) -> set[str]:
    return {part.strip() for value in values for part in value.split(",") if part.strip()}


def _label(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise BadQuery(f"bad label filter {item!r}: expected key=value")
    return key.strip(), value.strip()


def _number(name: str, values: list[str]) -> float | None:
    if not values or not values[-1]:
        return None
    try:
        return float(values[-1])
    except ValueError:
        raise BadQuery(f"{name} must be unix seconds, not {values[-1]!r}") from None


def _limit(values: list[str]) -> int:
    if not values:
        return 50
    try:
        limit = int(values[-1])
    except ValueError:
        raise BadQuery(f"limit must be a whole number, not {values[-1]!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadQuery(f"limit must be 1-{MAX_LIMIT}, not {limit}")
    return limit


def _cursor(values: list[str]) -> tuple[int, str | None]:
    if not values or not values[-1]:
        return 0, None
    revision, sep, after = values[-1].partition(":")
    if not sep or not revision.isdigit() or not after:
        raise BadQuery(f"bad cursor {values[-1]!r}: pass back the 'next' of the previous page")
    return int(revision), after
