"""Classification (or, for score labels, regression) of one text or a text pair (the cross-encoder)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..features import Encoded
from ..models.backbone import has_class
from . import Head
from .layers.losses import masked_mean


class ClsHead(Head):
    """The architecture's own sequence-classification head where transformers has one (BERT: pooler +
    dropout + linear; RoBERTa: dense + tanh + linear on `<s>` …), so `best/` loads into
    `AutoModelForSequenceClassification` with the same predictions. Elsewhere: a linear layer on the
    first token's final hidden state."""

    backbone_kind = "sequence_classification"

    @classmethod
    def output_kind(cls, task, params) -> str:
        return "regression" if task.label.kind == "score" else "class_logits"

    @classmethod
    def kind_for(cls, task, params, model_config) -> str:
        return "sequence_classification" if has_class(model_config, "sequence_classification") else "base"

    def __init__(self, backbone, task, params, dropout=0.1):
        super().__init__(backbone, task, params, dropout)
        self.regression = task.label.kind == "score"
        self.classifier = None
        if backbone.kind != "sequence_classification":
            outputs = 1 if self.regression else len(task.label.values)
            self.classifier = nn.Linear(backbone.config.hidden_size, outputs)

    def forward(self, **batch) -> torch.Tensor:
        if self.classifier is None:
            return self.backbone.classify(batch)
        hidden = self.backbone.summary(self.backbone_outputs(batch).last_hidden_state, batch["attention_mask"])
        return self.classifier(self.dropout(hidden))

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        labels = batch["labels"]
        if self.regression:
            valid = labels == labels  # NaN marks unlabelled and filler rows
            return masked_mean((logits[:, 0].float() - labels.nan_to_num()) ** 2, valid)
        return F.cross_entropy(logits.float(), labels)  # -100 rows are ignored

    def predict(self, logits: torch.Tensor, enc: Optional[Encoded] = None) -> np.ndarray:
        """Class ids, or scores for tasks scored by ranking (regression value, or P(label 1))."""
        if self.regression:
            return logits[:, 0].float().numpy()
        if self.task.prediction == "score":
            return logits.float().softmax(-1)[:, 1].numpy()
        return logits.argmax(-1).numpy()
