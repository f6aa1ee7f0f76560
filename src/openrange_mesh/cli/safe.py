"""Text from episodes and specs, made safe to print: the one place that decides which characters
the CLI never writes raw.

Anything an episode or a spec brought (an error, a stderr tail, result values, event fields,
params, ids, keys read back from etcd) may hold terminal controls: ``ESC [2J`` clears the
screen, ``ESC ] 0;... BEL`` retitles the window, C1 controls (``\\x9b`` is CSI by itself) do
the same on some terminals, bidi overrides (U+202E) make text read backwards. A character is
safe when ``str.isprintable()`` says so: that excludes C0, DEL, C1, Unicode's format
characters (bidi controls, zero-width ones), line and paragraph separators, lone surrogates
(which would not even encode) and private or unassigned code points. Anything else is shown
as a Python-style escape (``\\x1b``, ``\\u202e``), so it stays visible.

Rich markup is another matter: our consoles are made with ``markup=False`` and
``emoji=False`` (common.py), so ``[red]`` and ``:smile:`` in episode text print as written.
"""

from __future__ import annotations

import json


def printable(text: str, *, lines: bool = False) -> str:
    """``text`` with every unsafe character escaped. ``lines``: keep newlines, for a block
    meant to break over lines; otherwise the result is one line."""
    if text.isprintable():  # nearly always: one C-speed pass
        return text
    if lines:
        return "\n".join(printable(line) for line in text.split("\n"))
    return "".join(char if char.isprintable() else _escaped(char) for char in text)


def safe_json(text: str) -> str:
    """JSON text (from ``json.dumps``) with its unsafe characters as JSON escapes, so it stays
    the same JSON: ``json.dumps`` escapes C0 only (and with ``ensure_ascii`` every non-ASCII
    letter too). Raw newlines in its output are its own layout (``indent``), and are kept."""
    if text.isascii() and "\x7f" not in text:  # json.dumps already escaped C0 inside strings
        return text
    return "".join(char if char.isprintable() or char == "\n" else _json_escaped(char) for char in text)


def _escaped(char: str) -> str:
    return char.encode("unicode_escape").decode("ascii")


def _json_escaped(char: str) -> str:
    return json.dumps(char)[1:-1]  # ensure_ascii: \uXXXX, a surrogate pair above U+FFFF
