"""ChildTuning (Xu et al., EMNLP 2021; alibaba/AliceMind ChildTuning/): update a child network only.

- `mode: F` (task-free): every step each trained parameter's gradient is multiplied by a fresh
  Bernoulli(reserve) mask and divided by reserve (ChildTuningOptimizer: every parameter in the
  optimizer, embeddings and head included).
- `mode: D` (task-driven): before training, one pass over the training data accumulates, for the
  encoder layers' parameters, the squared gradient of the batch-mean loss, each parameter's gradient
  clipped to `train.max_grad_norm` first, divided by the number of batches (the reference's
  calculate_fisher: not the per-example Fisher of the paper's formula). One global threshold, the
  (1 − reserve) percentile over all those scores, gives a mask fixed for the run; it multiplies
  their gradients every step WITHOUT the 1/reserve rescale (as the reference's code does).
  Embeddings, pooler and head are never masked.

Deviations from the reference: the pass runs in training mode on the run's first-epoch batches
(same batch size and order as training); "encoder layer" means a parameter under a numbered
`layer.N.` / `layers.N.` block of the encoder (the reference matches the substring 'layer').
The masks are applied in `before_step`, i.e. before gradient clipping (the reference masks inside
the optimizer, after clipping); the masked entries are zero either way.
"""

from __future__ import annotations

import re
import time
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from . import Method, Params

_LAYER = re.compile(r"(^|\.)layers?\.\d+\.")


class ChildTuningParams(Params):
    mode: Literal["F", "D"] = Field("D", description="F: a fresh random gradient mask each step; D: one Fisher mask on encoder layers")
    reserve: float = Field(0.3, gt=0, le=1, allow_inf_nan=False, description="the share of gradient entries kept")


def encoder_layer_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    """Trained parameters of the encoder's numbered transformer blocks (not embeddings, pooler, head)."""
    return [(name, p) for name, p in model.backbone.encoder.named_parameters()
            if p.requires_grad and _LAYER.search(name)]


def fisher_mask(scores: list[torch.Tensor], reserve: float) -> list[torch.Tensor]:
    """One global threshold over all scores: keep entries at or above the (1 − reserve) percentile."""
    flat = np.concatenate([s.detach().cpu().numpy().ravel() for s in scores])
    threshold = np.percentile(flat, (1 - reserve) * 100)
    return [s >= torch.tensor(threshold, dtype=s.dtype, device=s.device) for s in scores]


class ChildTuning(Method):
    Params = ChildTuningParams

    def __init__(self, params: ChildTuningParams):
        super().__init__(params)
        self.masks: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self.clip = 1.0
        self._summary: dict = {}

    def wrap_model(self, backbone, ctx):
        if ctx is not None:  # the Fisher pass clips like training does
            self.clip = ctx.config.train.max_grad_norm
        return backbone

    def prepare(self, model, batches, compute):
        self._summary = {"mode": self.params.mode, "reserve": self.params.reserve}
        if self.params.mode == "F":
            return
        wall, cpu = time.perf_counter(), time.process_time()
        named = encoder_layer_parameters(model)
        fisher = [torch.zeros_like(p) for _, p in named]
        was_training = model.training
        model.train()
        model.zero_grad(set_to_none=True)
        n = 0
        for batch in batches:
            loss, _ = compute(batch)
            loss.backward()
            for (_, p), f in zip(named, fisher):
                if p.grad is None:
                    continue
                if self.clip:
                    torch.nn.utils.clip_grad_norm_(p, self.clip)
                f += p.grad.detach() ** 2
            model.zero_grad(set_to_none=True)
            n += 1
        model.train(was_training)
        fisher = [f / max(n, 1) for f in fisher]
        masks = fisher_mask(fisher, self.params.reserve)
        self.masks = list(zip((p for _, p in named), masks))  # bool: a quarter of the float mask's memory
        kept = sum(int(m.sum()) for m in masks)
        total = sum(m.numel() for m in masks)
        self._summary.update({
            "fisher_pass_seconds": round(time.perf_counter() - wall, 3),
            "fisher_pass_cpu_seconds": round(time.process_time() - cpu, 3),
            "fisher_batches": n,
            "masked_parameters": total,
            "kept_share": round(kept / total, 4) if total else None,
        })

    def before_step(self, model):
        if self.params.mode == "D":
            for p, mask in self.masks:
                if p.grad is not None:
                    p.grad.mul_(mask)
            return
        drop = 1 - self.params.reserve
        for p in model.parameters():
            if p.grad is not None:  # dropout = Bernoulli(reserve) keep mask and ×1/reserve, in one pass
                torch.nn.functional.dropout(p.grad, drop, training=True, inplace=True)

    def summary(self) -> dict:
        return dict(self._summary)
