"""Bi-encoder sentence embeddings: pooling, CoSENT / Sentence-BERT / contrastive / SimCSE losses, whitening."""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..features import Encoded
from . import Head, Params
from .layers.losses import cosent_loss, in_batch_contrastive_loss, sbert_features
from .layers.whitening import apply_whitening, cosine_scores, fit_whitening


class EmbeddingParams(Params):
    pooling: Literal["cls", "mean", "last2avg", "first_last_avg"] = Field(
        "mean", description="cls: the first token; mean / last2avg / first_last_avg: token mean of those layers")
    loss: Literal["cosent", "sbert", "contrastive", "simcse"] = Field(
        "cosent", description="CoSENT, Sentence-BERT softmax, in-batch contrastive, or SimCSE (needs no labels)")
    scale: float = Field(20.0, gt=0, description="CoSENT's λ: cosine differences are multiplied by it")
    temperature: float = Field(0.05, gt=0, description="softmax temperature of the contrastive and SimCSE losses")
    whitening: bool = Field(False, description="BERT-whitening fitted on the evaluated split's own sentences")
    whitening_dim: Optional[int] = Field(None, ge=1, description="whitened components kept, the top k (null: all)")


class EmbeddingHead(Head):
    """A bi-encoder: each sentence pooled to one vector; similarity = cosine.

    Losses: CoSENT (rank pairs by label), Sentence-BERT (softmax over (u, v, |u−v|)),
    in-batch contrastive on positive pairs, SimCSE (a sentence and its second dropout pass).
    """

    Params = EmbeddingParams
    output = "embeddings"
    separate_pairs = True

    @classmethod
    def misfit(cls, task, params) -> Optional[str]:
        if task.inputs.text_b is None:
            return (f"{task.name} scores single texts; the embedding head scores sentence pairs by cosine "
                    f"(use the task's own head {task.head!r})")
        return super().misfit(task, params)

    @classmethod
    def learns_from_labels(cls, params) -> bool:
        return params.loss != "simcse"

    def __init__(self, backbone, task, params: EmbeddingParams, dropout=0.1):
        super().__init__(backbone, task, params, dropout)
        self.needs_labels = self.learns_from_labels(params)
        self.classifier = None
        if params.loss == "sbert":
            classes = len(task.label.values) if task.label.kind == "categorical" else int(task.label.range[1]) + 1
            self.classifier = nn.Linear(3 * backbone.config.hidden_size, classes)

    def pool(self, batch: dict, prefix: str = "") -> torch.Tensor:
        pooling = self.params.pooling
        out = self.backbone_outputs(batch, prefix, hidden_states=pooling in ("last2avg", "first_last_avg"))
        if pooling == "cls":  # a decoder's last real token (Backbone.summary)
            return self.backbone.summary(out.last_hidden_state, batch[f"{prefix}attention_mask"])
        if pooling == "mean":
            hidden = out.last_hidden_state
        elif pooling == "last2avg":
            hidden = (out.hidden_states[-2] + out.hidden_states[-1]) / 2
        else:  # first transformer layer and last (hidden_states[0] is the embedding output)
            hidden = (out.hidden_states[1] + out.hidden_states[-1]) / 2
        mask = batch[f"{prefix}attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)

    def forward(self, **batch) -> torch.Tensor:
        """(u, v) concatenated: the two sentences of a pair, or, for SimCSE training on single
        sentences, the same sentence encoded twice (dropout makes the two views differ)."""
        u = self.pool(batch)
        if "b_input_ids" in batch:
            v = self.pool(batch, "b_")
        elif self.training and self.params.loss == "simcse":
            v = self.pool(batch)
        else:
            return u
        return torch.cat([u, v], -1)

    def loss(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        u, v = outputs.float().chunk(2, dim=-1)
        valid = batch["row_valid"]
        labels = batch["labels"]
        kind = self.params.loss
        if kind == "cosent":
            # Filler and unlabelled rows get NaN: a NaN label is never greater or smaller, so never paired.
            graded = torch.where(valid & (labels == labels) & (labels != -100), labels.float(), float("nan"))
            return cosent_loss(F.cosine_similarity(u, v, dim=-1), graded, self.params.scale)
        if kind == "sbert":
            target = labels.round().long() if labels.is_floating_point() else labels
            target = torch.where(valid & (labels == labels), target, torch.full_like(target, -100))
            return F.cross_entropy(self.classifier(self.dropout(sbert_features(u, v))), target)
        # In-batch contrastive: row i's positive is v_i; other valid rows are negatives.
        anchors = valid if kind == "simcse" else valid & (labels.float() > 0.5 * self._top_label())
        return in_batch_contrastive_loss(u, v, self.params.temperature, valid, anchors)

    def _top_label(self) -> float:
        return float(self.task.label.range[1]) if self.task.label.kind == "score" else 1.0

    def predict(self, outputs: torch.Tensor, enc: Optional[Encoded] = None) -> np.ndarray:
        u, v = (x.numpy() for x in outputs.float().chunk(2, dim=-1))
        if self.params.whitening:
            kernel, bias = fit_whitening(np.concatenate([u, v]), self.params.whitening_dim)
            u, v = apply_whitening(u, kernel, bias), apply_whitening(v, kernel, bias)
        return cosine_scores(u, v)
