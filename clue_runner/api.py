"""The plain Python API behind the CLI: train, evaluate and predict."""

from __future__ import annotations

import hashlib
import secrets
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_model, save_model

from .config import ExperimentConfig, build_config
from .cuda_graphs import GraphedForward, StaticBatcher
from .data import Example, SplitData, load_split
from .errors import ClueRunError, DataError
from .features import Encoded, collate, encode_examples, eval_batches, to_device
from .heads import build_head
from .heads_structured import MASKED
from .structured_inputs import choice_text
from .methods import build_methods
from .metrics import compute_metrics
from .models import encoder_from_config, load_encoder, load_tokenizer, model_slug, resolve_model
from .paths import cache_root
from .results import RESULT_FILE, SCHEMA_VERSION, atomic_write_text, environment, read_result, write_result
from .submit import PREDICTIONS_DIR, format_predictions, predict_file_name
from .tasks import TaskSpec, get_task
from .trainer import Event, Trainer, autocast_dtype, pick_device, seed_everything

CONFIG_FILE = "config.yaml"
BEST_DIR = "best"
RESUME_DIR = "resume"


def _log(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(message, highlight=False)


# -- evaluation ---------------------------------------------------------------------------


@torch.no_grad()
def predict_logits(model, enc: Encoded, batch_size: int, pad_id: int, device, amp,
                   graphed: Optional[GraphedForward] = None) -> tuple[np.ndarray, float]:
    """Logits for every example, in the examples' order, and the seconds it took.

    With `graphed`, batches take fixed shapes and replay captured CUDA graphs.
    """
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    batcher = StaticBatcher(enc, pad_id, batch_size) if graphed else None
    parts, order = [], []
    for idx in eval_batches(enc.lengths, batch_size):
        if graphed is not None:
            host, real = batcher(idx)
            host.pop("labels")
            parts.append(graphed(host)[:real].clone())  # the graph's output buffer is reused
        else:
            batch = to_device(collate(enc, idx, pad_id, targets=False), device)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                parts.append(model(**batch).float())
        order.append(idx)
    logits = _stack(parts).cpu().numpy()  # one host sync for the whole split
    seconds = time.perf_counter() - start
    out = np.empty_like(logits)
    out[np.concatenate(order)] = logits
    model.train(was_training)
    return out, seconds


def _stack(parts: list[torch.Tensor]) -> torch.Tensor:
    """Batches' outputs as one tensor; outputs per token (spans) are padded to the widest batch."""
    shape = [max(p.shape[d] for p in parts) for d in range(1, parts[0].ndim)]
    padded = []
    for p in parts:
        pad = [x for d in reversed(range(1, p.ndim)) for x in (0, shape[d - 1] - p.shape[d])]
        padded.append(F.pad(p, pad, value=MASKED) if any(pad) else p)
    return torch.cat(padded)


def score(task: TaskSpec, head, outputs: np.ndarray, enc: Encoded, calibration=None) -> dict[str, float]:
    preds = head.predict(torch.from_numpy(outputs), enc)
    return compute_metrics(task.metrics, enc.targets, preds, len(task.label.values), calibration)


# -- building ------------------------------------------------------------------------------


@dataclass
class Loaded:
    """A run's model ready to score: task, tokenizer, head module, device."""

    cfg: ExperimentConfig
    task: TaskSpec
    tokenizer: object
    model: torch.nn.Module
    device: torch.device
    amp: Optional[torch.dtype]
    graphed: Optional[GraphedForward] = None

    def encode(self, data: SplitData) -> Encoded:
        return self.model.featurize(data.examples, self.tokenizer, self.cfg.data.max_length)

    def calibration(self, enc: Optional[Encoded]):
        """(gold, predictions) of the threshold split, for metrics that fit a threshold there."""
        if enc is None:
            return None
        return enc.targets, self.model.predict(torch.from_numpy(self.logits(enc)[0]), enc)

    def threshold_split(self, scored_split: str) -> Optional[Encoded]:
        split = self.cfg.data.threshold_split
        if split in (None, scored_split):
            return None
        return self.encode(_split(self.cfg, self.task, split))

    def logits(self, enc: Encoded) -> tuple[np.ndarray, float]:
        if self.graphed is None and self.device.type == "cuda" and self.cfg.train.cuda_graphs and self.model.graphable:
            self.graphed = GraphedForward(self.model, self.amp)  # kept: graphs read the weights in place
        return predict_logits(self.model, enc, self.cfg.train.eval_batch_size, self.tokenizer.pad_token_id,
                              self.device, self.amp, self.graphed)


def _split(cfg: ExperimentConfig, task: TaskSpec, split: str, limit=None, on_bad_row=None, data_dir=None,
           training: bool = False) -> SplitData:
    return load_split(task, split, data_dir=data_dir or cfg.data.dir, variant=cfg.data.variant,
                      on_bad_row=on_bad_row or cfg.data.on_bad_row, source=cfg.data.source, limit=limit,
                      training=training)


def task_texts(task: TaskSpec, data_dir: Optional[str]) -> list[str]:
    """Every input text of every split file the task has in the data directory (all variants)."""
    texts = []
    variants = task.data.variants or [None]
    seen = set()
    for split in task.data.splits:
        for variant in variants:
            name = str(task.split_file(split, variant))
            if name in seen:
                continue
            seen.add(name)
            try:
                data = load_split(task, split, data_dir=data_dir, variant=variant, on_bad_row="skip")
            except DataError:
                continue  # e.g. a split this download does not have
            for ex in data.examples:
                texts += [t for t in (ex.text_a, ex.text_b) if t]
                texts += [choice_text(ex.text_a, c) for c in ex.extra.get("choices", ())]
    return texts


def trimmed_model(model_path: str, task: TaskSpec, data_dir: Optional[str], log: Callable[[str], None]) -> str:
    """The model with its vocabulary cut to the task's texts (+ single CJK/ASCII characters), cached.

    Hidden states on those texts are unchanged; the optimizer and embedding gradients shrink by
    the size of the unused vocabulary (most of a multilingual model).
    """
    from .models.trim import trim

    texts = task_texts(task, data_dir)
    weights = Path(model_path) / "model.safetensors"
    key = hashlib.sha1(f"{Path(model_path).resolve()}|{weights.stat().st_mtime_ns if weights.exists() else ''}".encode())
    for t in texts:
        key.update(t.encode() + b"\x00")
    out = cache_root() / "models" / f"trimmed-{task.name}-{key.hexdigest()[:16]}"
    if not (out / "model.safetensors").is_file():
        report = trim(model_path, texts, out, keep_cjk_chars=True, dtype="float32")
        log(f"vocabulary trimmed for {task.name}: {report.pieces_before:,} → {report.pieces_after:,} pieces, "
            f"{report.params_before / 1e6:.1f}M → {report.params_after / 1e6:.1f}M parameters ({out})")
    return str(out)


def new_run_dir(cfg: ExperimentConfig) -> Path:
    run_id = f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-seed{cfg.train.seed}-{secrets.token_hex(2)}"
    return Path(cfg.output_dir) / get_task(cfg.task).name / model_slug(cfg.model.name) / run_id


# -- train ---------------------------------------------------------------------------------


def train(cfg: ExperimentConfig, resume: Optional[Path] = None, on_event: Optional[Callable[[Event], None]] = None,
          log: Callable[[str], None] = _log) -> Path:
    """Fine-tune, keep the best checkpoint, write the run JSON; returns the run directory.

    With `resume`, continue an interrupted run from its last saved state (its saved config wins).
    """
    wall_start = time.perf_counter()
    if resume is not None:
        resume = Path(resume)
        if (resume / RESULT_FILE).is_file():
            raise ClueRunError(f"{resume} already finished (it has {RESULT_FILE}); nothing to resume")
        if not (resume / RESUME_DIR / "trainer.pt").is_file():
            raise ClueRunError(f"{resume}: no resume state ({RESUME_DIR}/trainer.pt); was the run started?")
        cfg = build_config(yaml.safe_load((resume / CONFIG_FILE).read_text(encoding="utf-8")), source=str(resume / CONFIG_FILE))
    task = get_task(cfg.task)
    methods = build_methods(cfg.methods)
    trains = cfg.train.max_steps != 0

    # Everything that can fail on bad input happens before the run directory exists.
    train_data = _split(cfg, task, cfg.data.train_split, cfg.data.max_train_examples, training=True) if trains else None
    eval_data = _split(cfg, task, cfg.data.eval_split, cfg.data.max_eval_examples)
    model_path = resolve_model(cfg.model.name)
    if cfg.model.trim_vocab:
        model_path = trimmed_model(model_path, task, cfg.data.dir, log)
    tokenizer = load_tokenizer(model_path)
    seed_everything(cfg.train.seed)  # the new head's initial weights depend on the seed only
    model = build_head(task, load_encoder(model_path), cfg.head, cfg.model.dropout)
    train_enc = model.featurize(train_data.examples, tokenizer, cfg.data.max_length) if trains else None
    eval_enc = model.featurize(eval_data.examples, tokenizer, cfg.data.max_length)
    if trains and model.needs_labels and train_enc.unlabelled():
        raise ClueRunError(f"{train_data.source}: the training split has unlabelled rows")
    device = pick_device(cfg.train.device)
    amp = autocast_dtype(cfg.train.precision, device)
    model.to(device)
    loaded = Loaded(cfg, task, tokenizer, model, device, amp)

    run_dir = resume or new_run_dir(cfg)
    if resume is None:
        atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True, sort_keys=False))
    eval_seconds = []
    threshold_enc = loaded.threshold_split(cfg.data.eval_split)

    def evaluate() -> dict:
        logits, seconds = loaded.logits(eval_enc)
        eval_seconds.append(seconds)
        return score(task, model, logits, eval_enc, loaded.calibration(threshold_enc))

    trainer = Trainer(model, model.loss, methods, train_enc, evaluate, task.main_metric, cfg.train,
                      tokenizer.pad_token_id, device, resume_dir=run_dir / RESUME_DIR)
    log(f"[bold]{task.name}[/] · {cfg.model.name} · {cfg.method_label()} · seed {cfg.train.seed} · "
        f"{len(train_enc) if trains else 0} train / {len(eval_enc)} {cfg.data.eval_split} examples · {trainer.total_steps} steps on {device}")
    for event in trainer.run():
        if event.kind == "eval":
            rec = event.state.history[-1]
            shown = " ".join(f"{k}={v:.4f}" for k, v in event.metrics.items())
            loss = f"loss {rec['train_loss']:.4f} " if rec["train_loss"] is not None else ""
            log(f"step {rec['step']} epoch {rec['epoch']:.2f} {loss}{shown}"
                + (" [green]best[/]" if event.improved else ""))
            if event.improved:
                _save_best(run_dir / BEST_DIR, model, tokenizer)
        if on_event is not None:
            on_event(event)

    state = trainer.state
    result = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_dir.name,
        "status": "completed",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": {"name": task.name, "version": task.version, "benchmark": task.benchmark,
                 "variant": task.resolve_variant(cfg.data.variant), "eval_split": cfg.data.eval_split,
                 "main_metric": task.main_metric, "metrics": task.metrics},
        "model": {"name": cfg.model.name, "slug": model_slug(cfg.model.name), "resolved": model_path,
                  "parameters": sum(p.numel() for p in model.parameters())},
        "method": cfg.method_label(),
        "seed": cfg.train.seed,
        "config": cfg.model_dump(mode="json"),
        "data": {"train": train_data.summary() if trains else None, "eval": eval_data.summary()},
        "history": state.history,
        "best": state.best,
        "final": state.history[-1],
        "stopped_early": state.stopped_early,
        "steps": state.step,
        "throughput": _throughput(state, len(eval_enc), eval_seconds[-1]),
        "environment": environment(device),
        "wall_time_s": round(time.perf_counter() - wall_start, 2),  # this process (a resumed run counts its last part)
    }
    write_result(run_dir, result)
    # The resume state (optimizer moments: twice the model) is only needed until the result exists.
    shutil.rmtree(run_dir / RESUME_DIR, ignore_errors=True)
    best = state.best["metrics"][task.main_metric]
    log(f"best {task.main_metric} {best:.4f} at step {state.best['step']} → {run_dir / RESULT_FILE}")
    return run_dir


def _throughput(state, eval_examples: int, eval_seconds: float) -> dict:
    """Training rates over training time only (evaluation and saving excluded); the last evaluation's rate."""
    trained = state.samples > 0
    return {
        "train_seconds": round(state.train_seconds, 3),
        "train_samples_per_s": round(state.samples / state.train_seconds, 2) if trained else None,
        "train_tokens_per_s": round(state.real_tokens / state.train_seconds, 1) if trained else None,
        "padding_share": round(1 - state.real_tokens / state.padded_tokens, 4) if trained else None,
        "eval_samples_per_s": round(eval_examples / max(eval_seconds, 1e-9), 2),
    }


def _save_best(directory: Path, model, tokenizer) -> None:
    """Model weights + encoder config + tokenizer: enough to score without the original checkpoint."""
    tmp = directory.with_name(directory.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_model(model, str(tmp / "model.safetensors"))
    model.encoder.config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        directory.replace(old)
    tmp.replace(directory)
    if old.exists():
        shutil.rmtree(old)


# -- eval / predict ------------------------------------------------------------------------


def load_run(run_dir: Path, device: str = "auto") -> Loaded:
    run_dir = Path(run_dir)
    best = run_dir / BEST_DIR
    if not (best / "model.safetensors").is_file():
        raise ClueRunError(f"{run_dir}: no saved checkpoint ({BEST_DIR}/model.safetensors)")
    cfg = build_config(yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8")), source=str(run_dir / CONFIG_FILE))
    task = get_task(cfg.task)
    tokenizer = load_tokenizer(str(best))
    model = build_head(task, encoder_from_config(str(best)), cfg.head, cfg.model.dropout)
    load_model(model, str(best / "model.safetensors"))
    dev = pick_device(device if device != "auto" else cfg.train.device)
    model.to(dev).eval()
    return Loaded(cfg, task, tokenizer, model, dev, autocast_dtype(cfg.train.precision, dev))


def evaluate(run_dir: Path, split: str = "dev", data_dir: Optional[str] = None, device: str = "auto") -> dict:
    """Score a run's best checkpoint on a labelled split."""
    run = load_run(run_dir, device)
    data = _split(run.cfg, run.task, split, data_dir=data_dir)
    enc = run.encode(data)
    if enc.unlabelled():
        raise ClueRunError(f"{data.source}: split {split!r} has unlabelled rows; use `clue-run predict` for it")
    logits, seconds = run.logits(enc)
    calibration = run.calibration(run.threshold_split(split))
    return {"run": str(run_dir), "task": run.task.name, "split": split, "examples": len(enc),
            "metrics": score(run.task, run.model, logits, enc, calibration),
            "eval_samples_per_s": round(len(enc) / max(seconds, 1e-9), 2)}


def predict(run_dir: Path, split: str = "test", data_dir: Optional[str] = None, clue_version: str = "1.1",
            out: Optional[Path] = None, device: str = "auto") -> Path:
    """Write predictions in the task's leaderboard format, in the test file's order."""
    run = load_run(run_dir, device)
    name = predict_file_name(run.task, clue_version)  # refuses tasks without a submission format
    data = _split(run.cfg, run.task, split, on_bad_row="error", data_dir=data_dir)  # a submission never skips rows
    enc = run.encode(data)
    preds = run.model.predict(torch.from_numpy(run.logits(enc)[0]), enc)
    path = Path(out) if out else Path(run_dir) / PREDICTIONS_DIR / name
    atomic_write_text(path, format_predictions(run.task, data.examples, preds))
    return path


def read_run(run_dir: Path) -> dict:
    return read_result(Path(run_dir))


def encode_texts(texts: list[str], run_dir: Optional[Path] = None, model_name: Optional[str] = None,
                 pooling: str = "mean", max_length: int = 128, batch_size: int = 256, device: str = "auto") -> np.ndarray:
    """Sentence vectors (float32, one row per text, in input order) from a run's trained bi-encoder
    or from a model's pooled hidden states. Batches are sorted by length; bf16 on a GPU."""
    from .heads import EmbeddingHead, head_params

    if run_dir is not None:
        run = load_run(run_dir, device)
        if not isinstance(run.model, EmbeddingHead):
            raise ClueRunError(f"{run_dir}: its head is {type(run.model).__name__}; encoding needs an embedding head")
        head, tokenizer, dev, amp = run.model, run.tokenizer, run.device, run.amp
    else:
        path = resolve_model(model_name)
        tokenizer = load_tokenizer(path)
        head = EmbeddingHead(load_encoder(path), None, head_params("embedding", {"pooling": pooling}), 0.0)
        dev = pick_device(device)
        amp = autocast_dtype("auto", dev)
        head.to(dev)
    if not texts:
        raise ClueRunError("no texts to encode")
    examples = [Example(i, t, None, None) for i, t in enumerate(texts)]
    enc = encode_examples(examples, tokenizer, max_length)
    graphed = GraphedForward(head, amp) if dev.type == "cuda" else None
    vectors, _ = predict_logits(head, enc, batch_size, tokenizer.pad_token_id, dev, amp, graphed)
    return vectors.astype(np.float32)
