"""Tables that never cut a name or a number: plain aligned text when stdout is not a terminal; on a
narrow terminal the columns are split over several tables (the first, naming column repeated)
instead of being squeezed. Only a free-text last column (`wrap_last`) may be shortened."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table


@dataclass
class Grid:
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    justify: list[str] = field(default_factory=list)  # "left"/"right" per column (default left)
    styles: list[Optional[str]] = field(default_factory=list)  # per row
    sections: set[int] = field(default_factory=set)  # a rule before these row indices
    title: Optional[str] = None
    free_text_last: bool = False  # the last column is prose: shortened to fit a terminal

    def add_row(self, *cells: str, style: Optional[str] = None, section: bool = False) -> None:
        if section:
            self.sections.add(len(self.rows))
        self.rows.append([str(c) for c in cells])
        self.styles.append(style)

    def widths(self) -> list[int]:
        return [max([cell_len(h)] + [cell_len(r[i]) for r in self.rows]) for i, h in enumerate(self.headers)]

    def _justify(self, i: int) -> str:
        return self.justify[i] if i < len(self.justify) else "left"


def plain_text(grid: Grid) -> str:
    """Aligned columns, two spaces apart, no box characters or colour: for pipes and files."""
    widths = grid.widths()

    def line(cells):
        out = []
        for i, (cell, width) in enumerate(zip(cells, widths)):
            pad = " " * (width - cell_len(cell))
            last = i == len(cells) - 1
            out.append(pad + cell if grid._justify(i) == "right" else (cell if last else cell + pad))
        return "  ".join(out).rstrip()

    lines = [grid.title] if grid.title else []
    lines += [line(grid.headers), line(["-" * w for w in widths])]
    lines += [line(r) for r in grid.rows]
    return "\n".join(lines) + "\n"


def _first_width(widths: list[int], available: int) -> int:
    """The naming column wraps (whole, over lines) rather than leave no room for the others."""
    return min(widths[0], max(16, available * 2 // 5))


def _rich(grid: Grid, columns: list[int], title: Optional[str], available: int) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD)
    last = len(grid.headers) - 1
    widths = grid.widths()
    for i in columns:
        shortened = grid.free_text_last and i == last
        if i == 0 and widths[0] > _first_width(widths, available):
            table.add_column(grid.headers[0], justify=grid._justify(0), overflow="fold",
                             width=_first_width(widths, available))
            continue
        table.add_column(grid.headers[i], justify=grid._justify(i), no_wrap=True,
                         overflow="ellipsis" if shortened else "fold", min_width=None if shortened else widths[i])
    for r, row in enumerate(grid.rows):
        if r in grid.sections:
            table.add_section()
        table.add_row(*(row[i] for i in columns), style=grid.styles[r])
    return table


# What a rich column costs beyond its cells (padding and rules) in the SIMPLE_HEAD box, and what the
# table's own left and right edges cost.
_COLUMN_OVERHEAD = 2
_TABLE_EDGES = 2


def column_groups(widths: list[int], available: int, free_text_last: bool = False) -> list[list[int]]:
    """Column indices per table so that each fits `available` cells; column 0 is in every group."""
    first = _first_width(widths, available) + _COLUMN_OVERHEAD + _TABLE_EDGES
    groups, current, used = [], [0], first
    rest = list(range(1, len(widths)))
    for i in rest:
        need = widths[i] + _COLUMN_OVERHEAD
        if free_text_last and i == rest[-1]:
            need = min(need, 12 + _COLUMN_OVERHEAD)  # prose may be shortened, down to a few words
        if used + need > available and len(current) > 1:
            groups.append(current)
            current, used = [0], first
        current.append(i)
        used += need
    groups.append(current)
    return groups


def print_grid(grid: Grid, console: Console, plain: Optional[bool] = None) -> None:
    """`plain`: None = plain text when the console is not a terminal."""
    if plain if plain is not None else not console.is_terminal:
        console.print(plain_text(grid), end="", markup=False, highlight=False, emoji=False, soft_wrap=True)
        return
    groups = column_groups(grid.widths(), console.width, grid.free_text_last)
    for n, columns in enumerate(groups):
        title = grid.title if len(groups) == 1 else f"{grid.title or ''} ({n + 1}/{len(groups)})".strip()
        console.print(_rich(grid, columns, title, console.width))
