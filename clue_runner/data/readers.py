"""File → rows, plain or .gz: JSON lines (CLUE), delimited text (TSV, CSV, one sentence per line)
for the sentence-matching sets, and whole JSON documents (SQuAD-style CMRC2018, C3); where the
data directory and a split's file are.

Every reader yields (location, row dict), so errors can name `path:location`: the line number in
a text file, the path inside a JSON document.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..errors import ConfigError, DataError
from ..registry import did_you_mean

DATA_DIR_ENV = "CLUE_DATA_DIR"
BOM = "\ufeff"

Rows = Iterator[tuple[int | str, dict]]


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

    return read_json_lines(path)


def read_json_document(path: Path):
    with _open_text(path) as fh:
        try:
            return json.load(fh)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg} at column {err.colno})") from None


def read_squad(path: Path) -> Rows:
    """SQuAD layout ({"data": [{"title", "paragraphs": [{"context", "qas"}]}]}): one row per paragraph."""
    doc = read_json_document(path)
    articles = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(articles, list):
        raise DataError(f"{path}: expected a SQuAD-style object with a \"data\" list")
    for i, article in enumerate(articles):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise DataError(f"{path}:data[{i}]: expected an object with a \"paragraphs\" list")
        for j, paragraph in enumerate(paragraphs):
            if not isinstance(paragraph, dict):
                raise DataError(f"{path}:data[{i}].paragraphs[{j}]: expected an object")
            yield f"data[{i}].paragraphs[{j}]", {**paragraph, "title": article.get("title")}


def read_c3(path: Path) -> Rows:
    """C3 layout ([[document lines, questions, document id], ...]): one row per document."""
    doc = read_json_document(path)
    if not isinstance(doc, list):
        raise DataError(f"{path}: expected a JSON list of [document lines, questions, id]")
    for i, entry in enumerate(doc):
        if not (isinstance(entry, list) and len(entry) == 3):
            raise DataError(f"{path}:[{i}]: expected [document lines, questions, id]")
        yield f"[{i}]", {"document": entry[0], "questions": entry[1], "id": entry[2]}


READERS: dict[str, Callable[[Path, Optional[list[str]], bool], Rows]] = {
    "jsonl": _jsonl,
    "tsv": lambda path, columns, header: read_delimited(path, "\t", columns, header),
    "csv": lambda path, columns, header: read_delimited(path, ",", columns, header),
    "lines": lambda path, columns, header: read_lines(path, columns[0] if columns else "text"),
    "squad": lambda path, columns, header: read_squad(path),
    "c3": lambda path, columns, header: read_c3(path),
}


def read_rows(path: Path, fmt: str, columns: Optional[list[str]] = None, header: bool = False) -> Rows:
    """Rows of `path` in format `fmt` (a READERS key); columns/header apply to tsv and csv only."""
    if fmt not in READERS:
        raise ConfigError(f"unknown data format {fmt!r}{did_you_mean(fmt, READERS)} (known: {', '.join(READERS)})")
    return READERS[fmt](Path(path), columns, header)


def resolve_data_dir(configured: Optional[str]) -> Path:
    """Config value, else $CLUE_DATA_DIR, else ./data — and say where we looked if none exists."""
    candidates = [("data.dir in the config", configured), (f"${DATA_DIR_ENV}", os.environ.get(DATA_DIR_ENV)), ("default", "data")]
    looked = []
    for origin, value in candidates:
        if not value:
            continue
        path = Path(value).expanduser()
        if path.is_dir():
            return path
        looked.append(f"{path.resolve()} ({origin})")
        if origin != "default":
            break  # an explicit setting that is wrong should not fall through silently
    raise DataError(
        "data directory not found; looked in: " + ", ".join(looked)
        + f". Set data.dir in the config or ${DATA_DIR_ENV} (e.g. export {DATA_DIR_ENV}=../shared/data)."
    )


def find_file(directory: Path, name: str) -> Path:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"data file not found: {directory / name} (nor {name}.gz)")


def read_json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{line_no}: not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            yield line_no, row
