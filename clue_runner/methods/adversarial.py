"""Adversarial training on the word embeddings: FGM (Miyato et al. 2017; the bert4keras / CLUE
recipe) and the gradient penalty (bert4keras task_iflytek_gradient_penalty.py). kexue.fm/archives/7234
relates them: the gradient at the perturbed input, ∇L(x + ε∇L) ≈ ∇L + ε∇²L·∇L, is to first order the
gradient of L + ½ε‖∇L‖², the penalised loss."""

from __future__ import annotations

from collections import deque

import torch
from pydantic import Field

from ..errors import ConfigError
from . import Method, Params


class FGMParams(Params):
    epsilon: float = Field(1.0, gt=0, allow_inf_nan=False, description="L2 norm of the perturbation of the batch's word embeddings")


def embedding_grad_conflict(method: Method, needs: str, others: list[Method]):
    """Why `method`, which needs the word embeddings' gradient for `needs`, cannot run beside the others."""
    for other in others:
        if other.no_embedding_grad:
            return (f"{method.name} {needs}, but {other.no_embedding_grad}: "
                    f"{method.name} would do nothing; drop {method.name} or {other.name}")
    return None


def trained_embeddings(model, name: str) -> torch.nn.Module:
    """The word-embedding module; refused when it is frozen (no gradient would reach it)."""
    module = model.backbone.input_embeddings()
    if not module.weight.requires_grad:
        raise ConfigError(f"methods: {name} needs trained word embeddings; they are frozen in this model")
    return module


class FGM(Method):
    """After the normal backward, perturb the word embeddings along their gradient
    (r = ε·g/‖g‖), add the gradient of the loss on the perturbed input, then restore
    the embeddings exactly. Every input segment is perturbed (a bi-encoder's second sentence
    too): they share the embedding matrix, and the rows of all their tokens are moved."""

    Params = FGMParams

    def conflict(self, others):
        return embedding_grad_conflict(self, "perturbs the word embeddings along their gradient", others)

    def prepare(self, model, batches, compute):
        self.embeddings = trained_embeddings(model, "fgm").weight

    def after_backward(self, model, batch, step):
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
            adv_loss, _ = step.compute(batch)
            step.backward(adv_loss)
        finally:
            with torch.no_grad():
                self.embeddings[rows] = saved


class GradientPenaltyParams(Params):
    epsilon: float = Field(1.0, gt=0, allow_inf_nan=False, description="weight ε of the penalty ½·ε·Σ‖∂L/∂e‖²")


class GradientPenalty(Method):
    """loss + ½·ε·Σ‖∂L/∂e‖² over every token's looked-up word embedding e in the batch (each
    occurrence on its own, as bert4keras's `K.gradients(...)[0].values`; every input segment).
    The gradient is taken with create_graph, so the penalty's own gradient is a double backward.
    Weighted by the micro-batch's share of the step, the penalty is that of the step's whole batch
    under gradient accumulation and data parallel too."""

    Params = GradientPenaltyParams
    KEEP = 8  # lookups remembered: the default forward's and those of a few extra passes after it

    def __init__(self, params: GradientPenaltyParams):
        super().__init__(params)
        self.lookups: deque = deque(maxlen=self.KEEP)  # word-embedding outputs of recent forwards with autograd
        self.hook = None

    def conflict(self, others):
        return embedding_grad_conflict(self, "penalises the gradient at the word embeddings", others)

    def wrap_model(self, backbone, ctx):
        # The fused SDPA kernels (flash attention, CPU and GPU) have no second derivative; eager attention has.
        backbone.model.set_attn_implementation("eager")
        return backbone

    def prepare(self, model, batches, compute):
        if self.hook is not None:  # prepared again: one hook, or each lookup would count twice
            self.hook.remove()
        self.hook = trained_embeddings(model, "gradient_penalty").register_forward_hook(self._seen)

    def _seen(self, module, inputs, output) -> None:
        if torch.is_grad_enabled() and output.requires_grad:
            self.lookups.append(output)

    def loss_term(self, model, batch, outputs, loss, step):
        seen = list(self.lookups)
        self.lookups.clear()
        # Lookups of other passes (R-Drop's second one) are not in this loss's graph: their gradient is None.
        grads = torch.autograd.grad(loss * step.loss_scale, seen, create_graph=True, allow_unused=True) if seen else ()
        used = [g for g in grads if g is not None]
        if not used:
            raise RuntimeError("gradient_penalty: the loss used none of the word-embedding lookups it saw")
        squares = sum((g.float() / step.loss_scale).pow(2).sum() for g in used)
        return 0.5 * self.params.epsilon * step.batch_share * squares
