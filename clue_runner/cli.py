"""`clue-run`: a thin CLI over clue_runner.api. Tables go to stdout, logs and progress to stderr."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import ClueRunError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Fine-tune and score Chinese encoders on CLUE-style tasks.")
tasks_app = typer.Typer(no_args_is_help=True, help="List and inspect the task registry.")
model_app = typer.Typer(no_args_is_help=True, help="Prepare models (packaged model conversion, vocabulary trimming).")
app.add_typer(tasks_app, name="tasks")
app.add_typer(model_app, name="model")

out = Console()
err = Console(stderr=True)
DEBUG_ENV = "CLUE_RUN_DEBUG"


def friendly_errors(fn):
    """Known errors become one clear line and exit code 2; CLUE_RUN_DEBUG=1 shows the traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ClueRunError as e:
            if os.environ.get(DEBUG_ENV):
                raise
            err.print(f"[bold red]error:[/] {e}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(2)

    return wrapper


def _metrics_table(title: str, rows: list[tuple[str, dict]]) -> Table:
    names = list(rows[0][1]) if rows else []
    table = Table(title=title)
    table.add_column("")
    for n in names:
        table.add_column(n, justify="right")
    for label, metrics in rows:
        table.add_row(label, *(f"{metrics[n]:.4f}" for n in names))
    return table


@app.command()
@friendly_errors
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Experiment YAML."),
    set_: List[str] = typer.Option([], "--set", help="Override a config key, e.g. --set train.lr=3e-5 (repeatable)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated seeds: one run per seed, e.g. 1,2,3."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted run directory."),
):
    """Fine-tune a model on a task and write a scored run JSON."""
    from . import api
    from .config import load_config

    if resume is not None:
        run_dirs = [api.train(None, resume=resume)]
    else:
        if config is None:
            raise ClueRunError("give --config FILE (or --resume RUN_DIR)")
        cfg = load_config(config, set_)
        seed_list = [cfg.train.seed]
        if seeds:
            try:
                seed_list = [int(s) for s in seeds.split(",") if s.strip()]
            except ValueError:
                raise ClueRunError(f"--seeds {seeds!r}: expected comma-separated integers, e.g. 1,2,3") from None
        run_dirs = []
        for seed in seed_list:
            run_cfg = cfg.model_copy(deep=True)
            run_cfg.train.seed = seed
            run_dirs.append(api.train(run_cfg))
    rows = []
    for run_dir in run_dirs:
        result = api.read_run(run_dir)
        rows.append((f"{result['task']['name']} seed {result['seed']} (step {result['best']['step']})", result["best"]["metrics"]))
        out.print(str(run_dir / "run.json"), highlight=False, soft_wrap=True)
    out.print(_metrics_table(f"best on {run_dirs and api.read_run(run_dirs[0])['task']['eval_split']}", rows))


@app.command("eval")
@friendly_errors
def eval_(
    run: Path = typer.Option(..., "--run", help="A run directory written by `clue-run train`."),
    split: str = typer.Option("dev", "--split"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir"),
    device: str = typer.Option("auto", "--device"),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Score a run's best checkpoint on a labelled split."""
    from . import api

    result = api.evaluate(run, split, data_dir, device)
    if as_json:
        out.print_json(json.dumps(result))
    else:
        out.print(_metrics_table(f"{result['task']} · {split} · {result['examples']} examples", [(str(run), result["metrics"])]))


@app.command()
@friendly_errors
def predict(
    run: Path = typer.Option(..., "--run", help="A run directory written by `clue-run train`."),
    split: str = typer.Option("test", "--split"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir"),
    clue_version: str = typer.Option("1.1", "--clue-version", help="Leaderboard file names: 1.1 (default) or 1.0."),
    output: Optional[Path] = typer.Option(None, "--output", "-o"),
    device: str = typer.Option("auto", "--device"),
):
    """Write test-set predictions in the CLUE leaderboard format."""
    from . import api

    if clue_version not in ("1.0", "1.1"):
        raise ClueRunError(f"--clue-version {clue_version!r}: choose 1.0 or 1.1")
    path = api.predict(run, split, data_dir, clue_version, output, device)
    out.print(str(path), highlight=False, soft_wrap=True)


@tasks_app.command("list")
@friendly_errors
def tasks_list():
    """Every built-in task with its head, labels and main metric."""
    from .tasks import builtin_task_names, get_task

    table = Table()
    for col in ("task", "benchmark", "head", "labels", "main metric", "description"):
        table.add_column(col)
    for name in builtin_task_names():
        t = get_task(name)
        table.add_row(name, t.benchmark, t.head, str(len(t.label.values)), t.main_metric, t.description)
    out.print(table)


@tasks_app.command("show")
@friendly_errors
def tasks_show(name: str):
    """The full definition of one task."""
    import yaml

    from .tasks import get_task

    out.print(yaml.safe_dump(get_task(name).model_dump(mode="json"), allow_unicode=True, sort_keys=False), highlight=False)


def main():
    app()


if __name__ == "__main__":
    sys.exit(main())
