"""`clue-run sweep`: run every cell of a sweep (skipping finished ones), show progress, report, optionally select."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..errors import ClueRunError
from .app import app, err, friendly_errors, out


class SweepDisplay:
    """done / running / failed / left and an ETA: a live line on a terminal, a plain line per change elsewhere."""

    def __init__(self, total: int, done: int, console):
        self.total, self.done, self.failed, self.running = total, done, 0, 0
        self.console, self.started = console, time.time()
        self.durations: list[float] = []
        self.most_running = 1
        self._last = None
        self._live = Live(Text(""), console=console, refresh_per_second=2, transient=False) if console.is_terminal else None

    def __enter__(self):
        if self._live:
            self._live.__enter__()
        self._show()
        return self

    def __exit__(self, *exc):
        if self._live:
            self._live.__exit__(*exc)

    @property
    def left(self) -> int:
        return self.total - self.done - self.failed - self.running

    def eta(self) -> Optional[float]:
        if not self.durations:
            return None
        mean = sum(self.durations) / len(self.durations)
        return mean * (self.left + self.running) / self.most_running

    def line(self) -> str:
        eta = self.eta()
        shown = "?" if eta is None else time.strftime("%H:%M:%S", time.gmtime(eta))
        return (f"sweep: {self.done} done · {self.running} running · {self.failed} failed · {self.left} left"
                f" · elapsed {time.strftime('%H:%M:%S', time.gmtime(time.time() - self.started))} · ETA {shown}")

    def update(self, running: int) -> None:
        self.running = running
        self.most_running = max(self.most_running, running)
        self._show()

    def finish(self, outcome: dict) -> None:
        if outcome["state"] == "done":
            self.done += 1
            if not outcome.get("skipped"):
                self.durations.append(outcome["seconds"])
        else:
            self.failed += 1
            self.console.print(f"[red]{outcome['state']}[/] {outcome['dir']}: {outcome.get('error', '')}",
                               highlight=False, markup=True, soft_wrap=True)
        self.running = max(0, self.running - 1)
        self._show()

    def _show(self) -> None:
        line = self.line()
        if self._live:
            self._live.update(Text(line))
        elif line.split(" · elapsed")[0] != self._last:  # a plain line only when a count changes
            self._last = line.split(" · elapsed")[0]
            self.console.print(line, highlight=False, markup=False)


def _cells_table(sw, states: dict[str, str]) -> Table:
    table = Table(title=f"sweep {sw.name}: {len(sw.cells)} cells → {sw.directory}")
    for col in ("#", "task", "model", "method", "hyperparameters", "split", "seed", "run id", "state"):
        table.add_column(col)
    for c in sw.cells:
        table.add_row(str(c.index), c.task, c.cfg.model.name, c.cfg.method_label(), c.hparam_label or "-",
                      c.cfg.data.variant or "-", str(c.seed), c.run_id, states[c.run_id])
    return table


def _running(cells, since: float, finished: set[str]) -> int:
    """Cells whose worker has started (status written this invocation) and whose outcome has not come back."""
    from ..runs.sweep import read_status

    return sum(1 for c in cells if c.run_id not in finished and read_status(c.run_dir).get("at", 0) >= since)


@app.command()
@friendly_errors
def sweep(
    config: Path = typer.Option(..., "--config", "-c", help="Sweep YAML: a base experiment and a grid."),
    set_: List[str] = typer.Option([], "--set", help="Override a key of the base experiment (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the cells and their state; write nothing."),
    launcher: Optional[str] = typer.Option(None, "--launcher", help="local (default), ray or slurm."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Runs at once (local: CPU workers; ray/slurm: a cap)."),
    retries: Optional[int] = typer.Option(None, "--retries", help="Extra attempts for a failed run (default 1)."),
    select: bool = typer.Option(False, "--select", help="Per task, keep the hyperparameters with the best dev mean over seeds; report (and predict) those runs only."),
    predict: bool = typer.Option(True, "--predict/--no-predict", help="With --select: write the chosen runs' test predictions."),
    predict_split: str = typer.Option("test", "--predict-split", help="The split --select predicts."),
):
    """Run a grid of experiments (skips finished runs, resumes interrupted ones, retries failed ones), then report it."""
    from ..runs import launchers
    from ..runs import sweep as sweeps
    from ..runs.result import read_result

    if launcher is not None and launcher not in sweeps.LAUNCHERS:
        raise ClueRunError(f"--launcher {launcher!r}: choose {', '.join(sweeps.LAUNCHERS)}")
    sw = sweeps.load_sweep(config, set_, {"launcher": launcher, "workers": workers, "retries": retries})
    states = {c.run_id: c.state() for c in sw.cells}
    if dry_run:
        out.print(_cells_table(sw, states))
        counts = {s: list(states.values()).count(s) for s in ("done", "partial", "failed", "new")}
        out.print(" · ".join(f"{n} {s}" for s, n in counts.items()) + f" · launcher {sw.config.launcher}", highlight=False)
        return
    sweeps.write_manifest(sw)
    todo = [c for c in sw.cells if states[c.run_id] != "done"]
    err.print(f"sweep {sw.name}: {len(sw.cells)} cells, {len(sw.cells) - len(todo)} already done, "
              f"{sum(states[c.run_id] == 'partial' for c in todo)} to resume · launcher {sw.config.launcher} → {sw.directory}",
              highlight=False, soft_wrap=True)
    failed, finished = [], set()
    since = time.time()
    with SweepDisplay(len(sw.cells), len(sw.cells) - len(todo), err) as display:
        if todo:
            for outcome in launchers.launch(sw, todo):
                if outcome is None:
                    display.update(_running(todo, since, finished))
                    continue
                finished.add(outcome["run_id"])
                display.finish(outcome)
                if outcome["state"] != "done":
                    failed.append(outcome)
                else:  # now, so a sweep killed later keeps the scores of every run it finished
                    _score_cell(sw, next(c for c in todo if c.run_id == outcome["run_id"]))
    _score_after(sw)
    results = {c.run_id: read_result(c.run_dir) for c in sw.cells if c.state() == "done"}
    _report(sw, results, select, predict, predict_split)
    if failed:
        err.print(f"{len(failed)} run(s) did not finish; their logs: "
                  + ", ".join(str(Path(o["dir"]) / sweeps.LOG_FILE) for o in failed), highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _score_after(sw) -> None:
    """Score every finished cell on the sweep's `evaluate:` splits it has no score for yet (a re-run fills gaps)."""
    for cell in sw.cells:
        if cell.state() == "done":
            _score_cell(sw, cell)


def _score_cell(sw, cell) -> None:
    """One finished cell's scores on the `evaluate:` splits it lacks, into its scores.json."""
    from .. import api
    from ..runs.scores import read_scores, write_scores
    from ..tasks import get_task

    if not sw.config.evaluate:
        return
    if cell.cfg.is_multitask:
        raise ClueRunError(f"{sw.source}: evaluate: scores single-task runs only (cell {cell.index} is multi-task)")
    for split in sw.config.evaluate:
        if split in read_scores(cell.run_dir):
            continue
        scored = api.evaluate(cell.run_dir, split)
        layout = get_task(cell.cfg.task).split_layout(split, cell.cfg.data.variant)
        source = " minus ".join(filter(None, [str(layout.file), layout.exclude]))
        write_scores(cell.run_dir, split, scored["metrics"], scored["examples"], source)
        err.print(f"{cell.run_dir.name}: {split} ({source}) "
                  + " ".join(f"{k}={v:.4f}" for k, v in scored["metrics"].items()), highlight=False, soft_wrap=True)


def _report_scored(runs, splits: list[str]) -> None:
    """The same rows scored on each `evaluate:` split (e.g. FewCLUE's heldout), after the eval split's."""
    from .. import report as rep
    from ..report.scored import describe, scored_on
    from .report import score_grid
    from .tables import print_grid

    for split in splits:
        rescored, sources = scored_on(runs, split)
        result = rep.build_report(rep.aggregate(rescored), None, [])
        result.extra_notes = [describe(split, sources)]
        print_grid(score_grid(result), out)
        out.print("\n".join(rep.notes(result)), markup=False, highlight=False)


def _report(sw, results: dict, select: bool, predict: bool, predict_split: str) -> None:
    """The sweep's runs as `clue-run report` shows them, each hyperparameter setting its own row."""
    from .. import report as rep
    from ..runs.sweep import select_best
    from .report import score_grid
    from .tables import print_grid

    if not results:
        err.print("no finished runs to report", highlight=False)
        return
    by_dir = {c.run_dir.resolve(): c for c in sw.cells if c.run_id in results}
    runs = [r for r in rep.load_runs([sw.directory]) if r.path.parent.resolve() in by_dir]
    keep = None
    if select:
        chosen = select_best(sw, results)
        keep = {rid for choice in chosen.values() for rid in choice["run_ids"]}
        table = Table(title=f"selected on {next(iter(results.values())).task.eval_split} (mean over seeds)")
        for col in ("task", "model", "method", "hyperparameters", "dev mean", "seeds", "of"):
            table.add_column(col)
        for (task, model, method), choice in sorted(chosen.items()):
            table.add_row(task, model, method, choice["label"] or "-", f"{100 * choice['score']:.2f}",
                          str(len(choice["run_ids"])), str(choice["candidates"]))
        out.print(table)
    labelled = []
    for run in runs:
        cell = by_dir[run.path.parent.resolve()]
        if keep is not None and cell.run_id not in keep:
            continue
        # With --select each system keeps one setting, so its usual name suffices.
        suffix = f" ({cell.hparam_label})" if cell.hparam_label and keep is None else ""
        labelled.append(dataclasses.replace(run, method=run.method + suffix))
    result = rep.build_report(rep.aggregate(labelled), None, [])
    print_grid(score_grid(result), out)
    out.print("\n".join(rep.notes(result)), markup=False, highlight=False)
    _report_scored(labelled, sw.config.evaluate)
    if select and predict:
        from .. import api

        for run in labelled:
            try:
                path = api.predict(run.path.parent, predict_split)
            except ClueRunError as e:  # e.g. a task without a submission format: say so, keep going
                err.print(f"predict {run.path.parent}: {e}", highlight=False, soft_wrap=True)
                continue
            out.print(f"predictions: {path}", highlight=False, soft_wrap=True)
