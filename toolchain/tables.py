"""Terminal tables that never cut what tells rows apart.

Rich shrinks every column of a table wider than the console and cuts cells with "…".
Names (artifacts, targets, layers) and numbers are what a reader compares, so here they
keep their full width; only free-text columns wrap (folding, never cutting). When the
names and numbers alone do not fit, the table is printed wider than the console: the
terminal wraps the line, nothing is lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

KINDS = ("name", "number", "text")
UNLIMITED = 100_000  # width to measure a table's own minimum at
SHORT_HEADER = 12  # headers up to this long stay on one line ("p90 ms", "peak RSS MB")


@dataclass(frozen=True)
class Column:
    """One table column: `name` and `number` cells are never cut or wrapped; `text` cells fold."""

    key: str
    title: str
    kind: str = "text"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"column kind must be one of {', '.join(KINDS)}, got {self.kind!r}")


def _longest_word(text: str) -> int:
    return max((len(word) for word in text.split()), default=0)


def build_table(title: str | None, columns: Sequence[Column], rows: Iterable[Mapping[str, str]]) -> Table:
    """A rich Table whose name and number columns are as wide as their widest cell."""
    rows = [[str(row[c.key]) for c in columns] for row in rows]
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  padding=(0, 1), collapse_padding=True)
    for index, column in enumerate(columns):
        cells = [row[index] for row in rows]
        if column.kind == "text":
            table.add_column(column.title, overflow="fold", min_width=min(12, max(map(len, cells), default=1)))
            continue
        # fixed width: the widest cell, or the header (its longest word when the header is long: then
        # the header wraps, a cell never does)
        header = len(column.title) if len(column.title) <= SHORT_HEADER else _longest_word(column.title)
        width = max([len(c) for c in cells] + [header])
        table.add_column(column.title, width=width, overflow="fold",
                         justify="right" if column.kind == "number" else "left")
    for row in rows:
        table.add_row(*row)
    return table


def print_table(console: Console, table: Table) -> None:
    """Print `table`; wider than the console if its uncuttable columns need it."""
    needed = Measurement.get(console, console.options.update_width(UNLIMITED), table).minimum
    if needed <= console.width:
        console.print(table)
        return
    narrow = console.width
    console.width = needed
    try:
        console.print(table)
    finally:
        console.width = narrow


def print_rows(console: Console, title: str | None, columns: Sequence[Column],
               rows: Iterable[Mapping[str, str]]) -> None:
    print_table(console, build_table(title, columns, rows))
