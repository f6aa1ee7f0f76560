"""A table printed as it streams: column widths are fixed by the header and the first batch of rows,
then every batch is written at once. One giant rich Table would hold (and measure) every row before
printing the first; this prints 100k rows in bounded memory, page by page."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.text import Text

from .safe import printable

GAP = "  "

Styler = Callable[[Sequence[str]], dict[int, str]]  # a row -> {column index: rich style}


class StreamTable:
    def __init__(self, columns: Sequence[str], console: Console, style: Styler | None = None) -> None:
        self.columns = list(columns)
        self.console = console
        self.style = style
        self.widths: list[int] | None = None
        self.rows = 0

    def write(self, rows: Sequence[Sequence[str]]) -> None:
        """Print ``rows`` (the first call also prints the header). Cells are escaped here
        (``safe.printable``): every table holds text from episodes or specs."""
        rows = [[printable(cell) for cell in row] for row in rows]
        if self.widths is None:
            self.widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(self.columns)]
            self._emit([self.columns], header=True)
        if rows:
            self._emit(rows)
            self.rows += len(rows)

    def close(self) -> None:
        """Print the header if no row ever came (an empty listing still shows its columns)."""
        if self.widths is None:
            self.write([])

    def _line(self, row: Sequence[str]) -> str:
        assert self.widths is not None
        last = len(row) - 1
        return GAP.join(cell if i == last else cell.ljust(self.widths[i]) for i, cell in enumerate(row)).rstrip()

    def _emit(self, rows: Sequence[Sequence[str]], *, header: bool = False) -> None:
        if not self.console.is_terminal or self.console.no_color:
            # The fast path (pipes, files): plain text in one write per batch.
            sys.stdout.write("".join(self._line(r) + "\n" for r in rows))
            sys.stdout.flush()
            return
        text = Text(no_wrap=True, overflow="ignore")
        for row in rows:
            styles = {} if header or self.style is None else self.style(row)
            for i, cell in enumerate(row):
                if i:
                    text.append(GAP)
                padded = cell if i == len(row) - 1 else cell.ljust(self.widths[i] if self.widths else 0)
                text.append(padded, style="bold" if header else styles.get(i))
            text.append("\n")
        self.console.print(text, end="", soft_wrap=True)
