"""Heads by name: the module on top of the encoder, its loss and how outputs become predictions."""

from __future__ import annotations

import torch
from torch import nn

from .registry import Registry

HEADS: Registry[type] = Registry("head")


@HEADS.register("cls")
class ClsHead(nn.Module):
    """Classification from the first token's final hidden state (no pooler: not every checkpoint has one)."""

    def __init__(self, encoder: nn.Module, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)
        self.num_labels = num_labels

    def forward(self, input_ids, attention_mask, token_type_ids=None, **_) -> torch.Tensor:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return self.classifier(self.dropout(hidden[:, 0]))

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.float(), labels)

    @staticmethod
    def predict(logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(-1)

    def new_parameters(self):
        """Parameters that start untrained (may get their own learning rate)."""
        return list(self.classifier.parameters())
