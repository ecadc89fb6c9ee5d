"""Delimited-text readers (TSV, CSV, one sentence per line), plain or .gz, for the sentence-matching sets.

Every reader yields (line number in the file, row dict), like `data.read_json_lines`, so errors
can name `path:line`.
"""

from __future__ import annotations

import csv
import gzip
from pathlib import Path
from typing import Callable, Iterator, Optional

from .errors import ConfigError, DataError
from .registry import did_you_mean

BOM = "\ufeff"

Rows = Iterator[tuple[int, dict]]


def _open_text(path: Path):
    # utf-8-sig drops a BOM at the start of the file; newline="" is what the csv module expects.
    opener = gzip.open if str(path).endswith(".gz") else open
    return opener(path, "rt", encoding="utf-8-sig", newline="")


def read_delimited(path: Path, delimiter: str, columns: Optional[list[str]], header: bool) -> Rows:
    """Rows keyed by the header line (header=True; `columns` is then ignored, so a file-level
    header can override columns inherited from a task default) or by `columns` (header=False).

    ',' files follow csv quoting ("a,b" is one field); other delimiters (tab) read quotes
    literally, since Chinese text often holds unbalanced quotation marks.
    """
    if not header and columns is None:
        raise ConfigError(f"{path}: a file without a header row needs column names (columns: [...])")
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    with _open_text(path) as fh:
        reader = csv.reader(fh, delimiter=delimiter, quoting=quoting)
        end = 0  # last physical line consumed; a quoted field may span several lines
        for fields in reader:
            line_no, end = end + 1, reader.line_num
            if not fields:  # blank line
                continue
            # Some files (ATEC train) carry a stray BOM at the start of a field, not of the file.
            fields = [f.removeprefix(BOM) for f in fields]
            if header:
                columns, header = fields, False
                continue
            if len(fields) != len(columns):
                raise DataError(
                    f"{path}:{line_no}: expected {len(columns)} fields ({', '.join(columns)}), found {len(fields)}"
                )
            yield line_no, dict(zip(columns, fields))


def read_lines(path: Path, field: str = "text") -> Rows:
    """One sentence per line: {field: line}, skipping blank lines."""
    with _open_text(path) as fh:
        for line_no, line in enumerate(fh, start=1):
            text = line.rstrip("\r\n")
            if text.strip():
                yield line_no, {field: text}


def _jsonl(path: Path, columns, header) -> Rows:
    from .data import read_json_lines  # here, not at the top: data.py imports this module

    return read_json_lines(path)


READERS: dict[str, Callable[[Path, Optional[list[str]], bool], Rows]] = {
    "jsonl": _jsonl,
    "tsv": lambda path, columns, header: read_delimited(path, "\t", columns, header),
    "csv": lambda path, columns, header: read_delimited(path, ",", columns, header),
    "lines": lambda path, columns, header: read_lines(path, columns[0] if columns else "text"),
}


def read_rows(path: Path, fmt: str, columns: Optional[list[str]] = None, header: bool = False) -> Rows:
    """Rows of `path` in format `fmt` (a READERS key); columns/header apply to tsv and csv only."""
    if fmt not in READERS:
        raise ConfigError(f"unknown data format {fmt!r}{did_you_mean(fmt, READERS)} (known: {', '.join(READERS)})")
    return READERS[fmt](Path(path), columns, header)
