"""Write test predictions in the leaderboard formats, and pack runs' predictions into a
leaderboard zip, validating every file first.

Wrong file names and label encodings are the most reported reason CLUE submissions score 0, so
nothing is written unless every file passes: the name for the chosen board, one line per test
row, ids in test order, labels from the task's label set, lines of exactly {"id", "label"}
(or, for reading comprehension and idioms, one object keyed by every test id; for NER, entities
that are where they say in the test text).
"""

from __future__ import annotations

import json
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .data.splits import Example, load_split
from .errors import ClueRunError, SubmitError
from .runs.result import TaskInfo, read_result
from .storage import atomic_file
from .tasks import TaskSpec, get_task

CLUE_VERSIONS = ("1.1", "1.0")
FEWCLUE_SPLITS = ("0", "1", "2", "3", "4", "all")
PREDICTIONS_DIR = "predictions"  # where `clue-run predict` writes, inside a run directory
SHOWN_PER_KIND = 5  # lines quoted per kind of problem; the rest are counted


def predict_file_name(task: TaskSpec, clue_version: str = "1.1") -> str:
    """The name `clue-run predict --clue-version` gives a task's predictions."""
    spec = _submission(task)
    return spec.file_v10 if clue_version == "1.0" and spec.file_v10 else spec.file


def submission_name(task: TaskSpec, clue_version: str = "1.1", fewclue_split: Optional[str] = None) -> str:
    """The name the leaderboard expects: CLUE 1.1/1.0 names, FewCLUE names, `<stem>_predict_<x>.json`
    on FewCLUE's multi-split board."""
    name = predict_file_name(task, clue_version)
    if task.benchmark == "fewclue" and fewclue_split is not None:
        return name.replace("_predict.json", f"_predict_{fewclue_split}.json")
    return name


def _submission(task: TaskSpec):
    if task.submission is None:
        raise ClueRunError(f"task {task.name!r} defines no submission format")
    return task.submission


# -- validating one file ---------------------------------------------------------------------


def _name_problem(task: TaskSpec, name: str, expected: str) -> str:
    spec = _submission(task)
    versions = {spec.file: "CLUE 1.1" if task.benchmark == "clue" else "single-split FewCLUE",
                spec.file_v10: "CLUE 1.0"}
    why = f" ({name} is the {versions[name]} name)" if name in versions else ""
    return f"{name}: wrong file name{why}; this board expects {expected}"


def _label_problem(task: TaskSpec, label) -> Optional[tuple[str, str]]:
    values = task.label.values
    if isinstance(label, str) and label in values:
        return None
    if not isinstance(label, str) and str(label) in values:
        return "non-string labels", f"label {label!r} is not a string; write {json.dumps(str(label))}"
    problem = f"unknown label {label!r}"
    if str(label).isdigit() and int(label) < len(values):  # a class index written instead of the label code
        problem += f" (looks like a label index: index {int(label)} is {values[int(label)]!r})"
    return "unknown labels", problem + f"; labels: {', '.join(values[:8])}{', …' if len(values) > 8 else ''}"


# -- writing ---------------------------------------------------------------------------------


def format_predictions(task: TaskSpec, examples: list[Example], preds) -> str:
    """The text of a task's prediction file, in test-file order."""
    fmt = _submission(task).format
    if fmt == "json_object":  # CMRC2018: id → answer text; CHID: blank id → candidate index
        obj = {str(ex.id): p if isinstance(p, str) else int(p) for ex, p in zip(examples, preds)}
        return json.dumps(obj, ensure_ascii=False, indent=1) + "\n"
    records = []
    for ex, p in zip(examples, preds):
        if fmt == "jsonl_label":
            records.append({"id": ex.id, "label": task.label.values[p]})
        elif fmt == "jsonl_index":
            records.append({"id": ex.id, _submission(task).key: int(p)})
        else:  # jsonl_entities: the test line with its entities
            label: dict = {}
            for kind, start, end in sorted(p):
                label.setdefault(kind, {}).setdefault(ex.text_a[start : end + 1], []).append([start, end])
            records.append({"id": ex.id, "text": ex.text_a, "label": label})
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


# -- validating one file ---------------------------------------------------------------------


def _line_problem(task: TaskSpec, text: str, example: Optional[Example]) -> Optional[tuple[str, str]]:
    """(kind, description) of what is wrong with one line, or None."""
    if not text.strip():
        return "empty lines", "empty line"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        return "invalid JSON", f"not valid JSON ({err.msg} at column {err.colno})"
    fmt, key = task.submission.format, task.submission.key
    keys = {"id", key} | ({"text"} if fmt == "jsonl_entities" else set())
    if not isinstance(obj, dict) or not {"id", key} <= set(obj) <= keys:
        got = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        return "wrong keys", f"needs exactly the keys {_keys_text(keys)} (got: {got})"
    # The scorer compares line by line; ids are compared as text since 0 and "0" name the same row.
    if example is not None and str(obj["id"]) != str(example.id):
        return ("ids out of test order",
                f"id {obj['id']!r} where the test file has {example.id!r} (ids must follow the test file order)")
    if fmt == "jsonl_index":
        return _index_problem(obj[key], example, key)
    if fmt == "jsonl_entities":
        return _entities_problem(task, obj[key], example)
    return _label_problem(task, obj[key])


def _keys_text(keys: set[str]) -> str:
    names = sorted(keys)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _index_problem(label, example: Optional[Example], key: str = "label") -> Optional[tuple[str, str]]:
    count = len(example.extra["choices"]) if example is not None else None
    if not isinstance(label, int) or isinstance(label, bool) or label < 0 or (count is not None and label >= count):
        return "bad choice indices", f"{key} {label!r} is not a choice index (0–{count - 1 if count else '?'})"
    return None


def _entities_problem(task: TaskSpec, label, example: Optional[Example]) -> Optional[tuple[str, str]]:
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


def _test_examples(task: TaskSpec, data_dir) -> tuple[str, list[Example]]:
    data = load_split(task, "test", data_dir=str(data_dir) if data_dir else None)
    return data.source, data.examples


def _object_problems(task: TaskSpec, name: str, text: str, examples: list[Example], test_path: str) -> list[str]:
    """One JSON object keyed by every test id: answer texts (CMRC2018) or candidate indices (CHID)."""
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
            found = _index_problem(value, ex)
            if found:
                by_kind[found[0]].append(f"{name}: {key}: {found[1]}")
        elif ex is not None and not isinstance(value, str):
            by_kind["non-text answers"].append(f"{name}: {key}: answer {value!r} is not text")
    return problems + _summarize(name, by_kind)


def _summarize(name: str, by_kind: dict[str, list[str]]) -> list[str]:
    """Quote a few lines per kind of problem and count the rest, so 3,000 shifted ids stay readable."""
    problems = []
    for kind, lines in by_kind.items():
        problems += lines[:SHOWN_PER_KIND]
        if len(lines) > SHOWN_PER_KIND:
            problems.append(f"{name}: … and {len(lines) - SHOWN_PER_KIND} more lines with {kind}")
    return problems


def validate_prediction_file(task: TaskSpec, path: Path, data_dir, expected_name: str,
                             name: Optional[str] = None) -> list[str]:
    """Every problem with a prediction file, or [] if the leaderboard will read it as intended.

    `name` is the name the file will carry in the zip (default: its own name).
    """
    path = Path(path)
    name = name or path.name
    problems = [] if name == expected_name else [_name_problem(task, name, expected_name)]
    try:
        test_path, examples = _test_examples(task, data_dir)
        text = path.read_text(encoding="utf-8")
    except (ClueRunError, OSError, UnicodeDecodeError) as err:
        return problems + [f"{name}: cannot check: {err}"]
    if task.submission.format == "json_object":
        return problems + _object_problems(task, name, text, examples, test_path)
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    if len(lines) != len(examples):
        problems.append(f"{name}: {len(lines)} lines, but the test file {test_path} has {len(examples)} rows")
    by_kind: dict[str, list[str]] = defaultdict(list)
    for i, text in enumerate(lines):
        found = _line_problem(task, text, examples[i] if i < len(examples) else None)
        if found:
            kind, problem = found
            by_kind[kind].append(f"{name}: line {i + 1}: {problem}")
    return problems + _summarize(name, by_kind)


# -- packing runs ----------------------------------------------------------------------------


@dataclass
class Entry:
    """One file of the zip: where it comes from and the name it gets."""

    run_dir: Path
    task: TaskSpec
    source: Path
    name: str
    data_dir: Optional[str]  # the run's data directory, to find the test file

    @property
    def predictions(self) -> int:
        """Predictions in the file: lines, or the keys of a single JSON object."""
        text = self.source.read_text(encoding="utf-8")
        if self.task.submission.format == "json_object":
            return len(json.loads(text))
        return len(text.splitlines())


def _entries(run_dir: Path, clue_version: str, fewclue_split: Optional[str]) -> tuple[list[Entry], list[str]]:
    """The zip entries of one run: its task's file, or one per task of a multi-task run."""
    result = read_result(run_dir)
    data = result.config.get("data") or {}  # the config as the run was given it (see runs.result)
    if not result.is_multitask:
        entry, problems = _entry(run_dir, result.task, data.get("dir"), clue_version, fewclue_split)
        return [entry] if entry else [], problems
    data_dirs = {t["name"]: {**data, **(t.get("data") or {})}.get("dir") for t in result.config.get("tasks", [])}
    entries, problems = [], []
    for name, task in result.tasks.items():
        entry, found = _entry(run_dir, task, data_dirs.get(name), clue_version, fewclue_split)
        entries += [entry] if entry else []
        problems += found
    return entries, problems


def _entry(run_dir: Path, described: TaskInfo, data_dir: Optional[str], clue_version: str,
           fewclue_split: Optional[str]) -> tuple[Optional[Entry], list[str]]:
    task = get_task(described.name)
    if task.submission is None:
        return None, [f"{run_dir}: task {task.name!r} defines no submission format"]
    source = run_dir / PREDICTIONS_DIR / predict_file_name(task, clue_version)
    if not source.is_file():
        found = sorted(p.name for p in (run_dir / PREDICTIONS_DIR).glob("*.json"))
        hint = f" (found {', '.join(found)})" if found else ""
        version = f" --clue-version {clue_version}" if task.submission.file_v10 else ""
        return None, [f"{run_dir}: no test predictions {source.name}{hint}; "
                      f"run `clue-run predict --run {run_dir}{version}` first"]
    problems = []
    variant = described.variant
    if fewclue_split is not None and task.benchmark == "fewclue" and variant not in (fewclue_split, f"few_{fewclue_split}"):
        problems.append(f"{run_dir}: trained on FewCLUE split {variant!r}, not on split {fewclue_split!r}")
    entry = Entry(run_dir, task, source, submission_name(task, clue_version, fewclue_split), data_dir)
    return entry, problems


def _board_problems(entries: list[Entry], fewclue_split: Optional[str]) -> list[str]:
    """One zip goes to one board: no mixing of CLUE and FewCLUE, no two files with one name."""
    problems = []
    benchmarks = {e.task.benchmark for e in entries}
    if len(benchmarks) > 1:
        problems.append(f"the runs mix benchmarks ({', '.join(sorted(benchmarks))}); each leaderboard takes its own zip")
    if fewclue_split is not None and benchmarks - {"fewclue"}:
        problems.append("--fewclue-split applies to FewCLUE runs only")
    by_name: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        by_name[e.name].append(e)
    for name, same in by_name.items():
        if len(same) > 1:
            problems.append(f"{name} would come from {len(same)} runs: {', '.join(str(e.run_dir) for e in same)}")
    return problems


def _write_zip(entries: list[Entry], out: Path) -> None:
    """Write to a temporary file beside `out`, then rename: a failure leaves no partial zip."""
    with atomic_file(out) as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for e in entries:
            zf.write(e.source, arcname=e.name)


def _missing_fewclue_tasks(entries: list[Entry]) -> list[str]:
    """FewCLUE tasks with a submission format that the zip lacks (its board scores all nine)."""
    from .tasks import builtin_task_names

    if not entries or {e.task.benchmark for e in entries} != {"fewclue"}:
        return []
    board = [n for n in builtin_task_names() if get_task(n).benchmark == "fewclue" and get_task(n).submission]
    have = {e.task.name for e in entries}
    return [n for n in board if n not in have]


def pack_submission(run_dirs: list[Path], out: Path, clue_version: str = "1.1",
                    fewclue_split: Optional[str] = None, data_dir: Optional[str] = None,
                    partial: bool = False) -> list[Entry]:
    """Validate every run's predictions and zip them; on any problem raise with the full list, write nothing.

    A FewCLUE zip must hold all of the board's tasks unless `partial` (the board averages all nine,
    so a zip with one task scores as if the others were 0); CLUE accepts a subset of tasks."""
    out = Path(out)
    if out.is_dir():
        raise SubmitError(f"-o {out}: is a directory; give the zip's file name, e.g. {out / 'submission.zip'}")
    if clue_version not in CLUE_VERSIONS:
        raise ClueRunError(f"--clue-version {clue_version!r}: choose 1.1 or 1.0")
    if fewclue_split is not None and fewclue_split not in FEWCLUE_SPLITS:
        raise ClueRunError(f"--fewclue-split {fewclue_split!r}: choose one of {', '.join(FEWCLUE_SPLITS)}")
    if not run_dirs:
        raise ClueRunError("give at least one --run DIR")
    entries, problems = [], []
    for run_dir in map(Path, run_dirs):
        try:
            found_entries, found = _entries(run_dir, clue_version, fewclue_split)
        except ClueRunError as err:  # e.g. not a finished run: still list every other problem
            found_entries, found = [], [str(err)]
        problems += found
        for entry in found_entries:
            entries.append(entry)
            # The zip name is right by construction here; the name check matters for files checked on their own.
            problems += validate_prediction_file(entry.task, entry.source, data_dir or entry.data_dir, entry.name,
                                                 name=entry.name)
    problems += _board_problems(entries, fewclue_split)
    missing = _missing_fewclue_tasks(entries) if not partial else []
    if missing:
        problems.append(f"the FewCLUE board scores {len(missing) + len({e.task.name for e in entries})} tasks and "
                        f"this zip lacks {len(missing)} ({', '.join(missing)}); add their runs, or pass --partial "
                        "to submit a subset")
    if problems:
        raise SubmitError(f"submission not written ({len(problems)} problem{'s' if len(problems) > 1 else ''}): "
                          + " | ".join(problems))
    _write_zip(entries, out)
    return entries
