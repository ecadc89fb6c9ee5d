"""File → rows, plain or .gz: JSON lines (CLUE), delimited text (TSV, CSV, one sentence per line)
for the sentence-matching sets, and whole JSON documents (SQuAD-style CMRC2018, C3); where the
data directory and a split's file are.

Every reader yields (location, row dict), so errors can name `path:location`: the line number in
a text file, the path inside a JSON document. A line that is no row (invalid JSON, an array,
null, bytes that are not UTF-8) is yielded as a `BadRow`, which `data.on_bad_row` skips or refuses
like any other bad row; a damaged file (truncated or corrupt gzip, a plain file named .gz) stops
with one DataError naming the file and the line reached.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..errors import ConfigError, DataError, decode_utf8
from ..plugins import DATA_FORMATS

DATA_DIR_ENV = "CLUE_DATA_DIR"
BOM = "\ufeff"

Rows = Iterator[tuple[int | str, "dict | BadRow"]]


@dataclass
class BadRow:
    """A line that could not be read as a row."""

    problem: str


def _open_binary(path: Path):
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def _damaged(path: Path, err: BaseException, line_no: int) -> DataError:
    if isinstance(err, gzip.BadGzipFile) or (isinstance(err, OSError) and "gzip" in str(err).lower()):
        what = "is not a gzip file (a plain file named .gz? rename it)" if line_no <= 1 else f"is corrupt ({err})"
    elif isinstance(err, EOFError):
        what = "is truncated (the gzip stream ends early; download it again)"
    elif isinstance(err, zlib.error):
        what = f"is a corrupt gzip stream ({err}; download it again)"
    else:  # UnicodeDecodeError where the reader cannot say which line
        what = f"is not UTF-8 text ({err.reason} at byte {err.start} of the line)"
    return DataError(f"{path}:{line_no}: the file {what}")


_DAMAGE = (EOFError, zlib.error, gzip.BadGzipFile, UnicodeDecodeError)


def _text_lines(path: Path) -> Iterator[tuple[int, "str | BadRow"]]:
    """(line number, text) with the line ending removed; a line that is not UTF-8 is a BadRow."""
    line_no = 0
    try:
        with _open_binary(path) as fh:
            for line_no, raw in enumerate(fh, start=1):
                try:
                    text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
                except UnicodeDecodeError as err:
                    yield line_no, BadRow(f"not UTF-8 text (byte 0x{raw[err.start]:02x} at byte {err.start}); "
                                          "convert the file to UTF-8")
                    continue
                yield line_no, text.rstrip("\r\n")
    except _DAMAGE as err:
        raise _damaged(path, err, line_no + 1) from None


class _Lines:
    """Lines of `path` as a text file object for csv.reader; non-UTF-8 lines surface as DataError."""

    def __init__(self, path: Path):
        self.path, self.line_no = path, 0

    def __iter__(self):
        for self.line_no, text in _text_lines(self.path):
            if isinstance(text, BadRow):
                raise DataError(f"{self.path}:{self.line_no}: {text.problem}")
            yield text + "\n"


def read_delimited(path: Path, delimiter: str, columns: Optional[list[str]], header: bool) -> Rows:
    """Rows keyed by the header line (header=True; `columns` is then ignored, so a file-level
    header can override columns inherited from a task default) or by `columns` (header=False).

    ',' files follow csv quoting ("a,b" is one field); other delimiters (tab) read quotes
    literally, since Chinese text often holds unbalanced quotation marks.
    """
    if not header and columns is None:
        raise ConfigError(f"{path}: a file without a header row needs column names (columns: [...])")
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    reader = csv.reader(_Lines(path), delimiter=delimiter, quoting=quoting)
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
            yield line_no, BadRow(f"expected {len(columns)} fields ({', '.join(columns)}), found {len(fields)}")
            continue
        yield line_no, dict(zip(columns, fields))


def read_lines(path: Path, field: str = "text") -> Rows:
    """One sentence per line: {field: line}, skipping blank lines."""
    for line_no, text in _text_lines(path):
        if isinstance(text, BadRow):
            yield line_no, text
        elif text.strip():
            yield line_no, {field: text}


def read_json_document(path: Path):
    try:
        with _open_binary(path) as fh:
            data = fh.read()
    except _DAMAGE as err:
        raise _damaged(path, err, 1) from None
    text = decode_utf8(data, path, DataError, "convert the file to UTF-8")
    try:
        return json.loads(text)
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


@dataclass(frozen=True)
class DataFormat:
    """One kind of data file (`data.format` in a task YAML; registered in plugins.DATA_FORMATS).

    `read(path, columns, header)` yields (location, row dict or BadRow); `columns` and `header` are
    the task's, for formats that use them. `one_text_per_row`: a row is one text, whose field is
    `columns[0]`, else the task's inputs.text_a."""

    read: Callable[[Path, Optional[list[str]], bool], Rows]
    one_text_per_row: bool = False


JSONL = DataFormat(lambda path, columns, header: read_json_lines(path))
TSV = DataFormat(lambda path, columns, header: read_delimited(path, "\t", columns, header))
CSV = DataFormat(lambda path, columns, header: read_delimited(path, ",", columns, header))
LINES = DataFormat(lambda path, columns, header: read_lines(path, columns[0] if columns else "text"), one_text_per_row=True)
SQUAD = DataFormat(lambda path, columns, header: read_squad(path))
C3 = DataFormat(lambda path, columns, header: read_c3(path))


def read_rows(path: Path, fmt: str, columns: Optional[list[str]] = None, header: bool = False) -> Rows:
    """Rows of `path` in data format `fmt` (a plugins.DATA_FORMATS name)."""
    return DATA_FORMATS.get(fmt).read(Path(path), columns, header)


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


def read_json_lines(path: Path) -> Rows:
    for line_no, line in _text_lines(path):
        if isinstance(line, BadRow):
            yield line_no, line
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            yield line_no, BadRow(f"not valid JSON ({err.msg} at column {err.colno})")
            continue
        if not isinstance(row, dict):
            kind = "null" if row is None else type(row).__name__
            yield line_no, BadRow(f"expected a JSON object, got {kind}")
            continue
        yield line_no, row
