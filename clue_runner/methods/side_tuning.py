"""Ladder Side-Tuning (Sung et al. 2022, ylsung/Ladder-Side-Tuning; Su's Chinese variant bojone/LST-CLUE).

The backbone is frozen and run under `torch.no_grad()`: no activation is kept for a backward
through it, and no gradient ever reaches it. A small side transformer reads the backbone's
hidden states through "ladders" and feeds the task head:

    x₀ = W_in · embedding output of the backbone
    xᵢ = side_layerᵢ(xᵢ₋₁) + W_i · (output of backbone layer fᵢ)      (Su: plain sum)
       = μᵢ·side_layerᵢ(xᵢ₋₁) + (1 − μᵢ)·W_i·(…), μᵢ = sigmoid(αᵢ/0.1), αᵢ = 0 at start   (gate: true, the paper)
    last_hidden_state = W_up · x_n      (back to the backbone width, so every head reads it unchanged)

Default = Su's variant: hidden 128, 4 layers, 4 heads, FFN 512, post-LayerNorm layers randomly
initialised with his DeepNorm-style std 1.13684723/√hidden · n_layers^(−1/2), ladder fᵢ =
(i+1)·L/n − 1 (L backbone layers). Not done: the paper's Fisher-pruned initialisation from the
backbone. The side, ladder and up-projection weights live in the backbone wrapper, so `best/`
holds the unchanged backbone as a transformers checkpoint and the exact state for reloading.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from pydantic import Field
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from ..errors import ConfigError
from ..models.backbone import Backbone
from . import Method, Params

GATE_T = 0.1  # the paper's gate temperature


class LSTParams(Params):
    hidden: int = Field(128, ge=8, description="width of the side transformer (a multiple of heads)")
    layers: int = Field(4, ge=1, description="side transformer layers")
    heads: int = Field(4, ge=1, description="attention heads per side layer")
    ffn: int = Field(512, ge=8, description="feed-forward width of a side layer")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout in the side layers")
    feed_layers: Optional[list[int]] = Field(
        None, description="0-based backbone layers feeding side layers 1..n (null: evenly spaced to the last)")
    # the paper's gate sigmoid(α/0.1), α = 0 at start
    gate: bool = Field(False, description="the paper's learnable gate on each ladder (false: Su's plain sum)")
    lr: Optional[float] = Field(None, gt=0, le=1, allow_inf_nan=False,
                                description="the side network's learning rate (null: train.head_lr or train.lr)")


def default_feed(backbone_layers: int, side_layers: int) -> list[int]:
    """Side layer i reads backbone layer (i+1)·L/n − 1 (at least the first layer)."""
    return [max(0, (i + 1) * backbone_layers // side_layers - 1) for i in range(side_layers)]


class SideTunedBackbone(Backbone):
    """A frozen backbone with a trained side network; `forward` gives the side network's states."""

    def __init__(self, frozen: Backbone, params: LSTParams):
        super().__init__(frozen.model, frozen.kind)
        self.load_report = frozen.load_report
        for p in self.model.parameters():
            p.requires_grad_(False)
        cfg = self.model.config
        width, h, n = cfg.hidden_size, params.hidden, params.layers
        if h % params.heads:
            raise ConfigError(f"methods: lst hidden {h} is not a multiple of heads {params.heads}")
        total = cfg.num_hidden_layers
        feed = params.feed_layers if params.feed_layers is not None else default_feed(total, n)
        if len(feed) != n or any(not 0 <= i < total for i in feed):
            raise ConfigError(f"methods: lst feed_layers {feed}: need {n} backbone layer indices in 0..{total - 1}")
        self.feed = list(feed)
        self.side_in = nn.Linear(width, h, bias=False)
        self.ladders = nn.ModuleList(nn.Linear(width, h, bias=False) for _ in range(n))
        self.side_layers = nn.ModuleList(
            nn.TransformerEncoderLayer(h, params.heads, params.ffn, params.dropout, activation="gelu", batch_first=True)
            for _ in range(n))
        self.gate_alpha = nn.Parameter(torch.zeros(n)) if params.gate else None
        self.upsample = nn.Linear(h, width)
        std = 1.13684723 / math.sqrt(h) / math.sqrt(n)  # Su's DeepNorm-style init
        for module in self.side_modules():
            for sub in module.modules():
                if isinstance(sub, nn.Linear):
                    nn.init.normal_(sub.weight, std=std)
                    if sub.bias is not None:
                        nn.init.zeros_(sub.bias)
        # nn.MultiheadAttention keeps its input projection as a bare parameter
        for layer in self.side_layers:
            nn.init.normal_(layer.self_attn.in_proj_weight, std=std)
            nn.init.zeros_(layer.self_attn.in_proj_bias)

    def side_modules(self) -> list[nn.Module]:
        return [self.side_in, self.ladders, self.side_layers, self.upsample]

    def side_parameters(self) -> list[nn.Parameter]:
        params = [p for m in self.side_modules() for p in m.parameters()]
        return params + ([self.gate_alpha] if self.gate_alpha is not None else [])

    def head_parameters(self) -> list[nn.Parameter]:
        # Only the side network is new here; the frozen backbone must never be re-enabled.
        return self.side_parameters()

    def forward(self, batch: dict, prefix: str = "", hidden_states: bool = False):
        with torch.no_grad():
            states = self.model(**self._inputs(batch, prefix), output_hidden_states=True).hidden_states
        padding = batch[f"{prefix}attention_mask"] == 0
        x = self.side_in(states[0])
        collected = [x]
        for i, layer in enumerate(self.side_layers):
            side = layer(x, src_key_padding_mask=padding)
            ladder = self.ladders[i](states[self.feed[i] + 1])  # states[0] is the embedding output
            if self.gate_alpha is not None:
                mu = torch.sigmoid(self.gate_alpha[i] / GATE_T)
                x = mu * side + (1 - mu) * ladder
            else:
                x = side + ladder
            collected.append(x)
        return BaseModelOutput(last_hidden_state=self.upsample(x),
                               hidden_states=tuple(self.upsample(c) for c in collected) if hidden_states else None)

    def classify(self, batch: dict) -> torch.Tensor:
        raise RuntimeError("an lst backbone has no classification head of its own")


class LST(Method):
    Params = LSTParams
    requires_kind = "base"  # heads read the side network's states; the cls head uses its own linear layer
    changes_export = True  # best/ holds the unchanged backbone; the exact state holds the side network
    no_embedding_grad = ("lst runs the frozen backbone without autograd, so no gradient reaches the word "
                         "embeddings (and a perturbation there could not be learned from)")

    def wrap_model(self, backbone, ctx):
        return SideTunedBackbone(backbone, self.params)

    def param_groups(self, model) -> list[dict]:
        return [{"params": model.backbone.side_parameters(), "lr": self.params.lr}] if self.params.lr else []
