"""The one training loop. It knows no task and no method by name.

batches → loss → backward → (method hooks) → clip → step → schedule → evaluate every
epoch or N steps → keep best by the main metric → early stopping. `Trainer.run` is a
generator (after spaCy's `train_while_improving`): it yields an `Event` after every
evaluation and checkpoint, and the caller logs. It is handed an `Evaluator` (scores the model)
and a `CheckpointPolicy` (keeps best/) and calls them, never the caller's code. Resume state
(model, optimizer, scheduler, RNG, data position: three times the model) is written atomically only where it is
needed: at an evaluation that improved (the commit `best/` follows, see runs.rundir), at every
`checkpoint_every` steps, and at an evaluation after RESUME_AFTER_SECONDS of training without a
commit. Every other evaluation is redone exactly after a kill (batch order and RNG are restored).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import get_linear_schedule_with_warmup

from ..features import Encoded, to_device
from ..features.batching import EncodedSource, padded_tokens
from ..methods import StepContext
from ..storage import atomic_save, kill_point
from . import distributed
from .cuda_graphs import GraphedTrainStep, StaticBatcher
from .device import autocast_dtype, seed_everything

RESUME_FILE = "trainer.pt"
# A kill loses at most about this much training since the last commit (unless checkpoint_every says less).
RESUME_AFTER_SECONDS = 600.0


def fast_path_blocker(cfg, methods, device: torch.device, model=None) -> Optional[str]:
    """Why the CUDA-graph fast path cannot run (None when it can)."""
    if not cfg.cuda_graphs:
        return "train.cuda_graphs is off"
    if not getattr(model, "graphable", True):
        return f"the {type(model).__name__} batches have no static-shape form"
    if device.type != "cuda":
        return "no CUDA device"
    if distributed.enabled():
        return "data parallel (gradients are averaged between backward and step)"
    if cfg.grad_accum != 1:
        return "gradient accumulation"
    if cfg.precision == "fp16":
        return "fp16 gradient scaling"
    hooked = [getattr(m, "name", type(m).__name__) for m in methods if m.has_step_hooks]
    if hooked:
        return f"{', '.join(hooked)} hook{'s' if len(hooked) == 1 else ''} into the step"
    return None


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch in progress
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed
    history: list = field(default_factory=list)
    best: Optional[dict] = None
    evals_without_improvement: int = 0
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0  # this process's CPU time in training: comparable on a shared machine
    samples: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    stopped_early: bool = False
    pending_loss: float = 0.0  # training loss summed since the last evaluation
    pending_count: int = 0


class Evaluator(Protocol):
    """Scores the model as it is now (engine.evaluate.SplitEvaluator; several tasks: multitask.run)."""

    main_metric: str  # the metric that decides best/ and early stopping

    def evaluate(self) -> dict[str, float]: ...


class CheckpointPolicy(Protocol):
    """Keeps the best step's checkpoint (engine.checkpoint.BestCheckpoint)."""

    def save_best(self, best: dict) -> None: ...

    def resumed(self, best: Optional[dict], step: int) -> None: ...


@dataclass
class Event:
    kind: str  # "eval" or "checkpoint"
    state: TrainState
    metrics: Optional[dict] = None
    improved: bool = False


class Trainer:
    def __init__(self, model, loss_fn: Callable, methods: list, train_data, evaluator: Evaluator, cfg, pad_id: int,
                 device: torch.device, checkpoints: Optional[CheckpointPolicy] = None,
                 resume_dir: Optional[Path] = None, log_dir: Optional[Path] = None, run_config: Optional[dict] = None):
        self.model, self.loss_fn, self.methods = model, loss_fn, methods
        # Training data: one task's Encoded, or a batch source (epoch → items, collate; e.g. several tasks)
        if isinstance(train_data, Encoded):
            train_data = EncodedSource(train_data, cfg.batch_size, cfg.seed, cfg.group_by_length)
        self.source, self.evaluator, self.main_metric = train_data, evaluator, evaluator.main_metric
        self.checkpoints = checkpoints
        self.cfg, self.pad_id, self.device = cfg, pad_id, device
        self.resume_dir = resume_dir
        self.amp = autocast_dtype(cfg.precision, device)
        # float16 gradients underflow without loss scaling; bf16 and fp32 need none.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        # No training data: max_steps 0, the run only scores the model as it is.
        self.batches_per_epoch = train_data.batches_per_epoch if train_data is not None else 0
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.grad_accum)
        self.total_steps = cfg.max_steps if cfg.max_steps is not None else self.steps_per_epoch * cfg.epochs
        self.state = TrainState()
        self._committed_seconds = 0.0  # training time at the last commit of resume state

        distributed.init(device)
        if distributed.enabled() and cfg.batch_size < distributed.world_size():
            from ..errors import ConfigError

            raise ConfigError(f"train.batch_size {cfg.batch_size} is the global batch: give at least one example "
                              f"per process ({distributed.world_size()})")
        distributed.broadcast_parameters(model)
        seed_everything(cfg.seed)
        if train_data is not None:
            for m in methods:
                m.prepare(model, self._epoch_batches(), self._compute)
        self.fast_path = fast_path_blocker(cfg, methods, device, model) is None
        self.optimizer = self._optimizer()
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(cfg.warmup * self.total_steps), self.total_steps
        )
        # On a GPU, widths rounded to 8 keep the set of shapes (and per-shape library set-up) small.
        self.pad_multiple = 8 if device.type == "cuda" else 1
        self.graph_step = self.static_batch = None
        if self.fast_path:
            self.graph_step = GraphedTrainStep(model, loss_fn, self.optimizer, cfg.max_grad_norm, self.amp)
            self.static_batch = StaticBatcher(self.source.data, pad_id, cfg.batch_size)
        if resume_dir is not None and (resume_dir / RESUME_FILE).is_file():
            self._load(resume_dir)
        if checkpoints is not None:
            checkpoints.resumed(self.state.best, self.state.step)
        from .loggers import open_loggers

        self.loggers = open_loggers(getattr(cfg, "report_to", []), log_dir,
                                    log_dir.parent.name if log_dir else "", run_config or {})

    def _epoch_batches(self) -> Iterator[dict]:
        """The first epoch's batches on the device, for methods that look at the data before training."""
        for item in self.source.epoch(0):
            yield to_device(self.source.collate(item, self.pad_id), self.device)

    def _optimizer(self) -> torch.optim.Optimizer:
        new = {id(p) for p in getattr(self.model, "new_parameters", lambda: [])()}
        lr = self.cfg.lr
        claimed, method_groups = set(), []
        for m in self.methods:  # parameters a method gives its own learning rate
            for group in m.param_groups(self.model):
                params = [p for p in group["params"] if p.requires_grad and id(p) not in claimed]
                claimed.update(id(p) for p in params)
                if params:
                    method_groups.append({"params": params, "weight_decay": group.get("weight_decay", self.cfg.weight_decay),
                                          "lr": group.get("lr") or lr})
        decay, no_decay, head = [], [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad or id(p) in claimed:
                continue
            if id(p) in new:
                head.append(p)
            elif p.ndim < 2:  # biases and LayerNorm weights are not decayed
                no_decay.append(p)
            else:
                decay.append(p)
        groups = [
            {"params": decay, "weight_decay": self.cfg.weight_decay, "lr": lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": lr},
            {"params": head, "weight_decay": self.cfg.weight_decay, "lr": self.cfg.head_lr or lr},
            *method_groups,
        ]
        groups = [g for g in groups if g["params"]]
        # Fused AdamW: one kernel per step instead of a loop over parameters (about 2.8x faster per
        # optimizer step on CPU too, where torch >= 2.4 supports it).
        return torch.optim.AdamW(groups, lr=lr, fused=fused_adamw_supported(self.device), capturable=self.fast_path)

    # -- one step -------------------------------------------------------------------------

    def _compute(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            logits = self.model(**batch)
        return self.loss_fn(logits, batch), logits

    def _loss(self, batch, step: StepContext) -> torch.Tensor:
        """The default loss plus every method's term."""
        loss, outputs = self._compute(batch)
        total = loss
        for m in self.methods:
            term = m.loss_term(self.model, batch, outputs, loss, step)
            if term is not None:
                total = total + term
        return total

    def _step_context(self, weight: float, scale: float) -> StepContext:
        """What step hooks get for a micro-batch whose loss counts `scale` × its data-parallel `weight`."""
        return StepContext(self._compute, loss_weight=scale * weight,
                           batch_share=scale * weight / distributed.world_size(),
                           loss_scale=self.scaler.get_scale() if self.scaler.is_enabled() else 1.0)

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> Iterator[Event]:
        cfg, state = self.cfg, self.state
        scale = 1.0 / cfg.grad_accum
        # Summed on the device: reading a loss every step would sync the host with the GPU.
        self._loss_sum = torch.tensor(state.pending_loss, device=self.device)
        self.model.train()
        if self.total_steps == 0:  # nothing to train, so nothing to resume either
            yield self._keep(self._eval())
            return
        if state.stopped_early:  # resumed after the early stop was saved: nothing left to train
            return
        with _progress() as progress:
            bar = progress.add_task("train", total=self.total_steps, completed=state.step)
            self._mark()
            while state.step < self.total_steps:
                batches = self.source.epoch(state.epoch)
                first = state.batch_in_epoch
                for bi in range(first, len(batches)):
                    epoch_end = bi + 1 == len(batches)
                    boundary = (bi + 1 - first) % cfg.grad_accum == 0 or epoch_end
                    self._train_on(batches[bi], boundary, scale)
                    kill_point("train-batch")
                    state.batch_in_epoch = bi + 1
                    if not boundary:
                        continue
                    progress.advance(bar)
                    if epoch_end:
                        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                    last = state.step >= self.total_steps
                    if last or (cfg.eval_every and state.step % cfg.eval_every == 0) or (epoch_end and not cfg.eval_every):
                        self._tick()
                        event = self._eval()
                    elif cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                        self._tick()
                        event = Event("checkpoint", state)
                    else:
                        event = None
                    if event is not None:
                        if self._needs_commit(event):
                            self._save(self.resume_dir)
                        yield self._keep(event)
                        self._mark()
                    if last or state.stopped_early:
                        return
            self._tick()

    def _train_on(self, item, boundary: bool, scale: float) -> None:
        """One micro-batch: forward, backward, method hooks; the optimizer step at an accumulation boundary."""
        state = self.state
        if self.graph_step is not None:
            host, _ = self.static_batch(item)
            self.graph_step.set_lrs()
            loss = self.graph_step(host)  # includes the optimizer step
            self.scheduler.step()
            state.step += 1
        else:
            # Data parallel: this process's share of the global batch, its loss weighted by its share.
            mine, weight = self.source.shard(item, distributed.shard)
            host = self.source.collate(mine, self.pad_id, pad_multiple=self.pad_multiple)
            batch = to_device(host, self.device)
            step = self._step_context(weight, scale)
            loss = self._loss(batch, step) * weight
            self.scaler.scale(loss * scale).backward()  # the loss itself when not scaling
            for m in self.methods:
                m.after_backward(self.model, batch, step)
            if boundary:
                self._optimizer_step()
        self._loss_sum += loss.detach()
        state.pending_count += 1
        state.samples += self.source.samples(item)
        state.real_tokens += self.source.real_tokens(item)
        state.padded_tokens += padded_tokens(host)

    def _keep(self, event: Event) -> Event:
        """best/ follows an evaluation that improved, after the commit of the resume state that names it."""
        if event.improved and self.checkpoints is not None:
            self.checkpoints.save_best(self.state.best)
        return event

    def _needs_commit(self, event: Event) -> bool:
        every = self.cfg.checkpoint_every
        return (event.kind == "checkpoint" or event.improved or bool(every and self.state.step % every == 0)
                or self.state.train_seconds - self._committed_seconds >= RESUME_AFTER_SECONDS)

    def _mark(self) -> None:
        self._t0, self._cpu0 = time.perf_counter(), time.process_time()

    def _tick(self) -> None:
        """Add the time since the last mark to training time (evaluation and saving excluded)."""
        now, cpu = time.perf_counter(), time.process_time()
        self.state.train_seconds += now - self._t0
        self.state.train_cpu_seconds += cpu - self._cpu0
        self._t0, self._cpu0 = now, cpu

    def _optimizer_step(self) -> None:
        distributed.average_gradients(self.model.parameters())
        for m in self.methods:
            m.before_step(self.model)
        self.scaler.unscale_(self.optimizer)  # clipping sees true gradients (no-op when not scaling)
        if self.cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.scaler.step(self.optimizer)  # skipped when fp16 gradients overflowed
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1

    def _eval(self) -> Event:
        state = self.state
        self.model.eval()
        metrics = self.evaluator.evaluate()
        self.model.train()
        main = metrics[self.main_metric]
        improved = state.best is None or _better(main, state.best["metrics"][self.main_metric])
        record = {
            "step": state.step,
            "epoch": round(state.step / self.steps_per_epoch, 4) if self.steps_per_epoch else 0.0,
            "train_loss": float(distributed.average(self._loss_sum)) / state.pending_count if state.pending_count else None,
            "lr": self.scheduler.get_last_lr()[0],
            "metrics": metrics,
            "train_seconds": round(state.train_seconds, 3),
        }
        state.history.append(record)
        for logger in self.loggers:
            logger.log(record)
        self._loss_sum.zero_()
        state.pending_count = 0
        if improved:
            state.best = {k: record[k] for k in ("step", "epoch", "metrics")}
            state.evals_without_improvement = 0
        else:
            state.evals_without_improvement += 1
            if self.cfg.patience and state.evals_without_improvement >= self.cfg.patience:
                state.stopped_early = True
        return Event("eval", state, metrics, improved)

    def close_loggers(self) -> None:
        for logger in self.loggers:
            logger.close()

    # -- resume ---------------------------------------------------------------------------

    def _save(self, directory: Optional[Path]) -> None:
        """Resume state as ONE file replaced atomically: the commit point of a checkpoint."""
        if directory is None or not distributed.is_main():
            return
        self.state.pending_loss = float(self._loss_sum)
        saved = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "state": asdict(self.state),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        }
        atomic_save(directory / RESUME_FILE, lambda fh: torch.save(saved, fh))
        self._committed_seconds = self.state.train_seconds
        kill_point("checkpoint-saved")

    def _load(self, directory: Path) -> None:
        saved = torch.load(directory / RESUME_FILE, map_location="cpu", weights_only=False)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        self.state = TrainState(**saved["state"])
        self._committed_seconds = self.state.train_seconds
        rng = saved["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])


def _better(score: float, best: float) -> bool:
    """NaN (an undefined metric, e.g. the correlation of a constant prediction) is worse than any number."""
    if math.isnan(score):
        return False
    return math.isnan(best) or score > best


def fused_adamw_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return True
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    try:
        return device.type in _get_fused_kernels_supported_devices()
    except Exception:  # a private helper: if it moves, fall back to the loop
        return False


def _progress() -> Progress:
    from rich.console import Console

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=Console(stderr=True), transient=False,
        disable=os.environ.get("CLUE_RUN_NO_PROGRESS") == "1" or not distributed.is_main(),
    )
