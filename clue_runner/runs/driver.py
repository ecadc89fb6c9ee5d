"""`clue-run train`, top to bottom (after nanoGPT's train.py):

    prepare    runs.prepare.prepare         splits loaded and checked, the model built, splits featurized
    run dir    runs.rundir.RunDir           a new run directory, or the interrupted one recovered
    trainer    engine.trainer.Trainer       handed the evaluator and the best/ checkpoint policy
    events     fit                          logged as the trainer yields them
    best/      engine.checkpoint.BestCheckpoint   saved by the trainer after each improvement
    run.json   run_result → runs.result.write_result; then the resume state goes

Data parallel: every process trains; rank 0 alone logs and writes (the others follow read-only).
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from ..config import ExperimentConfig
from ..engine import distributed
from ..engine.source import silent
from ..errors import DiskError, RunError, disk_error_line, is_disk_error
from .naming import model_slug
from .prepare import load_task_data, prepare
from .result import RESULT_FILE, SCHEMA_VERSION, environment, write_result
from .rundir import RunDir, saved_config


def console_log(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(message, highlight=False)


def train(cfg: Optional[ExperimentConfig], resume: Optional[Path] = None, on_event: Optional[Callable] = None,
          log: Optional[Callable[[str], None]] = None, run_dir: Optional[Path] = None) -> Path:
    """Fine-tune, keep the best checkpoint, write the run JSON; returns the run directory (see `api.train`)."""
    clock = time.perf_counter()
    writes = distributed.is_main()
    log = silent if not writes else (log or console_log)
    if run_dir is not None and (Path(run_dir) / RESULT_FILE).is_file():
        raise RunError(f"{run_dir} already holds a finished run ({RESULT_FILE}); choose another --run-dir")
    run = None
    if resume is not None:  # rank 0 locks the run; the other ranks only read it
        run = RunDir.open(Path(resume)) if writes else RunDir.follow(Path(resume))
    try:
        if run is not None and run.finished:  # resuming is idempotent: a finished run only loses its leftovers
            if writes:
                run.recover()
            log(f"{run.path} already finished ({RESULT_FILE}); nothing left to resume")
            return run.path
        if run is not None:
            cfg = saved_config(run.path)
        prepared = prepare(cfg, log)  # everything that can fail on bad input, before a run directory exists
        run = open_run_dir(cfg, run, run_dir, writes)
        return fit(cfg, prepared, run, on_event, log, clock)
    except OSError as err:
        if not is_disk_error(err):
            raise
        then = f"then continue with `clue-run train --resume {run.path}`" if run is not None else "then run again"
        raise DiskError(disk_error_line(err, then)) from None
    finally:
        if run is not None:
            run.release()


def open_run_dir(cfg: ExperimentConfig, run: Optional[RunDir], path: Optional[Path], writes: bool) -> RunDir:
    """The interrupted run recovered, a new run directory (at `path`: a sweep's cell), or for a data-parallel
    rank > 0 somewhere to not write."""
    if run is not None:
        if writes:
            run.recover()
        return run
    if not writes:
        return RunDir.scratch()
    import yaml

    config_text = yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True, sort_keys=False)
    return RunDir.create(cfg.output_dir, cfg.run_name, cfg.model.name, cfg.train.seed, config_text, path=path)


def fit(cfg: ExperimentConfig, prepared, run: RunDir, on_event, log: Callable[[str], None], clock: float) -> Path:
    from ..engine.checkpoint import BestCheckpoint
    from ..engine.trainer import Trainer

    built = prepared.built
    writes = distributed.is_main()
    checkpoints = BestCheckpoint(run.best, built.module, built.tokenizer, built.methods, writes=writes)
    trainer = Trainer(built.module, built.module.loss, built.methods, prepared.train_source, prepared.evaluator,
                      cfg.train, built.tokenizer.pad_token_id, built.device, checkpoints, resume_dir=run.resume,
                      log_dir=run.path / "logs", run_config=cfg.model_dump(mode="json"))
    counts = built.parameter_counts()
    log(f"{prepared.summary_line(cfg)} · {trainer.total_steps} steps on {built.device} · "
        f"{counts['trainable']:,} of {counts['total']:,} parameters trained")
    for event in trainer.run():
        if event.kind == "eval":
            log(eval_line(event))
            if event.improved and writes:  # best/ holds this step now: its per-example predictions beside it
                keep_predictions(run.path, prepared, state_step=event.state.best["step"])
        if on_event is not None:
            on_event(event)
    trainer.close_loggers()
    if not writes:
        return run.path
    state = trainer.state
    write_result(run.path, run_result(cfg, prepared, state, run.path.name, clock))
    shutil.rmtree(run.resume, ignore_errors=True)  # the resume state (twice the model) has served its purpose
    main = prepared.evaluator.main_metric
    log(f"best {main} {state.best['metrics'][main]:.4f} at step {state.best['step']} → {run.path / RESULT_FILE}")
    return run.path


def keep_predictions(run_dir: Path, prepared, state_step: int) -> None:
    """`predictions.npz` for paired bootstraps over examples (single-task runs; report/compare.py reads it)."""
    from .predictions import save_predictions

    last = prepared.evaluator.last_predictions
    if not prepared.built.multitask and last is not None:
        save_predictions(run_dir, prepared.task, prepared.evaluator.enc, last.predictions, last.ids, state_step)


def eval_line(event) -> str:
    rec = event.state.history[-1]
    shown = " ".join(f"{k}={v:.4f}" for k, v in event.metrics.items())
    loss = f"loss {rec['train_loss']:.4f} " if rec["train_loss"] is not None else ""
    return f"step {rec['step']} epoch {rec['epoch']:.2f} {loss}{shown}" + (" [green]best[/]" if event.improved else "")


def run_result(cfg: ExperimentConfig, prepared, state, run_id: str, clock: float) -> dict:
    """The run JSON's content (runs.result documents the schema)."""
    built, evaluator = prepared.built, prepared.evaluator
    counts = built.parameter_counts()
    result = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "status": "completed",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": prepared.task_result(cfg),
        "model": {"name": cfg.model.name, "slug": model_slug(cfg.model.name), "resolved": built.model_path,
                  "parameters": counts["total"], "trainable_parameters": counts["trainable"],
                  "load_report": built.load_report,
                  # a stand-in head trained by `clue-run model adapt-mlm`: reports label it "adapted on N sentences"
                  "adapted": getattr(built.module.backbone.config, "clue_run_adapted", None)},
        "method": cfg.method_label(),
        "methods": {m.name: m.summary() for m in built.methods if m.summary()},
        "seed": cfg.train.seed,
        "config": cfg.model_dump(mode="json"),
        "data": prepared.data_result(),
        "history": state.history,
        "best": state.best,
        "final": state.history[-1],
        "stopped_early": state.stopped_early,
        "steps": state.step,
        "throughput": {**throughput(state, evaluator.examples, evaluator.timed_seconds()),
                       "eval_padding_share": evaluator.padding_share()},
        "environment": environment(built.device),
        "wall_time_s": round(time.perf_counter() - clock, 2),  # this process (a resumed run counts its last part)
    }
    head = built.head.describe() if not built.multitask else {}  # a multi-task model has no one head
    if head:
        result["head"] = head  # e.g. the LM template scored and its hash (in-context scoring)
    tasks = prepared.tasks_result(state)
    if tasks is not None:
        result["tasks"] = tasks  # a multi-task run: every task's own scores
    return result


def throughput(state, eval_examples: int, eval_seconds: float) -> dict:
    """Training rates over training time only (evaluation and saving excluded); the last evaluation's rate."""
    trained = state.samples > 0
    return {
        "train_seconds": round(state.train_seconds, 3),
        "train_cpu_seconds": round(state.train_cpu_seconds, 3),
        "train_samples_per_s": round(state.samples / state.train_seconds, 2) if trained else None,
        "train_tokens_per_s": round(state.real_tokens / state.train_seconds, 1) if trained else None,
        "padding_share": round(1 - state.real_tokens / state.padded_tokens, 4) if trained else None,
        "eval_samples_per_s": round(eval_examples / max(eval_seconds, 1e-9), 2),
    }


# -- what `train` would do ------------------------------------------------------------------


def dry_run(cfg: ExperimentConfig) -> dict:
    """The plan of `train` without training or writing (see `api.dry_run`)."""
    import math

    from ..engine.build import parameter_plan
    from ..engine.source import trim_skip
    from ..models import resolve_model

    splits, batches = {}, {}
    for name, tc in cfg.task_configs().items():
        data = load_task_data(tc)
        n_train = len(data.train.examples) if data.train is not None else 0
        prefix = f"{name} " if cfg.is_multitask else ""
        splits.update({f"{prefix}{tc.data.train_split}": n_train, f"{prefix}{tc.data.eval_split}": len(data.eval.examples)})
        batches[name] = math.ceil(n_train / cfg.train.batch_size)
    model_path = resolve_model(cfg.model.name)
    skip = trim_skip(cfg, model_path)
    counts = parameter_plan(cfg)
    # micro-batches per epoch as multitask.schedule counts them: all tasks per step, or one drawn task
    per_step_all = cfg.is_multitask and cfg.multitask.per_step == "all"
    per_epoch = max(batches.values()) if per_step_all else sum(batches.values())
    steps_per_epoch = math.ceil(per_epoch / cfg.train.grad_accum)
    steps = cfg.train.max_steps if cfg.train.max_steps is not None else steps_per_epoch * cfg.train.epochs
    plan = {"config": cfg.model_dump(mode="json"), "task": cfg.run_name, "model": model_path}
    if cfg.is_multitask:
        plan["method"] = cfg.method_label()
    trim = "would trim to the task's texts (parameters shown untrimmed)" if cfg.model.trim_vocab and not skip else (
        f"no (auto: {skip})" if skip else "no")
    return {**plan, "splits": splits,
            "steps_per_epoch": steps_per_epoch, "steps": steps, "warmup_steps": int(cfg.train.warmup * steps),
            "parameters": counts["total"], "trainable_parameters": counts["trainable"],
            "vocabulary_trim": trim, "output_dir": cfg.output_dir}
