"""report / submit: thin commands over clue_runner.report and clue_runner.submit."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..errors import ClueRunError
from ..registry import did_you_mean
from .app import app, err, friendly_errors, out
from .tables import print_grid

DEFAULT_RESULTS = Path("results")
# Example runs shipped in the repository (docs are generated from them): reported only when named.
SHIPPED_EXAMPLES = Path(__file__).resolve().parents[2] / "results" / "examples"


def _names(values: List[str]) -> list[str]:
    """Repeatable options that also take comma lists: --task a,b --task c."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def score_grid(report):
    """A report's score table (user rows, then published ones) as a Grid, as `clue-run report` prints it."""
    from ..report import format_cell, format_score
    from .tables import Grid

    avg = ["avg"] if report.has_avg else []
    columns = ["system", *report.tasks, *avg]
    grid = Grid(columns, justify=["left"] + ["right"] * (len(columns) - 1), title="CLUE report")
    for i, row in enumerate(report.rows):
        grid.add_row(row.label, *(format_cell(row.cells.get(t)) for t in report.tasks),
                     *(format_score(row.avg(report.tasks)) for _ in avg), style="dim italic" if row.published else None,
                     # the user's rows first, then the published ones
                     section=row.published and i > 0 and not report.rows[i - 1].published)
    return grid


def _throughput_grid(report):
    from ..report import THROUGHPUT_HEADER, throughput_rows, throughput_values
    from .tables import Grid

    grid = Grid(THROUGHPUT_HEADER, justify=["left", "left"] + ["right"] * (len(THROUGHPUT_HEADER) - 2),
                title="Throughput (mean over runs)")
    for label, task, cell in throughput_rows(report):
        grid.add_row(label, task, str(cell.n), *throughput_values(cell))
    return grid


@app.command()
@friendly_errors
def report(
    results_dirs: Optional[List[Path]] = typer.Argument(None, help="Directories to search for run.json (default: the --config's output_dir, else results; the shipped results/examples only when named)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Report the runs of this experiment config's output_dir."),
    latest: bool = typer.Option(False, "--latest", help="Only the newest run per task × model × method × seed."),
    task: List[str] = typer.Option([], "--task", help="Only these tasks (repeatable or comma list); also sets the column order."),
    model: List[str] = typer.Option([], "--model", help="Only these models, by slug or name (repeatable or comma list)."),
    method: List[str] = typer.Option([], "--method", help="Only these methods, e.g. finetune+fgm (repeatable or comma list)."),
    metric: Optional[str] = typer.Option(None, "--metric", help="Score by this metric (default: each task's main metric)."),
    fmt: str = typer.Option("table", "--format", help="table, markdown, csv or json."),
    throughput: bool = typer.Option(False, "--throughput", help="Also show training samples/s, tokens/s, seconds per epoch and padding share."),
    baselines: List[str] = typer.Option([], "--baselines", help="Published baselines to set beside your runs, e.g. clue-official,bert4keras."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw scores and training curves into this PNG."),
):
    """Mean ± std over seeds per task × model × method, tasks as columns, with published baselines."""
    from .. import report as rep

    if fmt not in rep.FORMATS:
        raise ClueRunError(f"--format {fmt!r}{did_you_mean(fmt, rep.FORMATS)} (choose {', '.join(rep.FORMATS)})")
    sources = rep.load_baselines(_names(baselines))
    # A missing default results/ is just "no runs yet"; a directory the user named must exist.
    if results_dirs:
        dirs, skip = results_dirs, []
    else:
        default = DEFAULT_RESULTS
        if config is not None:
            from ..config import load_config

            default = Path(load_config(config).output_dir)
        dirs = [default] if default.is_dir() else []
        skip = [SHIPPED_EXAMPLES]  # the repository's example runs are not the user's
    runs = rep.load_runs(dirs, skip)
    if not runs and not sources:
        where = ", ".join(map(str, dirs)) or f"{DEFAULT_RESULTS} (not found)"
        raise ClueRunError(f"no run results (run.json) under {where}; train with `clue-run train` first")
    tasks = _names(task)
    runs = rep.filter_runs(runs, tasks, _names(model), _names(method),
                           extra_tasks={t for s in sources for r in s.rows for t in r.scores})
    if latest:
        runs = rep.latest_runs(runs)
    result = rep.build_report(rep.aggregate(runs, metric), tasks, sources)

    if fmt == "table":
        print_grid(score_grid(result), out)
        if throughput:
            print_grid(_throughput_grid(result), out)
        out.print("\n".join(rep.notes(result)), markup=False, highlight=False)
    else:
        text = {"markdown": lambda: rep.to_markdown(result, throughput), "csv": lambda: rep.to_csv(result, throughput),
                "json": lambda: rep.to_json(result)}[fmt]()
        out.print(text, end="", markup=False, highlight=False, emoji=False, soft_wrap=True)
    if plot is not None:
        from ..report.plots import plot_report

        err.print(f"plot: {plot_report(result, runs, plot)}", highlight=False)

@app.command()
@friendly_errors
def submit(
    run: List[Path] = typer.Option(..., "--run", help="A run directory with test predictions (repeatable)."),
    output: Path = typer.Option(..., "--output", "-o", help="The zip to write."),
    clue_version: str = typer.Option("1.1", "--clue-version", help="CLUE file names: 1.1 (default) or 1.0."),
    fewclue_split: Optional[str] = typer.Option(None, "--fewclue-split", help="FewCLUE multi-split board: 0-4 or all (names <task>_predict_<x>.json)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Where the test files are (default: each run's data directory)."),
    partial: bool = typer.Option(False, "--partial", help="Allow a FewCLUE zip without all of the board's tasks."),
):
    """Validate runs' test predictions and pack them into a leaderboard zip (nothing is written if any check fails)."""
    from ..submit import pack_submission

    entries = pack_submission(run, output, clue_version, fewclue_split, data_dir, partial)
    table = Table(title=f"{output} · {len(entries)} file(s), all checks passed")
    for col in ("file", "task", "predictions", "run"):
        table.add_column(col, justify="right" if col == "predictions" else "left")
    for e in entries:
        table.add_row(e.name, e.task.name, str(e.predictions), str(e.run_dir))
    out.print(table)
