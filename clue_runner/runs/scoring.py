"""A finished run put to use: reloaded exactly as it trained, scored on a split, predictions written in
the leaderboard format, sentence vectors encoded. A multi-task run does each per task."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..engine.build import Built, build, load_task_split
from ..engine.checkpoint import best_step
from ..errors import ClueRunError, RunError
from .result import RESULT_FILE, read_result
from .rundir import BEST_DIR, CONFIG_FILE, saved_config


def load_run(run_dir: Path, device: str = "auto"):
    """A run's best checkpoint, built exactly as the run trained it (same methods re-applied): a `Built`,
    or for a multi-task run a `MultiBuilt` (`.multitask`) of one single-task view per task."""
    run_dir = Path(run_dir)
    best = run_dir / BEST_DIR
    if not (best / "config.json").is_file():
        raise RunError(f"{run_dir}: no saved checkpoint ({BEST_DIR}/)"
                       + ("; it was interrupted: complete it with `clue-run train --resume`"
                          if not (run_dir / RESULT_FILE).is_file() else ""))
    check_best_is_the_results(run_dir)
    built = build(saved_config(run_dir), checkpoint=best, device=device)
    built.module.eval()  # a multi-task run: the whole model
    return built


def check_best_is_the_results(run_dir: Path) -> None:
    """best/ must hold the step run.json calls best (the commit protocol guarantees it; older runs have no marker)."""
    held = best_step(run_dir / BEST_DIR)
    if held is None or not (run_dir / RESULT_FILE).is_file():
        return
    named = read_result(run_dir).best.step
    if held != named:
        raise RunError(f"{run_dir / BEST_DIR}: holds step {held}, but {RESULT_FILE} names step {named} as best; "
                       "the run directory was changed by hand: train it again")


def load_checkpoint(path: Path, task_name: str, device: str = "auto") -> Built:
    """A plain transformers checkpoint fine-tuned elsewhere, scored as it is on `task_name` (see `api.load_checkpoint`)."""
    from ..config import build_config
    from ..models import load_model_config
    from ..tasks import get_task

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
    built.head.eval()
    return built


def evaluate(run_dir: Path, split: str = "dev", data_dir: Optional[str] = None, device: str = "auto",
             task: Optional[str] = None) -> dict:
    """Scores of a run's best checkpoint (or, with `task`, of a plain checkpoint) on a labelled split."""
    run_dir = Path(run_dir)
    if task is not None and not (run_dir / CONFIG_FILE).is_file():
        run = load_checkpoint(run_dir, task, device)
    else:
        run = load_run(run_dir, device)
    scored = {name: evaluate_task(view, split, data_dir) for name, view in run.views().items()}
    examples = sum(n for _, n, _ in scored.values())
    rate = round(examples / max(sum(t for _, _, t in scored.values()), 1e-9), 2)
    if not run.multitask:
        (metrics, _, _), = scored.values()
        return {"run": str(run_dir), "task": run.task.name, "split": split, "examples": examples,
                "metrics": metrics, "eval_samples_per_s": rate}
    from ..multitask.run import combined_metrics

    per_task = {name: m for name, (m, _, _) in scored.items()}
    metrics = combined_metrics(per_task, {n: v.task.main_metric for n, v in run.views().items()},
                               {e.name: e.weight for e in run.cfg.tasks})
    return {"run": str(run_dir), "task": run.cfg.run_name, "split": split, "examples": examples,
            "metrics": metrics, "tasks": per_task, "eval_samples_per_s": rate}


def evaluate_task(run: Built, split: str, data_dir: Optional[str]) -> tuple[dict, int, float]:
    """One task's scores on a labelled split, its example count and the model's seconds over it."""
    from ..engine.evaluate import score

    data = load_task_split(run.cfg, run.task, split, data_dir=data_dir)
    enc = run.featurize_split(data)
    if enc.unlabelled():
        raise ClueRunError(f"{data.source}: split {split!r} has unlabelled rows; use `clue-run predict` for it")
    logits, seconds = run.logits(enc)
    calibration = run.calibration(run.threshold_split(split, data_dir))
    return score(run.task, run.predict, logits, enc, calibration), len(enc), seconds


def predict(run_dir: Path, split: str = "test", data_dir: Optional[str] = None, clue_version: str = "1.1",
            out: Optional[Path] = None, device: str = "auto"):
    """Predictions in the task's leaderboard format (see `api.predict`): a path, or one per task."""
    from ..submit import predict_file_name

    run = load_run(run_dir, device)
    if not run.multitask:
        return predict_task(run, split, data_dir, clue_version, Path(out) if out else None, Path(run_dir))
    views = run.views()
    names = {name: predict_file_name(view.task, clue_version) for name, view in views.items()}  # refused before any write
    return [predict_task(view, split, data_dir, clue_version, Path(out) / names[name] if out else None, Path(run_dir))
            for name, view in views.items()]


def predict_task(run: Built, split: str, data_dir, clue_version: str, out: Optional[Path], run_dir: Path) -> Path:
    import torch

    from ..storage import atomic_write_text
    from ..submit import PREDICTIONS_DIR, format_predictions, predict_file_name

    name = predict_file_name(run.task, clue_version)  # refuses tasks without a submission format
    data = load_task_split(run.cfg, run.task, split, on_bad_row="error", data_dir=data_dir)  # a submission never skips rows
    enc = run.featurize_split(data)
    preds = run.predict(torch.from_numpy(run.logits(enc)[0]), enc)
    path = out or run_dir / PREDICTIONS_DIR / name
    atomic_write_text(path, format_predictions(run.task, data.examples, preds))
    return path


def encode_texts(texts: list[str], run_dir: Optional[Path] = None, model_name: Optional[str] = None,
                 pooling: str = "mean", max_length: int = 128, batch_size: int = 256, device: str = "auto"):
    """Sentence vectors (float32, one row per text, in input order); see `api.encode_texts`."""
    import numpy as np

    from ..config import build_config
    from ..data.splits import Example
    from ..engine.cuda_graphs import GraphedForward
    from ..engine.evaluate import predict_logits
    from ..features import tokenize_examples
    from ..heads.embedding import EmbeddingHead

    if not texts:
        raise ClueRunError("no texts to encode")
    if run_dir is not None:
        run = load_run(run_dir, device)
        if not isinstance(run.head, EmbeddingHead):
            raise ClueRunError(f"{run_dir}: its head is {type(run.head).__name__}; encoding needs an embedding head")
    else:
        # The model as it is: a vocabulary trimmed to some task's texts would split the user's texts otherwise.
        cfg = build_config({"task": "stsb", "model": {"name": model_name, "trim_vocab": False},
                            "head": {"name": "embedding", "pooling": pooling}, "train": {"max_steps": 0}})
        run = build(cfg, device=device)
    run.check_vocabulary(texts, "the input")
    enc = tokenize_examples([Example(i, t, None, None) for i, t in enumerate(texts)], run.tokenizer, max_length)
    graphed = GraphedForward(run.head, run.amp) if run.device.type == "cuda" else None
    vectors, _ = predict_logits(run.head, enc, batch_size, run.tokenizer.pad_token_id, run.device, run.amp, graphed)
    return vectors.astype(np.float32)
