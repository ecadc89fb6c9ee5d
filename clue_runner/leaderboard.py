"""Leaderboard file layouts (`submission.format` in a task YAML): how a task's test predictions are
written, counted and checked. Each layout is a SubmissionFormat registered in plugins.SUBMISSION_FORMATS;
a new one is a subclass (here or in another package) plus one line in that table.

Problems are (kind, description) pairs per line, so a file with 3,000 shifted ids shows a few lines
per kind and a count of the rest (`summarize`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import TYPE_CHECKING, Optional

from .plugins import SUBMISSION_FORMATS

if TYPE_CHECKING:
    from .data.splits import Example
    from .tasks import TaskSpec

SHOWN_PER_KIND = 5  # lines quoted per kind of problem; the rest are counted

Problem = Optional[tuple[str, str]]  # (kind, description), or None: nothing wrong


def submission_format(task: TaskSpec) -> "SubmissionFormat":
    """The layout a task's submission names (its YAML was checked against the registry when loaded)."""
    return SUBMISSION_FORMATS.get(task.submission.format)


class SubmissionFormat:
    """One leaderboard file layout: write predictions, count them, list what is wrong with a file."""

    def write(self, task: TaskSpec, examples: list[Example], preds) -> str:
        """The file's text, in test-file order."""
        raise NotImplementedError

    def count(self, text: str) -> int:
        """Predictions in a file's text."""
        raise NotImplementedError

    def problems(self, task: TaskSpec, name: str, text: str, examples: list[Example], test_path: str) -> list[str]:
        """Every problem with the file's text against the test split's examples, or []."""
        raise NotImplementedError


class JsonLines(SubmissionFormat):
    """One JSON object per test row, in test order: {"id", <key>: value} (plus `extra_keys`)."""

    extra_keys: frozenset[str] = frozenset()

    def record(self, task: TaskSpec, example: Example, pred) -> dict:
        raise NotImplementedError

    def value_problem(self, task: TaskSpec, value, example: Optional[Example]) -> Problem:
        raise NotImplementedError

    def write(self, task, examples, preds) -> str:
        return "".join(json.dumps(self.record(task, ex, p), ensure_ascii=False) + "\n" for ex, p in zip(examples, preds))

    def count(self, text: str) -> int:
        return len(text.splitlines())

    def problems(self, task, name, text, examples, test_path) -> list[str]:
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()  # the newline that ends the last line
        problems = []
        if len(lines) != len(examples):
            problems.append(f"{name}: {len(lines)} lines, but the test file {test_path} has {len(examples)} rows")
        by_kind: dict[str, list[str]] = defaultdict(list)
        for i, line in enumerate(lines):
            found = self.line_problem(task, line, examples[i] if i < len(examples) else None)
            if found:
                by_kind[found[0]].append(f"{name}: line {i + 1}: {found[1]}")
        return problems + summarize(name, by_kind)

    def line_problem(self, task: TaskSpec, text: str, example: Optional[Example]) -> Problem:
        """What is wrong with one line (against its test row, when known), or None."""
        if not text.strip():
            return "empty lines", "empty line"
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            return "invalid JSON", f"not valid JSON ({err.msg} at column {err.colno})"
        key = task.submission.key
        keys = {"id", key} | self.extra_keys
        if not isinstance(obj, dict) or not {"id", key} <= set(obj) <= keys:
            got = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
            return "wrong keys", f"needs exactly the keys {_keys_text(keys)} (got: {got})"
        # The scorer compares line by line; ids are compared as text since 0 and "0" name the same row.
        if example is not None and str(obj["id"]) != str(example.id):
            return ("ids out of test order",
                    f"id {obj['id']!r} where the test file has {example.id!r} (ids must follow the test file order)")
        return self.value_problem(task, obj[key], example)


class JsonlLabel(JsonLines):
    """Classification: the label string (e.g. "100" for TNEWS), as the task's label set writes it."""

    def record(self, task, example, pred) -> dict:
        return {"id": example.id, task.submission.key: task.label.values[pred]}

    def value_problem(self, task, value, example) -> Problem:
        return label_problem(task, value)


class JsonlIndex(JsonLines):
    """Multiple choice (C3, FewCLUE CHID): the chosen option's index."""

    def record(self, task, example, pred) -> dict:
        return {"id": example.id, task.submission.key: int(pred)}

    def value_problem(self, task, value, example) -> Problem:
        return index_problem(value, example, task.submission.key)


class JsonlEntities(JsonLines):
    """CLUENER: the test line's text and its entities {type: {surface: [[start, end], ...]}}."""

    extra_keys = frozenset({"text"})

    def record(self, task, example, pred) -> dict:
        label: dict = {}
        for kind, start, end in sorted(pred):
            label.setdefault(kind, {}).setdefault(example.text_a[start : end + 1], []).append([start, end])
        return {"id": example.id, "text": example.text_a, task.submission.key: label}

    def value_problem(self, task, value, example) -> Problem:
        return entities_problem(task, value, example)


class JsonObject(SubmissionFormat):
    """One JSON object keyed by every test id: answer texts (CMRC2018) or candidate indices (CHID)."""

    def write(self, task, examples, preds) -> str:
        obj = {str(ex.id): p if isinstance(p, str) else int(p) for ex, p in zip(examples, preds)}
        return json.dumps(obj, ensure_ascii=False, indent=1) + "\n"

    def count(self, text: str) -> int:
        return len(json.loads(text))

    def problems(self, task, name, text, examples, test_path) -> list[str]:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            return [f"{name}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"]
        if not isinstance(obj, dict):
            return [f"{name}: expected one JSON object {{test id: prediction}}"]
        by_id = {str(ex.id): ex for ex in examples}
        problems = []
        missing, extra = sorted(set(by_id) - set(obj)), sorted(set(obj) - set(by_id))
        if missing:
            problems.append(f"{name}: {len(missing)} test ids of {test_path} have no prediction (first: {missing[0]!r})")
        if extra:
            problems.append(f"{name}: {len(extra)} ids are not in the test file (first: {extra[0]!r})")
        by_kind: dict[str, list[str]] = defaultdict(list)
        for key, value in obj.items():
            ex = by_id.get(key)
            if "choices" in (ex.extra if ex else {}):
                found = index_problem(value, ex)
                if found:
                    by_kind[found[0]].append(f"{name}: {key}: {found[1]}")
            elif ex is not None and not isinstance(value, str):
                by_kind["non-text answers"].append(f"{name}: {key}: answer {value!r} is not text")
        return problems + summarize(name, by_kind)


JSONL_LABEL = JsonlLabel()
JSONL_INDEX = JsonlIndex()
JSONL_ENTITIES = JsonlEntities()
JSON_OBJECT = JsonObject()


# -- checks of one value ---------------------------------------------------------------------


def label_problem(task: TaskSpec, label) -> Problem:
    values = task.label.values
    if isinstance(label, str) and label in values:
        return None
    if not isinstance(label, str) and str(label) in values:
        return "non-string labels", f"label {label!r} is not a string; write {json.dumps(str(label))}"
    problem = f"unknown label {label!r}"
    if str(label).isdigit() and int(label) < len(values):  # a class index written instead of the label code
        problem += f" (looks like a label index: index {int(label)} is {values[int(label)]!r})"
    return "unknown labels", problem + f"; labels: {', '.join(values[:8])}{', …' if len(values) > 8 else ''}"


def index_problem(label, example: Optional[Example], key: str = "label") -> Problem:
    count = len(example.extra["choices"]) if example is not None else None
    if not isinstance(label, int) or isinstance(label, bool) or label < 0 or (count is not None and label >= count):
        return "bad choice indices", f"{key} {label!r} is not a choice index (0–{count - 1 if count else '?'})"
    return None


def entities_problem(task: TaskSpec, label, example: Optional[Example]) -> Problem:
    if not isinstance(label, dict):
        return "bad entities", "label must be {type: {entity: [[start, end], ...]}}"
    for kind, entities in label.items():
        if kind not in task.label.values:
            return "bad entities", f"unknown entity type {kind!r}; types: {', '.join(task.label.values)}"
        for surface, positions in (entities if isinstance(entities, dict) else {None: None}).items():
            for pos in positions if isinstance(positions, list) else [None]:
                ok = isinstance(pos, list) and len(pos) == 2 and all(isinstance(x, int) for x in pos)
                if not ok or (example is not None and example.text_a[pos[0] : pos[1] + 1] != surface):
                    return "bad entities", f"{kind}: {surface!r} at {pos!r} does not match the test text"
    return None


def _keys_text(keys: set[str]) -> str:
    names = sorted(keys)
    return ", ".join(names[:-1]) + " and " + names[-1]


def summarize(name: str, by_kind: dict[str, list[str]]) -> list[str]:
    """Quote a few lines per kind of problem and count the rest, so 3,000 shifted ids stay readable."""
    problems = []
    for kind, lines in by_kind.items():
        problems += lines[:SHOWN_PER_KIND]
        if len(lines) > SHOWN_PER_KIND:
            problems.append(f"{name}: … and {len(lines) - SHOWN_PER_KIND} more lines with {kind}")
    return problems
