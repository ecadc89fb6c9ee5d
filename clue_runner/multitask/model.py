"""One shared backbone, one head per task."""

from __future__ import annotations

import torch
from torch import nn

from ..heads import Head


class MultiTaskModel(nn.Module):
    """Heads built on the same backbone module (so their encoder weights are one set of tensors).

    A batch is {task: that task's batch}; forward gives {task: outputs}; `loss` hands the per-task
    losses to the weighting.
    """

    graphable = False  # a step's batches are a dict of tasks: no static-shape form
    needs_labels = True

    def __init__(self, backbone: nn.Module, heads: dict[str, Head], weighting: nn.Module):
        super().__init__()
        self.backbone = backbone  # registered first: named_parameters names the shared weights backbone.*
        self.heads = nn.ModuleDict(heads)
        self.weighting = weighting

    def forward(self, **batches) -> dict[str, torch.Tensor]:
        return {name: self.heads[name](**batch) for name, batch in batches.items()}

    def loss(self, outputs: dict[str, torch.Tensor], batches: dict[str, dict]) -> torch.Tensor:
        losses = {name: self.heads[name].loss(outputs[name], batches[name]) for name in outputs}
        return self.weighting(losses, self.shared_parameters)

    def new_parameters(self) -> list:
        seen, params = set(), []
        for head in self.heads.values():
            for p in head.new_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params

    def shared_parameters(self) -> list[nn.Parameter]:
        """The trainable encoder weights every task updates (what gradient-based weightings compare)."""
        own = {id(p) for p in self.new_parameters()}
        return [p for p in self.backbone.parameters() if p.requires_grad and id(p) not in own]
