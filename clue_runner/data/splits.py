"""Splits of a task as examples: the official CLUE/FewCLUE layouts (JSON lines, plain or .gz) or a `datasets` hub path.

Every row becomes an `Example`; a malformed row or an unknown label stops with file, line
and field, or (with `data.on_bad_row: skip`) is counted and reported in the run result. Texts longer
than a head can read are cut here, before tokenizing (`data.limits`); `SplitData.cut` names the rows.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from ..errors import DataError, first_line
from ..plugins import DATA_FORMATS, PARSERS
from ..tasks.spec import TaskSpec
from .limits import TextLimits, bound_texts
from .parsers import RowContext, RowError
from .readers import BadRow, find_file, read_json_document, read_rows, resolve_data_dir


@dataclass
class Example:
    id: Any  # as in the file (test ids go back into the submission unchanged)
    text_a: str
    text_b: Optional[str]
    # index into task.label.values, or a score; for structured tasks what the parser gives (choice
    # index, answer texts, entity spans); None for unlabelled splits
    label: Any
    extra: dict = field(default_factory=dict)  # structure from the parser; "row": the row it came from


@dataclass
class SplitData:
    task: str
    split: str
    source: str  # file path or hub path
    examples: list[Example]
    dropped: Counter = field(default_factory=Counter)  # label value -> rows dropped by design
    skipped: list[str] = field(default_factory=list)  # "file:line: field: problem" per bad row skipped
    cut: list[str] = field(default_factory=list)  # "file:line: field 'x' cut from N to M characters (why)" per text cut

    def summary(self) -> dict:
        return {
            "source": self.source,
            "examples": len(self.examples),
            "dropped": dict(self.dropped),
            "skipped": len(self.skipped),
            "skipped_first": self.skipped[:5],
            **({"cut": len(self.cut), "cut_first": self.cut[:5]} if self.cut else {}),
        }

    def cut_warning(self) -> Optional[str]:
        """One line about the texts cut before tokenizing (the first one named), or None."""
        if not self.cut:
            return None
        more = f"; {len(self.cut) - 1:,} more text(s) of {self.source} cut likewise" if len(self.cut) > 1 else ""
        return f"warning: {self.cut[0]}{more}"


def _answer_file(path: Path) -> dict:
    answers = read_json_document(path)
    if not isinstance(answers, dict):
        raise DataError(f"{path}: expected a JSON object {{blank id: answer}}")
    return answers


def _hub_rows(task: TaskSpec, split: str) -> Iterator[tuple[int, dict]]:
    from ..hub import go_offline, hub_unavailable

    hub = task.data.hub
    where = f"{hub.path}/{hub.name or ''}[{split}]"
    why = hub_unavailable()
    if why is not None:
        go_offline()  # the datasets cache only: no minute of retries
    import datasets  # imported here: only hub users pay for it

    try:
        ds = datasets.load_dataset(hub.path, hub.name, split=hub.splits.get(split, split))
    except Exception as err:  # datasets raises many kinds (connection, not found, script, cache)
        reason = f"the Hugging Face Hub cannot be reached ({why}) and it is not cached" if why else first_line(err)
        raise DataError(f"data.source hub: cannot load {where}: {reason}; use data.source: local with "
                        "data.dir (or $CLUE_DATA_DIR)") from None
    label_feature = ds.features.get(task.label.field)
    names = getattr(label_feature, "names", None)
    for i, row in enumerate(ds, start=1):
        row = dict(row)
        if names is not None:  # ClassLabel ints back to the task's label strings; -1 = unlabelled
            value = row.get(task.label.field)
            row[task.label.field] = None if value is None or value < 0 else names[value]
        yield i, row


def _label_parser(task: TaskSpec):
    """Label text → class index (categorical) or float (score), or RowError."""
    spec = task.label
    if spec.kind == "score":
        low, high = spec.range

        def score(raw: str) -> float:
            try:
                value = float(raw)
            except ValueError:
                raise RowError(spec.field, f"expected a number, got {raw!r}") from None
            if not low <= value <= high:
                raise RowError(spec.field, f"score {value} outside [{low}, {high}]")
            return value

        return score
    index = {v: i for i, v in enumerate(spec.values)}

    def category(raw: str) -> int:
        if raw not in index:
            shown = ", ".join(spec.values[:8]) + (", …" if len(spec.values) > 8 else "")
            raise RowError(spec.field, f"unknown label {raw!r} (labels: {shown})")
        return index[raw]

    return category


def _check_texts(item, inputs, allow_empty: bool) -> None:
    """Empty, blank or NUL-holding texts train on nothing (or on garbage): a bad row, not an example.
    Structured encoders check their own fields and may leave a text empty on purpose (`allow_empty`)."""
    for text, name in ((item.text_a, inputs.text_a), (item.text_b, inputs.text_b)):
        if not isinstance(text, str):
            continue
        if not text.strip() and not allow_empty:
            raise RowError(name, "the text is empty")
        if "\x00" in text:
            raise RowError(name, "the text holds a NUL character (a binary or damaged file?)")


def _row_key(row: dict, id_field: str) -> str:
    return json.dumps({k: v for k, v in row.items() if k != id_field}, sort_keys=True, ensure_ascii=False)


def _without(rows, excluded: Path, layout, id_field: str):
    """`rows` less those whose fields (the id aside: each file numbers its own rows) appear in `excluded`."""
    seen = {_row_key(row, id_field) for _, row in read_rows(excluded, layout.format, layout.columns, layout.header)
            if not isinstance(row, BadRow)}
    return ((origin, where, row) for origin, where, row in rows
            if isinstance(row, BadRow) or _row_key(row, id_field) not in seen)


def split_paths(task: TaskSpec, split: str, data_dir: Optional[str] = None,
                variant: Optional[str] = None) -> tuple[list[Path], Optional[Path]]:
    """The local files of a split (and its separate answer file): checked before anything heavy loads."""
    layout = task.split_layout(split, variant)
    directory = resolve_data_dir(data_dir) / task.data.dir
    paths = [find_file(directory, name) for name in ([layout.file] if isinstance(layout.file, str) else layout.file)]
    return paths, (find_file(directory, layout.answers) if layout.answers else None)


@dataclass
class _Source:
    """Where a split's rows come from: (origin, location, row) triples and what reading them needs."""

    origins: list[str]
    rows: Iterator[tuple[str, Any, Any]]
    inputs: Any  # the task's InputSpec, for this split's layout
    answers: Optional[dict] = None
    exclude: Optional[str] = None  # a file whose rows the split leaves out (FewCLUE heldout)


def _split_source(task: TaskSpec, split: str, data_dir, variant, source: str) -> _Source:
    if source == "hub":
        if task.data.hub is None:
            raise DataError(f"task {task.name!r} names no datasets hub path (data.hub in its YAML)")
        origin = f"hub:{task.data.hub.path}/{task.data.hub.name or ''}[{split}]"
        hub_rows = list(_hub_rows(task, split))
        return _Source([origin], ((origin, where, row) for where, row in hub_rows), task.inputs)
    layout = task.split_layout(split, variant)
    paths, answers_path = split_paths(task, split, data_dir, variant)
    columns = layout.columns or ([task.inputs.text_a] if DATA_FORMATS.get(layout.format).one_text_per_row else None)
    rows = ((str(p), where, row) for p in paths for where, row in read_rows(p, layout.format, columns, layout.header))
    inputs = task.inputs.model_copy(update={"text_b": None}) if layout.unpaired else task.inputs
    answers = _answer_file(answers_path) if answers_path is not None else None
    origins = [str(p) for p in paths]
    if layout.exclude:
        excluded = find_file(resolve_data_dir(data_dir) / task.data.dir, layout.exclude)
        origins[-1] += f" minus {excluded}"
        rows = _without(rows, excluded, layout, task.id_field)
    return _Source(origins, rows, inputs, answers, layout.exclude)


def load_split(
    task: TaskSpec,
    split: str,
    data_dir: Optional[str] = None,
    variant: Optional[str] = None,
    on_bad_row: str = "error",
    source: str = "local",
    limit: Optional[int] = None,
    training: bool = False,
    require_labels: bool = False,
    limits: Optional[TextLimits] = None,
) -> SplitData:
    """Examples of one split. `training`: the split trains a model, so targets that only training
    needs (answer spans) are checked too; `require_labels`: a row without its label is a bad row;
    `limits`: how many characters of each text the head reads (longer texts are cut, or refused)."""
    src = _split_source(task, split, data_dir, variant, source)
    parse = PARSERS.get(src.inputs.parser)
    parse_label = _label_parser(task) if task.label.kind != "structured" else None
    ctx = RowContext(training=training, answers=src.answers, labels=tuple(task.label.values))
    data = SplitData(task=task.name, split=split, source=" + ".join(src.origins), examples=[])
    for row_no, (origin, where, row) in enumerate(src.rows):
        try:
            if isinstance(row, BadRow):
                raise RowError(None, row.problem)
            items = parse(row, src.inputs, ctx)
            cuts = []
            for item in items:
                _check_texts(item, src.inputs, allow_empty=parse_label is None)
                cuts += bound_texts(item, (src.inputs.text_a, src.inputs.text_b), limits) if limits else []
            if parse_label is not None and not _set_label(task, row, items, parse_label, require_labels, data):
                continue
        except RowError as err:
            problem = f"{origin}:{where}: " + (f"field {err.field!r}: {err}" if err.field else str(err))
            if on_bad_row != "skip":
                raise DataError(problem + " (set data.on_bad_row: skip to skip such rows)") from None
            data.skipped.append(problem)
            continue
        data.cut += dict.fromkeys(f"{origin}:{where}: field {c.field!r} cut from {c.before:,} to {c.after:,} characters "
                                  f"before tokenizing ({c.why})" for c in cuts)  # a context shared by questions: once
        for item in items:
            default_id = row.get(task.id_field, where - 1 if isinstance(where, int) else where)
            data.examples.append(Example(default_id if item.id is None else item.id, item.text_a, item.text_b,
                                         item.label, {**item.extra, "row": row_no}))
        if limit is not None and len(data.examples) >= limit:
            del data.examples[limit:]
            break
    if not data.examples:
        why = f" (every row is also in {src.exclude}: choose another data.variant)" if src.exclude else ""
        raise DataError(f"{data.source}: no usable examples{why}")
    return data


def _set_label(task: TaskSpec, row: dict, items: list, parse_label, require_labels: bool, data: SplitData) -> bool:
    """One example per row, its label a plain field: set it on the row's item. False: the row is dropped
    by design (a label in label.drop, counted)."""
    raw_label = row.get(task.label.field)
    if raw_label is None and require_labels:
        raise RowError(task.label.field, "the label is missing (a training row needs one)")
    if raw_label is not None:
        raw_label = str(raw_label)  # FewCLUE writes some label codes as ints
        if raw_label in task.label.drop:
            data.dropped[raw_label] += 1
            return False
        items[0].label = parse_label(raw_label)
    return True
