"""Outputs of a model over a split, and their scores."""

from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..features import Encoded, collate, eval_batches, to_device
from ..features.batching import cpu_eval_tokens
from ..heads import MASKED
from ..metrics import compute_metrics
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
    preds = predict(torch.from_numpy(outputs), enc)
    return compute_metrics(task.metrics, enc.targets, preds, len(task.label.values), calibration)
