"""Reports over finished runs: load every run.json, group by task × model × method, pivot tasks into columns.

Scores are each run's best checkpoint (chosen by the task's main metric) ×100; a group shows the
mean, the sample standard deviation (ddof=1), n and the 95 % t interval of the mean over its runs
(seeds × FewCLUE splits; report/stats.py). Published baselines (clue_runner/report/baselines/*.yaml)
become extra rows, marked as published, and never enter the user's groups or averages.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable, Optional

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import ClueRunError
from ..registry import did_you_mean
from ..runs.result import (RESULT_FILE, HistoryEntry, ModelInfo, RunResult, TaskInfo, Throughput, describe_adaptation,
                           read_result)
from .stats import t_interval

FORMATS = ("table", "markdown", "csv", "json", "html")


# -- runs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """The fields of one run.json that reports use."""

    path: Path
    run_id: str
    task: str
    model: str  # the model slug, with its adaptation if any: the rows' label
    model_name: str
    method: str
    seed: int
    created_at: str
    main_metric: str
    eval_split: str
    best: dict[str, float]
    best_step: int  # the best checkpoint's step (a multi-task run's, chosen by its weighted score)
    history: list[HistoryEntry]
    throughput: Throughput
    model_slug: str  # the bare slug: results are grouped under it on disk
    variant: Optional[str] = None  # the data split variant trained on (FewCLUE 0-4, few_all); None: the task's default

    @property
    def system(self) -> tuple[str, str]:
        return self.model, self.method


def _model_label(model: ModelInfo) -> str:
    """The slug, plus "(adapted on N sentences)" for a model whose heads `adapt-mlm` trained: its prompt
    results are a stand-in's, never a pretrained checkpoint's, and every row says so."""
    adapted = describe_adaptation(model.adapted)
    return f"{model.slug} ({adapted})" if adapted else model.slug


def runs_from_result(path: Path, result: RunResult) -> list[Run]:
    """The report's runs of one run.json: one, or one per task of a multi-task run (its system label
    names the tasks and the weighting, e.g. multitask(tnews+csldcp, realtime, proportional))."""
    if not result.is_multitask:
        return [_run(path, result, result.task, result.best.metrics, result.history)]
    runs = []
    for name, task in result.tasks.items():
        prefix = f"{name}/"
        history = [h.model_copy(update={"metrics": {k[len(prefix):]: v for k, v in h.metrics.items() if k.startswith(prefix)}})
                   for h in result.history]
        runs.append(_run(path, result, task, task.best, history))
    return runs


def _run(path: Path, result: RunResult, task: TaskInfo, best: dict[str, float], history: list[HistoryEntry]) -> Run:
    return Run(path=path, run_id=result.run_id, task=task.name, model=_model_label(result.model),
               model_name=result.model.name, method=result.method, seed=result.seed, created_at=result.created_at,
               main_metric=task.main_metric, eval_split=task.eval_split, best=best, best_step=result.best.step,
               history=history, throughput=result.throughput, model_slug=result.model.slug,
               # the resolved split (a task's default spelled out), else the config's
               variant=task.variant or ((result.config or {}).get("data") or {}).get("variant"))


def load_runs(dirs: Iterable[Path], skip: Iterable[Path] = ()) -> list[Run]:
    """Every run.json below the given directories (except below `skip`); directories without one are skipped."""
    runs = []
    skipped = [Path(p).resolve() for p in skip]
    for directory in map(Path, dirs):
        if not directory.exists():
            raise ClueRunError(f"results directory not found: {directory}")
        for path in sorted(directory.rglob(RESULT_FILE)):
            if any(path.resolve().is_relative_to(s) for s in skipped):
                continue
            # read_result refuses unknown schema versions and malformed files, naming the file
            runs += runs_from_result(path, read_result(path))
    return runs


def _check_filter(option: str, wanted: list[str], known: set[str]) -> None:
    for value in wanted:
        if value not in known:
            raise ClueRunError(f"{option} {value!r} matches no run{did_you_mean(value, known)}"
                               f" (found: {', '.join(sorted(known)) or 'none'})")


def filter_runs(runs: list[Run], tasks: list[str] = (), models: list[str] = (), methods: list[str] = (),
                extra_tasks: Iterable[str] = ()) -> list[Run]:
    """Keep runs matching every given filter (a model matches by its label, slug or name). A filter value that
    matches nothing is an error, except task names that only published baselines have."""
    _check_filter("--task", list(tasks), {r.task for r in runs} | set(extra_tasks))
    _check_filter("--model", list(models), {r.model for r in runs} | {r.model_slug for r in runs} | {r.model_name for r in runs})
    _check_filter("--method", list(methods), {r.method for r in runs})
    return [r for r in runs
            if (not tasks or r.task in tasks)
            and (not models or {r.model, r.model_slug, r.model_name} & set(models))
            and (not methods or r.method in methods)]


def latest_runs(runs: list[Run]) -> list[Run]:
    """The newest run per task × model × method × split × seed (a re-run replaces the older one)."""
    newest: dict[tuple, Run] = {}
    for run in runs:
        key = (run.task, run.model, run.method, run.variant, run.seed)
        if key not in newest or (run.created_at, run.run_id) > (newest[key].created_at, newest[key].run_id):
            newest[key] = run
    return [r for r in runs if newest[(r.task, r.model, r.method, r.variant, r.seed)] is r]


# -- groups ----------------------------------------------------------------------------------


@dataclass
class Group:
    task: str
    model: str
    method: str
    metric: str
    runs: list[Run]
    scores: list[float]  # ×100, one per run

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores)

    @property
    def std(self) -> Optional[float]:
        return statistics.stdev(self.scores) if self.n > 1 else None  # sample std; undefined for one run

    @property
    def interval(self) -> Optional[tuple[float, float]]:
        return t_interval(self.scores)

    def throughput_mean(self, key: str) -> Optional[float]:
        values = [getattr(r.throughput, key) for r in self.runs if getattr(r.throughput, key) is not None]
        return statistics.fmean(values) if values else None

    def seconds_per_epoch(self) -> Optional[float]:
        """Training time (evaluation excluded) over the epochs the runs trained."""
        values = [r.throughput.train_seconds / r.history[-1].epoch for r in self.runs
                  if r.throughput.train_seconds and r.history and r.history[-1].epoch]
        return statistics.fmean(values) if values else None


def _score(run: Run, metric: str) -> float:
    if metric not in run.best:
        raise ClueRunError(f"{run.path}: no metric {metric!r} in its best scores (has: {', '.join(run.best)})")
    return run.best[metric] * 100


def aggregate(runs: list[Run], metric: Optional[str] = None) -> list[Group]:
    """One group per task × model × method, scored by `metric` (default: each task's main metric)
    at the best checkpoint."""
    buckets: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        buckets[(run.task, run.model, run.method)].append(run)
    groups = []
    for (task, model, method), members in sorted(buckets.items()):
        name = metric or members[0].main_metric
        groups.append(Group(task, model, method, name, members, [_score(r, name) for r in members]))
    return groups


# -- published baselines ---------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaselineRow(_Strict):
    model: str
    method: str
    split: Optional[str] = None  # test / dev / test_public; None where the source does not say
    scores: dict[str, float]  # our task name -> score ×100, as published
    reported_avg: Optional[float] = None  # the source's own average over its tasks


class BaselineSource(_Strict):
    name: str
    title: str
    source: str
    metric: str
    note: str = ""
    rows: list[BaselineRow]


def _baseline_dir():
    return resources.files("clue_runner.report") / "baselines"


def baseline_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in _baseline_dir().iterdir() if p.name.endswith(".yaml"))


def load_baselines(names: Iterable[str]) -> list[BaselineSource]:
    known = baseline_names()
    sources = []
    for name in names:
        if name not in known:
            raise ClueRunError(f"unknown baselines {name!r}{did_you_mean(name, known)} (known: {', '.join(known)})")
        try:
            source = BaselineSource.model_validate(yaml.safe_load((_baseline_dir() / f"{name}.yaml").read_text(encoding="utf-8")))
        except (yaml.YAMLError, ValidationError) as err:
            raise ClueRunError(f"baselines {name}: invalid data: {err}") from None
        sources.append(source)
    return sources


# -- the pivoted report ----------------------------------------------------------------------


@dataclass
class Cell:
    mean: float
    std: Optional[float] = None
    n: Optional[int] = None  # None for published numbers
    scores: list[float] = field(default_factory=list)
    train_samples_per_s: Optional[float] = None
    padding_share: Optional[float] = None
    seconds_per_epoch: Optional[float] = None
    train_tokens_per_s: Optional[float] = None
    train_cpu_seconds: Optional[float] = None  # mean per run: on a shared machine, the comparable cost
    eval_samples_per_s: Optional[float] = None  # items (windows, for reading comprehension) scored per second
    ci_low: Optional[float] = None  # the 95 % t interval of the mean over the runs
    ci_high: Optional[float] = None
    per_run: list[dict] = field(default_factory=list)  # {"split", "seed", "score", "run"} per run


@dataclass
class Row:
    model: str
    method: str
    cells: dict[str, Cell]
    source: Optional[str] = None  # baseline name; None for the user's own runs
    split: Optional[str] = None

    @property
    def published(self) -> bool:
        return self.source is not None

    @property
    def label(self) -> str:
        if not self.published:
            return f"{self.model} · {self.method}"
        tag = ", ".join(filter(None, [self.split, self.source]))
        return f"{self.model} · {self.method} · published ({tag})"

    def avg(self, tasks: list[str]) -> Optional[float]:
        """Mean over the shown tasks, only when the row has every one of them."""
        if any(t not in self.cells for t in tasks):
            return None
        return statistics.fmean(self.cells[t].mean for t in tasks)


@dataclass
class Report:
    tasks: list[str]
    metrics: dict[str, str]  # task -> metric of the user's runs
    eval_splits: list[str]
    rows: list[Row]
    sources: list[BaselineSource]
    extra_notes: list[str] = field(default_factory=list)  # e.g. which split the cells were scored on

    @property
    def has_avg(self) -> bool:
        return len(self.tasks) > 1  # the average of one task would only repeat it


def _group_cell(group: Group) -> Cell:
    low, high = group.interval or (None, None)
    per_run = [{"split": r.variant, "seed": r.seed, "score": round(s, 6), "run": r.run_id} for r, s in zip(group.runs, group.scores)]
    return Cell(group.mean, group.std, group.n, group.scores,
                group.throughput_mean("train_samples_per_s"), group.throughput_mean("padding_share"),
                group.seconds_per_epoch(), group.throughput_mean("train_tokens_per_s"),
                group.throughput_mean("train_cpu_seconds"), group.throughput_mean("eval_samples_per_s"),
                low, high, per_run)


def build_report(groups: list[Group], tasks: Optional[list[str]] = None,
                 sources: list[BaselineSource] = ()) -> Report:
    """Pivot groups into rows (model · method) × task columns, then append published rows.

    Columns: the given tasks, else the tasks of the user's runs, else (baselines only) the baselines' tasks.
    """
    if not tasks:
        tasks = sorted({g.task for g in groups}) or list(dict.fromkeys(
            t for s in sources for r in s.rows for t in r.scores))
    rows: dict[tuple[str, str], Row] = {}
    for g in groups:
        if g.task in tasks:
            rows.setdefault((g.model, g.method), Row(g.model, g.method, {})).cells[g.task] = _group_cell(g)
    published = []
    for source in sources:
        for b in source.rows:
            cells = {t: Cell(b.scores[t]) for t in tasks if t in b.scores}
            if cells:
                published.append(Row(b.model, b.method, cells, source.name, b.split))
    return Report(
        tasks=list(tasks),
        metrics={g.task: g.metric for g in groups if g.task in tasks},
        eval_splits=sorted({r.eval_split for g in groups for r in g.runs}),
        rows=list(rows.values()) + published,
        sources=[s for s in sources if any(r.source == s.name for r in published)],
    )


# -- output ----------------------------------------------------------------------------------


def format_score(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.2f}"


def format_count(value: Optional[float]) -> str:
    return "" if value is None else f"{value:,.0f}"


def format_share(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.1%}"


def format_cell(cell: Optional[Cell]) -> str:
    if cell is None:
        return ""
    if cell.n is None:
        return format_score(cell.mean)
    spread = f" [{cell.ci_low:.2f}, {cell.ci_high:.2f}]" if cell.ci_low is not None else ""
    return f"{cell.mean:.2f}{spread} (n={cell.n})"


def notes(report: Report) -> list[str]:
    """What the numbers are, and where published rows come from."""
    lines = []
    if report.metrics:
        metrics = ", ".join(f"{t} {m}" for t, m in report.metrics.items())
        lines.append(f"Cells: best {'/'.join(report.eval_splits)} score ×100 per run ({metrics}); "
                     "mean [95 % t interval of the mean] over n runs (seeds × splits; none for n=1)." + (" avg: only where every shown task is present."
                                                         if report.has_avg else ""))
    lines += report.extra_notes
    if report.sources:
        lines.append("Published rows are copied from their sources, never part of your groups or averages:")
        lines += [f"- {s.name}: {s.title}; {s.metric}; {s.source}" + (f". {s.note}" if s.note else "")
                  for s in report.sources]
    return lines


THROUGHPUT_HEADER = ["system", "task", "n", "train samples/s", "tokens/s", "s/epoch", "train CPU s",
                     "padding share", "eval samples/s"]


def throughput_values(cell: Cell) -> list[str]:
    """A cell's throughput columns after system, task and n (THROUGHPUT_HEADER)."""
    return [format_score(cell.train_samples_per_s), format_count(cell.train_tokens_per_s),
            format_score(cell.seconds_per_epoch), format_count(cell.train_cpu_seconds),
            format_share(cell.padding_share), format_score(cell.eval_samples_per_s)]


def throughput_rows(report: Report) -> list[tuple[str, str, Cell]]:
    """(system, task, cell) for every user cell: throughput is measured, never published."""
    return [(row.label, t, row.cells[t]) for row in report.rows if not row.published
            for t in report.tasks if t in row.cells]


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def to_markdown(report: Report, throughput: bool = False) -> str:
    avg = ["avg"] if report.has_avg else []
    body = [[row.label, *(format_cell(row.cells.get(t)) for t in report.tasks),
             *(format_score(row.avg(report.tasks)) for _ in avg)] for row in report.rows]
    lines = _markdown_table(["system", *report.tasks, *avg], body)
    if throughput:
        lines += ["", *_markdown_table(
            THROUGHPUT_HEADER,
            [[label, task, str(c.n), *throughput_values(c)]
             for label, task, c in throughput_rows(report)])]
    return "\n".join(lines + [""] + notes(report)) + "\n"


def _csv_value(value):
    return "" if value is None else round(value, 4)


def to_csv(report: Report, throughput: bool = False) -> str:
    """One row per system; per task: mean, std, n, the 95 % interval (and, with throughput, samples/s and padding share)."""
    per_task = ["mean", "std", "n", "ci_low", "ci_high"] + (
        ["train_samples_per_s", "train_tokens_per_s", "seconds_per_epoch", "train_cpu_seconds", "padding_share",
         "eval_samples_per_s"] if throughput else [])
    avg = ["avg"] if report.has_avg else []
    header = ["system", "model", "method", "source", "split"] + [f"{t} {k}" for t in report.tasks for k in per_task] + avg
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in report.rows:
        values = [row.label, row.model, row.method, row.source or "", row.split or ""]
        for t in report.tasks:
            cell = row.cells.get(t)
            values += [_csv_value(getattr(cell, k) if cell else None) for k in per_task]
        writer.writerow(values + [_csv_value(row.avg(report.tasks)) for _ in avg])
    return buffer.getvalue()


def _round(value, digits: int = 6):
    """Drop the float noise of ×100 (0.55 * 100 = 55.00000000000001), keep real precision."""
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None  # an undefined score (NaN) is JSON null, not the invalid literal NaN
    return round(value, digits) if isinstance(value, float) else value


def _round_deep(value):
    if isinstance(value, dict):
        return {k: _round_deep(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round_deep(v) for v in value]
    return _round(value)


def to_json(report: Report, comparisons: Optional[list[dict]] = None) -> str:
    """Everything: cells carry their per-run scores and throughput; `comparisons` (report/compare.py) if made."""

    def cell(c: Cell) -> dict:
        return {k: _round(v) for k, v in vars(c).items() if v is not None and v != []}

    data = {
        "tasks": report.tasks,
        "metrics": report.metrics,
        "eval_splits": report.eval_splits,
        "rows": [{"label": r.label, "model": r.model, "method": r.method, "published": r.published,
                  "source": r.source, "split": r.split, "cells": {t: cell(c) for t, c in r.cells.items()},
                  "avg": _round(r.avg(report.tasks)) if report.has_avg else None} for r in report.rows],
        "sources": [s.model_dump(exclude={"rows"}) for s in report.sources],
    }
    if comparisons is not None:
        data["comparisons"] = _round_deep(comparisons)
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"
