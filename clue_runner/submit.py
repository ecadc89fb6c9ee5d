"""Write test predictions in the leaderboard formats, and pack runs' predictions into a
leaderboard zip, validating every file first.

Wrong file names and label encodings are the most reported reason CLUE submissions score 0, so
nothing is written unless every file passes: the name for the chosen board, one line per test
row, ids in test order, labels from the task's label set, lines of exactly {"id", "label"}
(or, for reading comprehension and idioms, one object keyed by every test id; for NER, entities
that are where they say in the test text).
"""

from __future__ import annotations

import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .data.splits import Example, load_split
from .errors import ClueRunError, SubmitError
from .leaderboard import submission_format
from .runs.result import TaskInfo, read_result
from .storage import atomic_file
from .tasks import TaskSpec, get_task

CLUE_VERSIONS = ("1.1", "1.0")
FEWCLUE_SPLITS = ("0", "1", "2", "3", "4", "all")
PREDICTIONS_DIR = "predictions"  # where `clue-run predict` writes, inside a run directory


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


# -- writing ---------------------------------------------------------------------------------


def format_predictions(task: TaskSpec, examples: list[Example], preds) -> str:
    """The text of a task's prediction file, in test-file order."""
    _submission(task)
    return submission_format(task).write(task, examples, preds)


# -- validating one file ---------------------------------------------------------------------


def _name_problem(task: TaskSpec, name: str, expected: str) -> str:
    spec = _submission(task)
    versions = {spec.file: "CLUE 1.1" if task.benchmark == "clue" else "single-split FewCLUE",
                spec.file_v10: "CLUE 1.0"}
    why = f" ({name} is the {versions[name]} name)" if name in versions else ""
    return f"{name}: wrong file name{why}; this board expects {expected}"


def _test_examples(task: TaskSpec, data_dir) -> tuple[str, list[Example]]:
    data = load_split(task, "test", data_dir=str(data_dir) if data_dir else None)
    return data.source, data.examples


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
    return problems + submission_format(task).problems(task, name, text, examples, test_path)


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
        return submission_format(self.task).count(self.source.read_text(encoding="utf-8"))


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
