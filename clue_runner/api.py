"""The plain Python API behind the CLI: train, evaluate, predict, encode. Assembly is `engine.build`."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import yaml

from .config import ExperimentConfig, build_config, load_config
from .data.splits import Example
from .engine import distributed
from .engine.build import Built, build, load_task_split, threshold_split_data
from .engine.checkpoint import BEST_MARKER, save_best as save_best_checkpoint
from .engine.evaluate import eval_plan, predict_logits, score
from .engine.trainer import Event, Trainer
from .errors import ClueRunError, DataError, DiskError, RunError, disk_error_line, is_disk_error
from .features import encode_examples
from .heads import Head
from .features.batching import padding_share
from .runs import rundir
from .runs.naming import model_slug
from .runs.result import RESULT_FILE, SCHEMA_VERSION, environment, read_result, task_section, write_result
from .runs.rundir import RunDir
from .storage import atomic_write_text, kill_point
from .submit import PREDICTIONS_DIR, format_predictions, predict_file_name
from .tasks import get_task

CONFIG_FILE, BEST_DIR, RESUME_DIR = rundir.CONFIG_FILE, rundir.BEST_DIR, rundir.RESUME_DIR


def _log(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(message, highlight=False)


def _saved_config(run_dir: Path) -> ExperimentConfig:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    return load_config(path)


def train(cfg: Optional[ExperimentConfig], resume: Optional[Path] = None,
          on_event: Optional[Callable[[Event], None]] = None, log: Callable[[str], None] = _log,
          run_dir: Optional[Path] = None) -> Path:
    """Fine-tune, keep the best checkpoint, write the run JSON; returns the run directory.

    With `resume`, complete an interrupted run from its last committed state with its saved config
    (see `runs.rundir` for the protocol that makes every interruption resumable). With `run_dir`,
    write the run there (a sweep's deterministic cell directory) instead of a new timestamped one.
    Data parallel: every process trains; rank 0 alone logs and writes (the others follow read-only).
    """
    wall_start = time.perf_counter()
    writes = distributed.is_main()
    if not writes:
        log = lambda _message: None  # noqa: E731
    if run_dir is not None and (Path(run_dir) / RESULT_FILE).is_file():
        raise RunError(f"{run_dir} already holds a finished run ({RESULT_FILE}); choose another --run-dir")
    run = None
    if resume is not None:
        run = RunDir.open(Path(resume)) if writes else RunDir.follow(Path(resume))
    try:
        if run is not None:
            if run.finished:  # resuming is idempotent: a finished run only loses its leftovers
                if writes:
                    run.recover()
                log(f"{run.path} already finished ({RESULT_FILE}); nothing left to resume")
                return run.path
            cfg = _saved_config(run.path)
        # everything that can fail on bad input, before a run directory exists
        prepared = prepare_multitask(cfg, log) if cfg.is_multitask else _prepare(cfg, log)
        if run is None and not writes:
            run = RunDir.scratch()  # another rank writes the run; this one needs only somewhere to not write
        elif run is None:
            config_text = yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True, sort_keys=False)
            run = RunDir.create(cfg.output_dir, cfg.run_name, cfg.model.name, cfg.train.seed, config_text,
                                path=run_dir)
        elif writes:
            run.recover()
        return _train_in(cfg, run, prepared, on_event, log, wall_start)
    except OSError as err:
        if not is_disk_error(err):
            raise
        then = f"then continue with `clue-run train --resume {run.path}`" if run is not None else "then run again"
        raise DiskError(disk_error_line(err, then)) from None
    finally:
        if run is not None:
            run.release()


@dataclass
class _Prepared:
    """One task's run, ready to train: what `_train_in` needs from a single- or multi-task run."""

    task: object
    built: Built
    train_data: Optional[object]
    eval_data: object
    train_enc: Optional[object]
    eval_enc: object
    threshold_enc: Optional[object]

    @property
    def main_metric(self) -> str:
        return self.task.main_metric

    @property
    def train_source(self):
        return self.train_enc

    @property
    def eval_examples(self) -> int:
        return len(self.eval_enc)

    def evaluate(self) -> tuple[dict, float]:
        """The metrics on the eval split and the seconds the model took over it."""
        built = self.built
        logits, seconds = built.logits(self.eval_enc)
        kill_point("evaluated")
        return score(self.task, built.predict, logits, self.eval_enc, built.calibration(self.threshold_enc)), seconds

    def time_eval(self) -> float:
        return self.built.logits(self.eval_enc)[1]

    def eval_padding_share(self, batch_size: int) -> Optional[float]:
        if self.built.graphed is not None:  # eager batches only: CUDA graphs pad to their captured shapes
            return None
        return round(padding_share(self.eval_enc, eval_plan(self.eval_enc, batch_size, self.built.device)), 4)

    def summary_line(self, cfg: ExperimentConfig) -> str:
        def count(enc) -> str:
            if enc is None:
                return "0"
            if len(enc.targets) == len(enc):
                return f"{len(enc):,}"
            return f"{len(enc.targets):,} ({len(enc):,} windows)"  # reading comprehension: an item is a window

        return (f"[bold]{self.task.name}[/] · {cfg.model.name} · {cfg.method_label()} · seed {cfg.train.seed} · "
                f"{count(self.train_enc)} train / {count(self.eval_enc)} {cfg.data.eval_split} examples")

    def task_result(self, cfg: ExperimentConfig) -> dict:
        return task_section(self.task, cfg)

    def data_result(self) -> dict:
        return {"train": self.train_data.summary() if self.train_enc is not None else None,
                "eval": self.eval_data.summary()}

    def tasks_result(self, state) -> Optional[dict]:
        return None


def _prepare(cfg: ExperimentConfig, log, built: Optional[Built] = None) -> _Prepared:
    """`built`: a task view of a multi-task model (its data options in its config), else built here."""
    task = get_task(cfg.task)
    trains = cfg.train.max_steps != 0
    train_data = load_task_split(cfg, task, cfg.data.train_split, cfg.data.max_train_examples, training=True) if trains else None
    eval_data = load_task_split(cfg, task, cfg.data.eval_split, cfg.data.max_eval_examples)
    if task.label.kind != "structured" and any(ex.label is None for ex in eval_data.examples):
        first = next(i for i, ex in enumerate(eval_data.examples) if ex.label is None)
        raise DataError(f"{eval_data.source}: split {cfg.data.eval_split!r} has unlabelled rows (example {first + 1}); "
                        "data.eval_split must name a labelled split")
    threshold_data = threshold_split_data(cfg, task, cfg.data.eval_split)
    built = built or build(cfg, log=log)
    train_enc = built.encode(train_data) if trains else None
    eval_enc = built.encode(eval_data)
    if trains and built.model.needs_labels and train_enc.unlabelled():
        raise DataError(f"{train_data.source}: the training split has unlabelled rows")
    unlabeled = getattr(built.model, "unlabeled_split", None) if trains else None
    if unlabeled:  # semi-supervised heads (PET) train on an unlabelled split beside the labelled one
        pool = load_task_split(cfg, task, unlabeled, getattr(built.model.params, "unlabeled_examples", None),
                               training=True, unlabelled=True)
        train_data = dataclasses.replace(train_data, examples=train_data.examples + pool.examples,
                                         source=f"{train_data.source} + {pool.source} ({len(pool.examples)} unlabelled)")
        train_enc = built.encode(train_data)
    threshold_enc = built.encode(threshold_data) if threshold_data is not None else None
    return _Prepared(task, built, train_data, eval_data, train_enc, eval_enc, threshold_enc)


def prepare_multitask(cfg: ExperimentConfig, log):
    """Every task of a multi-task config prepared as in a single-task run, on one shared model."""
    from .multitask.build import build_multitask
    from .multitask.run import MultiPrepared

    built = build_multitask(cfg, log=log)
    parts = {name: _prepare(view.cfg, log, built=view) for name, view in built.tasks.items()}
    return MultiPrepared(cfg, built, parts)


def _train_in(cfg: ExperimentConfig, run: RunDir, prepared, on_event, log, wall_start) -> Path:
    built = prepared.built
    trains = prepared.train_source is not None
    model = built.model
    run_dir = run.path
    writes = distributed.is_main()
    eval_seconds = []

    def evaluate() -> dict:
        metrics, seconds = prepared.evaluate()
        eval_seconds.append(seconds)
        return metrics

    def save_best() -> None:
        best = trainer.state.best
        save_best_checkpoint(run.best, model, built.tokenizer, built.methods, best)

    trainer = Trainer(model, model.loss, built.methods, prepared.train_source, evaluate, prepared.main_metric,
                      cfg.train, built.tokenizer.pad_token_id, built.device, resume_dir=run.resume,
                      log_dir=run.path / "logs", run_config=cfg.model_dump(mode="json"))
    best = trainer.state.best
    if writes and best is not None and run.best_step() != best["step"]:
        # Killed after the commit that made this step best, before best/ was swapped in: the
        # committed weights are that step's (see runs.rundir), so best/ is written from them.
        if best["step"] != trainer.state.step:
            raise RunError(f"{run.best}: holds step {run.best_step()}, the run's best is step {best['step']} "
                           "and its weights are no longer saved; start the run again")
        save_best()
    counts = built.parameter_counts()
    log(f"{prepared.summary_line(cfg)} · "
        f"{trainer.total_steps} steps on {built.device} · {counts['trainable']:,} of {counts['total']:,} parameters trained")
    for event in trainer.run():
        if event.kind == "eval":
            rec = event.state.history[-1]
            shown = " ".join(f"{k}={v:.4f}" for k, v in event.metrics.items())
            loss = f"loss {rec['train_loss']:.4f} " if rec["train_loss"] is not None else ""
            log(f"step {rec['step']} epoch {rec['epoch']:.2f} {loss}{shown}"
                + (" [green]best[/]" if event.improved else ""))
            if event.improved and writes:
                save_best()
        if on_event is not None:
            on_event(event)

    trainer.close_loggers()
    state = trainer.state
    if not eval_seconds:  # resumed after the last checkpoint: time one evaluation for the throughput
        eval_seconds.append(prepared.time_eval())
    result = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_dir.name,
        "status": "completed",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": prepared.task_result(cfg),
        "model": {"name": cfg.model.name, "slug": model_slug(cfg.model.name), "resolved": built.model_path,
                  "parameters": counts["total"], "trainable_parameters": counts["trainable"],
                  "load_report": built.load_report,
                  # a stand-in head trained by `clue-run model adapt-mlm`: reports label it "adapted on N sentences"
                  "adapted": getattr(model.backbone.config, "clue_run_adapted", None)},
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
        "throughput": {**_throughput(state, prepared.eval_examples, eval_seconds[-1]),
                       "eval_padding_share": prepared.eval_padding_share(cfg.train.eval_batch_size)},
        "environment": environment(built.device),
        "wall_time_s": round(time.perf_counter() - wall_start, 2),  # this process (a resumed run counts its last part)
    }
    head = model.describe() if isinstance(model, Head) else {}  # a multi-task model has no one head
    if head:
        result["head"] = head  # e.g. the LM template scored and its hash (in-context scoring)
    tasks = prepared.tasks_result(state)
    if tasks is not None:
        result["tasks"] = tasks  # a multi-task run: every task's own scores
    if not writes:
        return run_dir
    write_result(run_dir, result)
    # The resume state (optimizer moments: twice the model) is only needed until the result exists.
    shutil.rmtree(run.resume, ignore_errors=True)
    best = state.best["metrics"][prepared.main_metric]
    log(f"best {prepared.main_metric} {best:.4f} at step {state.best['step']} → {run_dir / RESULT_FILE}")
    return run_dir


def _throughput(state, eval_examples: int, eval_seconds: float) -> dict:
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


# -- eval / predict ------------------------------------------------------------------------


def load_run(run_dir: Path, device: str = "auto") -> Built:
    """A run's best checkpoint, built exactly as the run trained it (same methods re-applied)."""
    run_dir = Path(run_dir)
    best = run_dir / BEST_DIR
    if not (best / "config.json").is_file():
        raise RunError(f"{run_dir}: no saved checkpoint ({BEST_DIR}/)"
                       + ("; it was interrupted: complete it with `clue-run train --resume`"
                          if not (run_dir / RESULT_FILE).is_file() else ""))
    _check_best_is_the_results(run_dir)
    cfg = _saved_config(run_dir)
    if cfg.is_multitask:  # a MultiBuilt: one single-task view per task in `.tasks`
        from .multitask.build import build_multitask

        built = build_multitask(cfg, checkpoint=best, device=device)
    else:
        built = build(cfg, checkpoint=best, device=device)
    built.model.eval()
    return built


def _check_best_is_the_results(run_dir: Path) -> None:
    """best/ must hold the step run.json calls best (the commit protocol guarantees it; older runs have no marker)."""
    if not (run_dir / RESULT_FILE).is_file():
        return
    marker = (run_dir / BEST_DIR / BEST_MARKER)
    if marker.is_file():
        held = json.loads(marker.read_text(encoding="utf-8")).get("step")
        named = read_result(run_dir)["best"]["step"]
        if held != named:
            raise RunError(f"{run_dir / BEST_DIR}: holds step {held}, but {RESULT_FILE} names step {named} as best; "
                           "the run directory was changed by hand: train it again")


def load_checkpoint(path: Path, task_name: str, device: str = "auto") -> Built:
    """A plain transformers checkpoint fine-tuned elsewhere (e.g. a saved BertForSequenceClassification),
    scored as it is on `task_name`. Its label order must be the task's: names in `id2label` are checked."""
    from .models import load_model_config

    task = get_task(task_name)
    config = load_model_config(str(path))
    names = [str(v) for _, v in sorted((int(k), v) for k, v in (config.id2label or {}).items())]
    generic = all(n == f"LABEL_{i}" for i, n in enumerate(names))
    if task.label.values and not generic and names != list(task.label.values):
        raise ClueRunError(f"{path}: its labels {names} are not the labels of task {task.name} "
                           f"{list(task.label.values)} in the same order; relabel config.json id2label")
    cfg = build_config({"task": task.name, "model": {"name": str(path), "trim_vocab": False},
                        "data": {"max_length": min(512, getattr(config, "max_position_embeddings", 512) or 512)},
                        "train": {"max_steps": 0}})
    built = build(cfg, device=device)
    if built.load_report.get("new_head"):
        raise ClueRunError(f"{path}: no trained {task.head} head for task {task.name} in this checkpoint "
                           f"(new weights: {', '.join(built.load_report['new_head'][:3])}); train it with clue-run train")
    built.model.eval()
    return built


def evaluate(run_dir: Path, split: str = "dev", data_dir: Optional[str] = None, device: str = "auto",
             task: Optional[str] = None) -> dict:
    """Score a run's best checkpoint on a labelled split; with `task`, `run_dir` may be a plain
    transformers checkpoint directory fine-tuned elsewhere."""
    run_dir = Path(run_dir)
    if task is not None and not (run_dir / CONFIG_FILE).is_file():
        run = load_checkpoint(run_dir, task, device)
    else:
        run = load_run(run_dir, device)
    if getattr(run, "tasks", None) is not None:  # multi-task: every task scored, with the weighted main score
        from .multitask.run import MAIN_METRIC, task_metric, weighted_main

        scored = {name: _evaluate_built(view, split, data_dir) for name, view in run.tasks.items()}
        per_task = {name: m for name, (m, _, _) in scored.items()}
        metrics = {MAIN_METRIC: weighted_main(per_task, {n: v.task.main_metric for n, v in run.tasks.items()},
                                              {e.name: e.weight for e in run.cfg.tasks})}
        for name, m in per_task.items():
            metrics.update({task_metric(name, k): v for k, v in m.items()})
        examples = sum(n for _, n, _ in scored.values())
        seconds = sum(t for _, _, t in scored.values())
        return {"run": str(run_dir), "task": run.cfg.run_name, "split": split, "examples": examples,
                "metrics": metrics, "tasks": per_task, "eval_samples_per_s": round(examples / max(seconds, 1e-9), 2)}
    metrics, examples, seconds = _evaluate_built(run, split, data_dir)
    return {"run": str(run_dir), "task": run.task.name, "split": split, "examples": examples,
            "metrics": metrics, "eval_samples_per_s": round(examples / max(seconds, 1e-9), 2)}


def _evaluate_built(run: Built, split: str, data_dir: Optional[str]) -> tuple[dict, int, float]:
    """One task's scores on a labelled split, its example count and the model's seconds over it."""
    data = load_task_split(run.cfg, run.task, split, data_dir=data_dir)
    enc = run.encode(data)
    if enc.unlabelled():
        raise ClueRunError(f"{data.source}: split {split!r} has unlabelled rows; use `clue-run predict` for it")
    logits, seconds = run.logits(enc)
    calibration = run.calibration(run.threshold_split(split, data_dir))
    return score(run.task, run.predict, logits, enc, calibration), len(enc), seconds


def predict(run_dir: Path, split: str = "test", data_dir: Optional[str] = None, clue_version: str = "1.1",
            out: Optional[Path] = None, device: str = "auto"):
    """Write predictions in the task's leaderboard format, in the test file's order. A multi-task run
    writes one file per task (into `out` as a directory, if given) and returns their paths."""
    run = load_run(run_dir, device)
    if getattr(run, "tasks", None) is None:
        return _predict_built(run, split, data_dir, clue_version, Path(out) if out else None, Path(run_dir))
    names = {name: predict_file_name(view.task, clue_version) for name, view in run.tasks.items()}  # refused before any write
    return [_predict_built(view, split, data_dir, clue_version, Path(out) / names[name] if out else None, Path(run_dir))
            for name, view in run.tasks.items()]


def _predict_built(run: Built, split: str, data_dir, clue_version: str, out: Optional[Path], run_dir: Path) -> Path:
    name = predict_file_name(run.task, clue_version)  # refuses tasks without a submission format
    data = load_task_split(run.cfg, run.task, split, on_bad_row="error", data_dir=data_dir)  # a submission never skips rows
    enc = run.encode(data)
    preds = run.predict(torch.from_numpy(run.logits(enc)[0]), enc)
    path = out or run_dir / PREDICTIONS_DIR / name
    atomic_write_text(path, format_predictions(run.task, data.examples, preds))
    return path


def read_run(run_dir: Path) -> dict:
    return read_result(Path(run_dir))


def encode_texts(texts: list[str], run_dir: Optional[Path] = None, model_name: Optional[str] = None,
                 pooling: str = "mean", max_length: int = 128, batch_size: int = 256, device: str = "auto") -> np.ndarray:
    """Sentence vectors (float32, one row per text, in input order) from a run's trained bi-encoder
    or from a model's pooled hidden states. Batches are sorted by length; bf16 on a GPU."""
    from .engine.cuda_graphs import GraphedForward
    from .heads.embedding import EmbeddingHead

    if not texts:
        raise ClueRunError("no texts to encode")
    if run_dir is not None:
        run = load_run(run_dir, device)
        if not isinstance(run.model, EmbeddingHead):
            raise ClueRunError(f"{run_dir}: its head is {type(run.model).__name__}; encoding needs an embedding head")
    else:
        # The model as it is: a vocabulary trimmed to some task's texts would split the user's texts otherwise.
        cfg = build_config({"task": "stsb", "model": {"name": model_name, "trim_vocab": False},
                            "head": {"name": "embedding", "pooling": pooling},
                            "train": {"max_steps": 0}})
        run = build(cfg, device=device)
    run.check_vocabulary(texts, "the input")
    examples = [Example(i, t, None, None) for i, t in enumerate(texts)]
    enc = encode_examples(examples, run.tokenizer, max_length)
    graphed = GraphedForward(run.model, run.amp) if run.device.type == "cuda" else None
    vectors, _ = predict_logits(run.model, enc, batch_size, run.tokenizer.pad_token_id, run.device, run.amp, graphed)
    return vectors.astype(np.float32)


def dry_run(cfg: ExperimentConfig) -> dict:
    """What `train` would do, writing nothing to the output directory: the resolved config, split
    sizes, optimizer steps and parameter counts (the model is built, not trained; no vocabulary trim
    is written, its effect is named instead). A multi-task config: every task's splits."""
    import math

    from .engine.build import _trim_skip
    from .models import resolve_model

    trains = cfg.train.max_steps != 0
    splits, batches = {}, {}
    for name, tc in cfg.task_configs().items():
        task = get_task(tc.task)
        train_data = load_task_split(tc, task, tc.data.train_split, tc.data.max_train_examples, training=True) if trains else None
        eval_data = load_task_split(tc, task, tc.data.eval_split, tc.data.max_eval_examples)
        n_train = len(train_data.examples) if trains else 0
        prefix = f"{name} " if cfg.is_multitask else ""
        splits.update({f"{prefix}{tc.data.train_split}": n_train, f"{prefix}{tc.data.eval_split}": len(eval_data.examples)})
        batches[name] = math.ceil(n_train / cfg.train.batch_size)
    model_path = resolve_model(cfg.model.name)
    skip = _trim_skip(cfg, model_path)
    trim = bool(cfg.model.trim_vocab) and not skip
    untrimmed = cfg.model_copy(deep=True)
    untrimmed.model.trim_vocab = False
    if cfg.is_multitask:
        from .multitask.build import build_multitask

        counts = build_multitask(untrimmed, device="cpu").parameter_counts()
        # micro-batches per epoch as multitask.schedule counts them: all tasks per step, or one drawn task
        per_epoch = max(batches.values()) if cfg.multitask.per_step == "all" else sum(batches.values())
    else:
        counts = build(untrimmed, device="cpu").parameter_counts()
        per_epoch = batches[cfg.task]
    steps_per_epoch = math.ceil(per_epoch / cfg.train.grad_accum)
    steps = cfg.train.max_steps if cfg.train.max_steps is not None else steps_per_epoch * cfg.train.epochs
    plan = {"config": cfg.model_dump(mode="json"), "task": cfg.run_name, "model": model_path}
    if cfg.is_multitask:
        plan["method"] = cfg.method_label()
    return {**plan, "splits": splits,
            "steps_per_epoch": steps_per_epoch, "steps": steps, "warmup_steps": int(cfg.train.warmup * steps),
            "parameters": counts["total"], "trainable_parameters": counts["trainable"],
            "vocabulary_trim": "would trim to the task's texts (parameters shown untrimmed)" if trim else (
                f"no (auto: {skip})" if skip else "no"),
            "output_dir": cfg.output_dir}
