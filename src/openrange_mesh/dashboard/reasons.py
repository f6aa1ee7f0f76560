"""Errors grouped by reason, in bounded memory.

A reason is an error's first line with what differs between occurrences of one cause taken out:
ids and hex tokens become ``<id>``, numbers ``N`` ("timed out after 3 s" and "... after 12.5 s"
are one group), cut to ``MAX_REASON`` characters. A group keeps its count and the ``EXAMPLES``
most recent episode ids (by finish time, then id, so the choice does not depend on the order
records arrive in). At most ``MAX_GROUPS`` groups are kept (reported: the ``SHOWN`` largest);
a reason that comes when the table is full counts in "other". Exact, and independent of the
order records arrive in, while a namespace has at most ``MAX_GROUPS`` distinct reasons. Taking
a record back removes its id from its group's examples; the group may then show fewer than it
has until newer ones come.
"""

from __future__ import annotations

import functools
import re
from typing import Any

MAX_GROUPS = 1000
SHOWN = 100
EXAMPLES = 5
MAX_REASON = 200
OTHER = "other"
NO_REASON = "(no reason given)"

# a token with a digit in it that is an id: hex (>= 6 characters, optional 0x), a uuid, or our
# episode ids (digits and dashes with a suffix: 0000000001-0002-h1)
_ID = re.compile(r"\b(?:0x[0-9a-fA-F]+|[0-9a-fA-F]*\d[0-9a-fA-F]*(?:-[0-9A-Za-z]+)+|[0-9a-fA-F]{6,})\b")
_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def normalise(error: str | None) -> str:
    """The group an error belongs to (see the module docstring)."""
    line = error.strip().split("\n", 1)[0].strip() if error else ""
    return _reason(line[: MAX_REASON * 2]) if line else NO_REASON


# The regexes cost ~3 us a line, more than the rest of a Tally update; one cause repeats its
# line (or a few lines) many times. Bounded: 1024 lines of at most 400 characters.
@functools.lru_cache(maxsize=1024)
def _reason(line: str) -> str:
    return _NUMBER.sub("N", _ID.sub(_id_or_word, line))[:MAX_REASON]


def _id_or_word(match: re.Match[str]) -> str:
    token = match.group(0)
    return "<id>" if any(c.isdigit() for c in token) else token  # "deadbeef"-free words stay


class _Group:
    __slots__ = ("count", "examples")

    def __init__(self) -> None:
        self.count = 0
        self.examples: list[tuple[float, str]] = []  # (finished_at, id), newest last


class ErrorGroups:
    """Counts of errors by reason. Not thread-safe: its owner's thread only."""

    __slots__ = ("_groups", "other")

    def __init__(self) -> None:
        self._groups: dict[str, _Group] = {}
        self.other = 0

    def add(self, error: str | None, episode_id: str, finished_at: float, sign: int = 1) -> None:
        """Count an error (``sign`` -1 takes back one counted before)."""
        reason = normalise(error)
        group = self._groups.get(reason)
        if group is None:
            if sign < 0 or len(self._groups) >= MAX_GROUPS:
                self.other += sign
                return
            group = self._groups[reason] = _Group()
        group.count += sign
        example = (finished_at, episode_id)
        if sign > 0:
            _keep_newest(group.examples, example)
        elif example in group.examples:
            group.examples.remove(example)
        if group.count <= 0:
            del self._groups[reason]

    def summary(self) -> list[dict[str, Any]]:
        """``[{"reason", "count", "examples"}]``, the largest groups first (then by reason),
        at most ``SHOWN``; the rest as one "other" group with no examples."""
        ranked = sorted(self._groups.items(), key=lambda item: (-item[1].count, item[0]))
        out: list[dict[str, Any]] = [
            {"reason": reason, "count": g.count, "examples": [i for _, i in reversed(g.examples)]}
            for reason, g in ranked[:SHOWN]
        ]
        rest = self.other + sum(g.count for _, g in ranked[SHOWN:])
        if rest > 0:
            out.append({"reason": OTHER, "count": rest, "examples": []})
        return out


def _keep_newest(examples: list[tuple[float, str]], example: tuple[float, str]) -> None:
    if len(examples) < EXAMPLES:
        examples.append(example)
        examples.sort()
    elif example > examples[0]:
        examples[0] = example
        examples.sort()
