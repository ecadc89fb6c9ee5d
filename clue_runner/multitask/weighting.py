"""Multi-task loss weightings (kexue.fm/archives/8870, 8896, 8907; docs/METHODS.md section 7).

A weighting turns the step's per-task losses {task: L_i} into ONE scalar the trainer backpropagates.
Its value is always Σ w_i L_i over the step's tasks (what the trainer logs as the training loss); its
gradient is the weighting's:

    fixed             Σ w_i L_i
    initial_loss      Σ w_i L_i / L_i(init)          L_i(init): the first loss observed for task i (detached, saved)
    realtime          Σ w_i L_i / (sg(L_i) + ε)      each task's relative change counts the same (= ∇ Σ log L_i)
    grad_norm         Σ w_i L_i / (sg(‖g_i‖) + ε)    g_i = ∇_shared L_i
    mgda              shared parameters follow Σ α_i g_i, α = argmin_{α ∈ simplex} ‖Σ α_i g_i‖² (Frank–Wolfe);
                      each head its own task's gradient (× w_i)
    primary_auxiliary shared parameters follow u = g_0 + Σ λ_i g_i, λ = argmin_{λ ≥ 0} ‖g_0 + Σ λ_i g_i‖²
                      (one auxiliary task: λ = relu(−⟨g_0, g_1⟩)/‖g_1‖²); each head its own task's gradient

"Shared" is the encoder's trainable parameters. The gradient-based weightings (needs_all_tasks) see
one batch of every task in each micro-batch; the others one scheduled task's batch.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from ..plugins import WEIGHTINGS

EPS = 1e-8
FRANK_WOLFE_STEPS = 250
FRANK_WOLFE_TOLERANCE = 1e-6


def weighting_class(name: str) -> type["Weighting"]:
    return WEIGHTINGS.get(name)


class Weighting(nn.Module):
    """Per-task losses → the loss to backpropagate. State that must survive a resume (initial losses)
    lives in buffers: it is saved with the model."""

    needs_all_tasks = False  # True: every task's loss (and gradient) in the same micro-batch

    def __init__(self, names: list[str], weights: dict[str, float], primary: Optional[str] = None):
        super().__init__()
        self.names, self.weights, self.primary = list(names), dict(weights), primary

    def forward(self, losses: dict[str, torch.Tensor], shared: Callable[[], list[nn.Parameter]]) -> torch.Tensor:
        plain = sum(self.weights[n] * losses[n] for n in losses)
        objective = self.objective(losses, shared, plain)
        return plain.detach() + objective - objective.detach()  # logged value: Σ w_i L_i; gradient: the objective's

    def objective(self, losses, shared, plain) -> torch.Tensor:
        raise NotImplementedError


class FixedWeights(Weighting):
    def objective(self, losses, shared, plain):
        return plain


class InitialLoss(Weighting):
    def __init__(self, names, weights, primary=None):
        super().__init__(names, weights, primary)
        self.register_buffer("initial", torch.full((len(self.names),), float("nan")))

    def objective(self, losses, shared, plain):
        with torch.no_grad():
            for name, loss in losses.items():
                i = self.names.index(name)
                if torch.isnan(self.initial[i]):
                    self.initial[i] = loss.detach().float().clamp_min(EPS)
        initial = self.initial.clone()  # the buffer is written in place later: the graph keeps this copy
        return sum(self.weights[n] * loss / initial[self.names.index(n)] for n, loss in losses.items())


class RealTime(Weighting):
    def objective(self, losses, shared, plain):
        return sum(self.weights[n] * loss / (loss.detach() + EPS) for n, loss in losses.items())


class GradNorm(Weighting):
    needs_all_tasks = True

    def objective(self, losses, shared, plain):
        params = shared()
        return sum(self.weights[n] * loss / (task_gradient(loss, params).norm() + EPS) for n, loss in losses.items())


class _Direction(Weighting):
    """Shared parameters follow a combination Σ c_i g_i of the task gradients; heads their own gradient."""

    needs_all_tasks = True

    def coefficients(self, names: list[str], grads: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def objective(self, losses, shared, plain):
        params = shared()
        names = list(losses)
        grads = torch.stack([task_gradient(losses[n], params) for n in names])
        coefficients = self.coefficients(names, grads).to(grads.dtype)
        weights = torch.tensor([self.weights[n] for n in names], dtype=grads.dtype, device=grads.device)
        # `plain` already moves shared parameters by Σ w_i g_i: add the difference to Σ c_i g_i
        return plain + steer(params, (coefficients - weights) @ grads)


class Mgda(_Direction):
    def coefficients(self, names, grads):
        return min_norm_weights(grads)


class PrimaryAuxiliary(_Direction):
    def coefficients(self, names, grads):
        primary = names.index(self.primary)
        auxiliary = [i for i in range(len(names)) if i != primary]
        lam = auxiliary_weights(grads[primary], grads[auxiliary])
        out = torch.zeros(len(names), dtype=torch.float64, device=grads.device)
        out[primary] = 1.0
        out[auxiliary] = lam
        return out


# -- the math (tested on hand-computed vectors and against brute force) --------------------------


def task_gradient(loss: torch.Tensor, params: list[nn.Parameter]) -> torch.Tensor:
    """∇_params loss as one flat vector (zeros for parameters the task does not reach); the graph is kept."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(grads, params)])


def steer(params: list[nn.Parameter], direction: torch.Tensor) -> torch.Tensor:
    """A term of value 0 whose gradient on `params` is `direction` (flat), and nothing elsewhere."""
    total, offset = 0.0, 0
    for p in params:
        n = p.numel()
        term = (p * direction[offset:offset + n].view_as(p).to(p.dtype).detach()).sum()
        total = total + term - term.detach()
        offset += n
    return total


def min_norm_weights(grads: torch.Tensor, steps: int = FRANK_WOLFE_STEPS,
                     tolerance: float = FRANK_WOLFE_TOLERANCE) -> torch.Tensor:
    """α on the simplex minimising ‖Σ α_i g_i‖² (the MGDA / Pareto-stationary direction), by Frank–Wolfe
    on the Gram matrix (Sener & Koltun 2018, Algorithm 2) in its pairwise form: each step moves weight
    from the active gradient most aligned with the current direction to the least aligned one, with
    exact line search (plain Frank–Wolfe zig-zags when the minimum lies on a face; pairwise steps
    converge linearly, Lacoste-Julien & Jaggi 2015). Two gradients: the exact minimum in one step."""
    gram = (grads.double() @ grads.double().T)
    k = gram.shape[0]
    alpha = torch.full((k,), 1.0 / k, dtype=torch.float64, device=grads.device)
    scale = max(float(gram.diagonal().max()), EPS)
    for _ in range(steps):
        slope = gram @ alpha  # ⟨g_i, v⟩, v = Σ α_j g_j: the gradient of ½‖v‖² in α
        toward = int(torch.argmin(slope))
        active = torch.where(alpha > 0, slope, torch.full_like(slope, -float("inf")))
        away = int(torch.argmax(active))
        gap = float(slope[away] - slope[toward])
        if gap <= tolerance * scale:
            break
        curvature = float(gram[toward, toward] + gram[away, away] - 2 * gram[toward, away])
        step = float(alpha[away]) if curvature <= 0 else min(gap / curvature, float(alpha[away]))
        alpha[toward] += step
        alpha[away] -= step
    return alpha


def auxiliary_weights(primary: torch.Tensor, auxiliary: torch.Tensor, steps: int = FRANK_WOLFE_STEPS,
                      tolerance: float = FRANK_WOLFE_TOLERANCE) -> torch.Tensor:
    """λ ≥ 0 minimising ‖g_0 + Σ λ_i g_i‖² (the dual of 多任务学习漫谈（三）): one auxiliary task has the
    closed form λ = relu(−⟨g_0, g_1⟩)/‖g_1‖²; several are solved by repeating that step on the auxiliary
    gradient most opposed to the current direction (Frank–Wolfe-style vertex choice with exact line
    search along one coordinate, over the cone λ ≥ 0 instead of the simplex)."""
    g0, g = primary.double(), auxiliary.double()
    gram = g @ g.T
    linear = g @ g0  # ⟨g_i, g_0⟩
    lam = torch.zeros(g.shape[0], dtype=torch.float64, device=g.device)
    for _ in range(steps if g.shape[0] > 1 else 1):
        slope = linear + gram @ lam  # ⟨g_i, u⟩, u = g_0 + Σ λ_j g_j
        # a coordinate that lowers the norm: slope < 0, or slope > 0 where λ_i can still shrink
        gain = torch.where((slope < 0) | (lam > 0), slope.abs(), torch.zeros_like(slope))
        i = int(torch.argmax(gain))
        if gain[i] <= tolerance * max(float(g0 @ g0), EPS) or gram[i, i] <= 0:
            break
        lam[i] = torch.clamp(lam[i] - slope[i] / gram[i, i], min=0.0)  # exact minimiser along g_i, kept ≥ 0
    return lam
