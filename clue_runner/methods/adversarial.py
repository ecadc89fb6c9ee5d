"""FGM adversarial training (Miyato et al. 2017; the bert4keras / CLUE recipe)."""

from __future__ import annotations

import torch
from pydantic import Field

from ..errors import ConfigError
from . import Method, Params


class FGMParams(Params):
    epsilon: float = Field(1.0, gt=0, allow_inf_nan=False)


class FGM(Method):
    """After the normal backward, perturb the word embeddings along their gradient
    (r = ε·g/‖g‖), add the gradient of the loss on the perturbed input, then restore
    the embeddings exactly. Every input segment is perturbed (a bi-encoder's second sentence
    too): they share the embedding matrix, and the rows of all their tokens are moved."""

    Params = FGMParams

    def conflict(self, others):
        for other in others:
            if other.no_embedding_grad:
                return (f"fgm perturbs the word embeddings along their gradient, but {other.no_embedding_grad}: "
                        f"fgm would do nothing; drop fgm or {other.name}")
        return None

    def prepare(self, model, batches, compute):
        self.embeddings = model.backbone.input_embeddings().weight
        if not self.embeddings.requires_grad:  # its gradient would stay None and every step would skip the attack
            raise ConfigError("methods: fgm needs trained word embeddings; they are frozen in this model")

    def after_backward(self, model, batch, compute, scale):
        grad = self.embeddings.grad
        if grad is None:
            return
        # Only the rows of tokens in this batch have a gradient; back them up and copy them
        # back afterwards (x + d - d is not x in floating point).
        rows = torch.cat([v.flatten() for k, v in batch.items() if k.endswith("input_ids")]).unique()
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
