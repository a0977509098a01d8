"""Where a report prints, and tables that fit there without breaking a word.

rich folds a cell that does not fit its column into pieces, so on an 80-column
terminal `Q-AGREL` became `Q-AGR` / `EL` and `21632-5408-500` became `21632` /
`-5408` / `-500`: names that read as other names. Reports therefore print
through `report_console` and `fit`:

- not a terminal (a pipe, a file, a test runner): the console is as wide as the
  longest line, so nothing wraps at all and `grep`/`cut` see whole rows;
- a terminal: a table that is too wide gets a compact border, wraps cells only
  at spaces (`92.00 (2.00)` over two lines), and, where even whole words do not
  fit, shortens the widest columns with an ellipsis (`21632-5408…`), columns of
  names (`no_wrap`) last.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

# Wide enough for any line a report prints: off a terminal nothing is wrapped.
UNWRAPPED_WIDTH = 10_000
_NARROWEST = 3  # a shortened column still shows a character and the ellipsis


def report_console(*, stderr: bool = False) -> Console:
    """The console a report prints to: the terminal's width on a terminal, else never wrapping."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=UNWRAPPED_WIDTH)


def fit(table: Table, console: Console, short_headers: Mapping[str, str] | None = None) -> Table:
    """Make `table` fit `console`'s width without cutting a word in two; returns it (changed in place).

    Cells wrap at spaces only; a word that does not fit is shortened with an
    ellipsis. A table wider than the console loses its outer border, headers
    named in `short_headers` take their short form, and each column gets a
    width: its longest word, then whatever room is left goes to the columns
    that need least of it to be whole. When the longest words do not fit even
    one space apart, columns are shortened, widest first: headers down to the
    longest value below them, then the columns marked `no_wrap` (names), then
    any column; never below a column's `min_width` (a run id must stay whole).
    """
    for column in table.columns:
        column.overflow = "ellipsis"  # never "fold": a folded name reads as two names
    if _width(table, console) <= console.width:
        return table
    # Compact: a rule under the header, no outer border.
    table.box, table.show_edge, table.pad_edge, table.collapse_padding = box.SIMPLE_HEAD, False, False, True
    for column in table.columns:
        if short_headers and isinstance(column.header, str) and column.header in short_headers:
            column.header = short_headers[column.header]
    words, lines = zip(*(_measure(console, [column.header, *column.cells]) for column in table.columns))
    for padding in ((0, 1), (0, 0)):  # two spaces between columns, else one
        table.padding = padding
        room = console.width - (_width(table, console) - sum(lines))
        if sum(words) <= room:
            break
    widths = list(words)
    if sum(widths) <= room:
        spare = room - sum(widths)
        for i in sorted(range(len(widths)), key=lambda i: lines[i] - words[i]):
            extra = min(lines[i] - widths[i], spare)
            widths[i] += extra
            spare -= extra
    else:
        values = [_measure(console, list(column.cells))[0] for column in table.columns]
        floors = [max(column.min_width or 0, _NARROWEST) for column in table.columns]
        tiers = [[(i, max(values[i], floors[i])) for i, c in enumerate(table.columns) if not c.no_wrap],
                 [(i, floors[i]) for i, c in enumerate(table.columns) if c.no_wrap],
                 [(i, floors[i]) for i in range(len(widths))]]
        for tier in tiers:
            while sum(widths) > room:
                shorter = [i for i, floor in tier if widths[i] > floor]
                if not shorter:
                    break
                widths[max(shorter, key=lambda i: (widths[i], i))] -= 1
    for column, width in zip(table.columns, widths):
        # no_wrap only chose the order of shortening: lifted, a header such as "1st layer" wraps at its space
        # (names hold none), where no_wrap would cut it to "1st …".
        column.width, column.no_wrap = width, False
    return table


def _width(table: Table, console: Console) -> int:
    """The width `table` takes unwrapped (borders and padding included)."""
    return Measurement.get(console, console.options.update_width(UNWRAPPED_WIDTH), table).maximum


def _measure(console: Console, renderables: Iterable) -> tuple[int, int]:
    """(longest word, longest line) over `renderables`: a column's least and natural width, padding excluded."""
    options = console.options.update_width(UNWRAPPED_WIDTH)
    sizes = [Measurement.get(console, options, r) for r in renderables if r is not None and r != ""]
    return max((s.minimum for s in sizes), default=1), max((s.maximum for s in sizes), default=1)


__all__ = ["report_console", "fit", "UNWRAPPED_WIDTH"]
