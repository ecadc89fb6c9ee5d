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
    latest: bool = typer.Option(False, "--latest", help="Only the newest run per task × model × method × split × seed."),
    task: List[str] = typer.Option([], "--task", help="Only these tasks (repeatable or comma list); also sets the column order."),
    model: List[str] = typer.Option([], "--model", help="Only these models, by slug or name (repeatable or comma list)."),
    method: List[str] = typer.Option([], "--method", help="Only these methods, e.g. finetune+fgm (repeatable or comma list)."),
    metric: Optional[str] = typer.Option(None, "--metric", help="Score by this metric (default: each task's main metric)."),
    fmt: str = typer.Option("table", "--format", help="table, markdown, csv, json or html (one self-contained page)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the report to this file instead of stdout."),
    throughput: bool = typer.Option(False, "--throughput", help="Also show training samples/s, tokens/s, seconds per epoch and padding share."),
    baselines: List[str] = typer.Option([], "--baselines", help="Published baselines to set beside your runs, e.g. clue-official,bert4keras."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw scores and training curves (with --compare: a forest plot of the differences) into this PNG."),
    compare: Optional[str] = typer.Option(None, "--compare", help="Paired comparisons against this system (a method, model or 'model · method'), or 'all' pairs."),
    aso: bool = typer.Option(False, "--aso", help="With --compare: add deepsig's almost-stochastic-order ε_min."),
    scored_on: Optional[str] = typer.Option(None, "--scored-on", help="Score cells on a split scored after training (e.g. heldout, the FewCLUE protocol's) instead of the eval split."),
):
    """Mean [95 % interval] over runs per task × model × method, tasks as columns, with published baselines;
    paired comparisons with --compare."""
    from .. import report as rep

    if fmt not in rep.FORMATS:
        raise ClueRunError(f"--format {fmt!r}{did_you_mean(fmt, rep.FORMATS)} (choose {', '.join(rep.FORMATS)})")
    sources = rep.load_baselines(_names(baselines))
    runs = _runs(results_dirs, config, sources)
    runs = rep.filter_runs(runs, _names(task), _names(model), _names(method),
                           extra_tasks={t for s in sources for r in s.rows for t in r.scores})
    if latest:
        runs = rep.latest_runs(runs)
    notes = []
    if scored_on is not None:
        from ..report.scored import describe, scored_on as rescore

        runs, scored_files = rescore(runs, scored_on)
        notes.append(describe(scored_on, scored_files))
    groups = rep.aggregate(runs, metric)
    result = rep.build_report(groups, _names(task), sources)
    result.extra_notes = notes
    comparisons = None
    if compare is not None:
        from ..report.compare import compare as pair

        why = f"the scores are on {scored_on}, the saved predictions on the eval split" if scored_on else ""
        comparisons = pair(groups, compare, with_aso=aso, no_examples=why)
        order = {t: i for i, t in enumerate(result.tasks)}
        comparisons.sort(key=lambda c: order.get(c.task, len(order)))  # the report's column order
        if fmt == "csv":
            err.print("--compare: CSV holds the scores with their intervals; the comparisons are in the table, "
                      "markdown, json and html formats", highlight=False)
    _emit(result, runs, comparisons, fmt, output, throughput, aso)
    if plot is not None:
        if comparisons is not None:
            from ..report.plots import plot_forest

            err.print(f"plot: {plot_forest(comparisons, plot)}", highlight=False)
        else:
            from ..report.plots import plot_report

            err.print(f"plot: {plot_report(result, runs, plot)}", highlight=False)


def _runs(results_dirs, config, sources):
    """The runs under the named directories, else the config's output_dir or results/ (a missing default is no runs)."""
    from .. import report as rep

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
    return runs


def _emit(result, runs, comparisons, fmt: str, output: Optional[Path], throughput: bool, aso: bool) -> None:
    from .. import report as rep
    from ..report import compare as cmp

    if fmt == "table" and output is None:
        print_grid(score_grid(result), out)
        if throughput:
            print_grid(_throughput_grid(result), out)
        if comparisons:
            print_grid(_comparison_grid(comparisons), out)
        lines = rep.notes(result) + (cmp.footnote(comparisons, aso, _has_deepsig()) if comparisons else [])
        out.print("\n".join(lines), markup=False, highlight=False)
        return
    if fmt == "html":
        from ..report.html import to_html

        text = to_html(result, runs, comparisons, aso and _has_deepsig())
    elif fmt == "json":
        text = rep.to_json(result, cmp.to_dicts(comparisons) if comparisons else None)
    elif fmt == "csv":
        text = rep.to_csv(result, throughput)
    else:  # markdown (also a table written to a file)
        text = rep.to_markdown(result, throughput)
        if comparisons:
            text += "\n" + "\n".join([*cmp.to_markdown_table(comparisons), "", *cmp.footnote(comparisons, aso, _has_deepsig())]) + "\n"
    if output is not None:
        from ..storage import atomic_write_text

        atomic_write_text(output, text)
        err.print(f"report: {output}", highlight=False)
    else:
        out.print(text, end="", markup=False, highlight=False, emoji=False, soft_wrap=True)


def _has_deepsig() -> bool:
    import importlib.util

    return importlib.util.find_spec("deepsig") is not None


def _comparison_grid(comparisons):
    from ..report.compare import HEADER, values
    from .tables import Grid

    grid = Grid(HEADER, justify=["left"] * 3 + ["right"] * (len(HEADER) - 3), title="Paired comparisons")
    for c in comparisons:
        grid.add_row(*values(c))
    return grid

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
