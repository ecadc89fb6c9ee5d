"""FGM adversarial training (Miyato et al. 2017; the bert4keras / CLUE recipe)."""

from __future__ import annotations

import torch
from pydantic import Field

from . import METHODS, Method, Params


class FGMParams(Params):
    epsilon: float = Field(1.0, gt=0)


@METHODS.register("fgm")
class FGM(Method):
    """After the normal backward, perturb the word embeddings along their gradient
    (r = ε·g/‖g‖), add the gradient of the loss on the perturbed input, then restore
    the embeddings exactly."""

    Params = FGMParams

    def setup(self, model):
        self.embeddings = model.encoder.get_input_embeddings().weight

    def after_backward(self, model, batch, compute, scale):
        grad = self.embeddings.grad
        if grad is None:
            return
        # Only the rows of tokens in this batch have a gradient; back them up and copy them
        # back afterwards (x + d - d is not x in floating point).
        rows = batch["input_ids"].unique()
        saved = self.embeddings.detach()[rows].clone()
        g = grad[rows]
        delta = self.params.epsilon * g / torch.linalg.vector_norm(g).clamp_min(1e-12)
        with torch.no_grad():
            self.embeddings[rows] += delta
        try:
            adv_loss, _ = compute(batch)
            (adv_loss * scale).backward()
        finally:
            with torch.no_grad():
                self.embeddings[rows] = saved
