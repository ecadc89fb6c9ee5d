"""P-tuning: continuous prompt vectors placed right after [CLS], with the label word's [MASK]s among
them, on the `pet` head (the label word is still read at the masks).

- `embeddings` (bojone/P-tuning, FewCLUE ptuning): n trainable vectors; every other weight of the
  model (encoder, MLM head, embeddings) stays frozen.
- `encoder` (THUDM's original, FewCLUE ptuning_origin): the vectors come out of a prompt encoder
  (2-layer BiLSTM + MLP, or an MLP) over learned inputs; the whole model trains.

The vectors replace the input embeddings of `[P]` placeholders in the rendered template, so token
type ids, position ids and sentence pairs are handled as for any input (peft's PromptEncoder
prepends before [CLS] and drops token_type_ids: METHODS.md section 2).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from . import Method, Params


class PTuningParams(Params):
    variant: Literal["embeddings", "encoder"] = Field(
        "embeddings", description="embeddings: vectors alone, model frozen; encoder: prompt encoder, all trains")
    prompt_length: int = Field(8, description="prompt vectors (the label word's [MASK]s come on top)")
    mask_at: int = Field(4, description="how many prompt vectors precede the [MASK]s")
    encoder: Literal["lstm", "mlp"] = Field("lstm", description="the encoder variant's prompt encoder: BiLSTM + MLP, or MLP")
    # bojone: Adam 6e-4
    lr: float = Field(6e-4, description="learning rate of the prompt vectors (and prompt encoder)")


class PromptedBackbone(nn.Module):
    """The backbone with prompt vectors written into the inputs at the `[P]` positions."""

    def __init__(self, backbone, params: PTuningParams):
        super().__init__()
        self.inner, self.params = backbone, params
        self.kind, self.load_report = backbone.kind, backbone.load_report
        d = backbone.config.hidden_size
        n = params.prompt_length
        words = backbone.input_embeddings().weight
        start = torch.randint(words.shape[0], (n,), generator=torch.Generator().manual_seed(0))
        self.prompt = nn.Parameter(words[start].detach().clone())  # start from real token embeddings
        self.prompt_encoder = None
        if params.variant == "encoder":
            if params.encoder == "lstm":
                self.lstm = nn.LSTM(d, d // 2, num_layers=2, bidirectional=True, batch_first=True)
            self.prompt_encoder = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))

    @property
    def config(self):
        return self.inner.config

    @property
    def model(self):
        return self.inner.model

    @property
    def encoder_prefix(self):
        return "inner." + self.inner.encoder_prefix

    def input_embeddings(self):
        return self.inner.input_embeddings()

    def vectors(self) -> torch.Tensor:
        if self.prompt_encoder is None:
            return self.prompt
        x = self.prompt[None]
        if self.params.encoder == "lstm":
            x = self.lstm(x)[0]
        return self.prompt_encoder(x)[0]

    def _prompted(self, batch: dict) -> dict:
        if "prompt_positions" not in batch:
            raise RuntimeError("ptuning: the batch has no prompt positions (is the head pet?)")
        embeds = self.inner.input_embeddings()(batch["input_ids"])
        positions = batch["prompt_positions"]  # [B, n]
        rows = torch.arange(embeds.shape[0], device=embeds.device)[:, None]
        embeds = embeds.index_put((rows.expand_as(positions), positions),
                                  self.vectors().to(embeds.dtype).expand(positions.shape[0], -1, -1))
        return {**batch, "inputs_embeds": embeds}

    def forward(self, batch, prefix="", hidden_states=False):
        return self.inner(self._prompted(batch), prefix, hidden_states)

    def mlm_logits(self, batch):
        return self.inner.mlm_logits(self._prompted(batch))

    def head_parameters(self):
        own = [p for name, p in self.named_parameters() if not name.startswith("inner.")]
        if self.params.variant == "embeddings":
            return own  # the MLM head stays as pretrained
        return own + self.inner.head_parameters()

    def save_pretrained(self, directory, model=None):
        self.inner.save_pretrained(directory, model)


class PTuning(Method):
    Params = PTuningParams
    requires_kind = "mlm"
    changes_export = True  # the prompt vectors live outside the transformers checkpoint

    def check(self, head_cls, task, head_params):
        if head_cls.requires_kind != "mlm" or not hasattr(head_cls, "Params") or "template" not in head_cls.Params.model_fields:
            return "ptuning works with the pet head (head: {name: pet})"
        if not 0 <= self.params.mask_at <= self.params.prompt_length:
            return "ptuning: mask_at must be between 0 and prompt_length"
        return None

    def wrap_model(self, backbone, ctx):
        if self.params.variant == "embeddings":
            for p in backbone.parameters():
                p.requires_grad_(False)
        return PromptedBackbone(backbone, self.params)

    def prompt_template(self, task):
        """The prompt vectors' `[P]` placeholders around the label word's mask, then the input."""
        p = self.params
        text = "{text_a}[SEP]{text_b}" if task.inputs.text_b is not None else "{text_a}"
        return "[P]" * p.mask_at + "[MASK]" + "[P]" * (p.prompt_length - p.mask_at) + text

    def param_groups(self, model):
        backbone = model.backbone
        own = [p for name, p in backbone.named_parameters() if not name.startswith("inner.")]
        return [{"params": own, "lr": self.params.lr, "weight_decay": 0.0}]
