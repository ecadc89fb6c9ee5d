"""Outputs of a model over a split, and their scores; `SplitEvaluator`, the trainer's evaluator of one task."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..features import Encoded, collate, eval_batches, to_device
from ..features.batching import cpu_eval_tokens, padding_share
from ..heads import MASKED
from ..metrics import compute_metrics
from ..storage import kill_point
from .cuda_graphs import GraphedForward, StaticBatcher


@torch.no_grad()
def predict_logits(model, enc: Encoded, batch_size: int, pad_id: int, device, amp,
                   graphed: Optional[GraphedForward] = None) -> tuple[np.ndarray, float]:
    """Outputs for every item, in the items' order, and the seconds it took.

    With `graphed`, batches take fixed shapes and replay captured CUDA graphs.
    """
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    batcher = StaticBatcher(enc, pad_id, batch_size) if graphed else None
    parts, order = [], []
    for idx in eval_plan(enc, batch_size, device, graphed):
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


def eval_plan(enc: Encoded, batch_size: int, device, graphed: Optional[GraphedForward] = None) -> list[np.ndarray]:
    """The batches `predict_logits` runs: capped by tokens on a CPU (a batch costs its padded tokens there)."""
    max_tokens = cpu_eval_tokens() if device.type == "cpu" and graphed is None else None
    return eval_batches(enc.lengths, batch_size, max_tokens)


def _stack(parts: list[torch.Tensor]) -> torch.Tensor:
    """Batches' outputs as one tensor; outputs per token (spans) are padded to the widest batch."""
    shape = [max(p.shape[d] for p in parts) for d in range(1, parts[0].ndim)]
    padded = []
    for p in parts:
        pad = [x for d in reversed(range(1, p.ndim)) for x in (0, shape[d - 1] - p.shape[d])]
        padded.append(F.pad(p, pad, value=MASKED) if any(pad) else p)
    return torch.cat(padded)


def score(task, predict, outputs: np.ndarray, enc: Encoded, calibration=None) -> dict[str, float]:
    return score_predictions(task, enc, predict(torch.from_numpy(outputs), enc), calibration)


def score_predictions(task, enc: Encoded, preds, calibration=None) -> dict[str, float]:
    return compute_metrics(task.metrics, enc.targets, preds, len(task.label.values), calibration)


@dataclass
class Predictions:
    """Decoded predictions of one evaluation, in the order of the examples whose ids they hold."""

    ids: list
    predictions: Any


class SplitEvaluator:
    """One task's model scored on its featurized eval split (a `trainer.Evaluator`). After each evaluation,
    `seconds` is the model's time over the split and `last_predictions` what it predicted."""

    def __init__(self, built, enc: Encoded, ids: list, threshold_enc: Optional[Encoded] = None):
        self.built, self.enc, self.ids, self.threshold_enc = built, enc, ids, threshold_enc
        self.main_metric = built.task.main_metric
        self.seconds: Optional[float] = None
        self.last_predictions: Optional[Predictions] = None

    @property
    def examples(self) -> int:
        return len(self.enc)

    def evaluate(self) -> dict[str, float]:
        built = self.built
        logits, self.seconds = built.logits(self.enc)
        kill_point("evaluated")
        calibration = built.calibration(self.threshold_enc)
        preds = built.predict(torch.from_numpy(logits), self.enc)
        self.last_predictions = Predictions(self.ids, preds)
        return score_predictions(built.task, self.enc, preds, calibration)

    def timed_seconds(self) -> float:
        """The last evaluation's time; none ran in this process (resumed after the last one): one is timed."""
        if self.seconds is None:
            self.seconds = self.built.logits(self.enc)[1]
        return self.seconds

    def padding_share(self) -> Optional[float]:
        built = self.built
        if built.graphed is not None:  # eager batches only: CUDA graphs pad to their captured shapes
            return None
        batch_size = built.cfg.train.eval_batch_size
        return round(padding_share(self.enc, eval_plan(self.enc, batch_size, built.device)), 4)
