"""Heads by name: the module on top of the encoder, its loss and how outputs become predictions.

A head is built from the encoder, the task and its own parameters (`head:` in the experiment
config, validated by the head's `Params`). Every loss takes the whole batch: the fast path pads
batches with filler rows (`row_valid` False, labels -100 or NaN) that a loss must not count.
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from .errors import ConfigError
from .features import Encoded, encode_examples
from .registry import Registry

HEADS: Registry[type["Head"]] = Registry("head")


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Head(nn.Module):
    Params = Params
    separate_pairs = False  # bi-encoders tokenize the two texts of a pair on their own
    needs_labels = True  # False for self-supervised objectives (SimCSE)
    graphable = True  # batches fit the CUDA-graph fast path's static shapes (one sequence per item)

    def __init__(self, encoder: nn.Module, task, params: Params, dropout: float):
        super().__init__()
        self.encoder, self.task, self.params = encoder, task, params
        self.dropout = nn.Dropout(dropout)

    def encode(self, batch: dict, prefix: str = "", hidden_states: bool = False):
        kwargs = {"token_type_ids": batch[f"{prefix}token_type_ids"]} if f"{prefix}token_type_ids" in batch else {}
        return self.encoder(input_ids=batch[f"{prefix}input_ids"], attention_mask=batch[f"{prefix}attention_mask"],
                            output_hidden_states=hidden_states, **kwargs)

    def new_parameters(self) -> list:
        """Parameters that start untrained (they may get their own learning rate)."""
        return []

    def featurize(self, examples, tokenizer, max_length: int, use_cache: bool = True) -> Encoded:
        """Examples → tokenized items (one per example here; windows or choices in other heads)."""
        return encode_examples(examples, tokenizer, max_length, self.separate_pairs, use_cache)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # A sum over a mask instead of boolean indexing: no data-dependent shapes (graph-capturable).
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1)


@HEADS.register("cls")
class ClsHead(Head):
    """Classification (or, for score labels, regression) from the first token's final hidden
    state; no pooler, since not every checkpoint has a trained one. On a pair this is the
    cross-encoder."""

    def __init__(self, encoder, task, params, dropout=0.1):
        super().__init__(encoder, task, params, dropout)
        self.regression = task.label.kind == "score"
        outputs = 1 if self.regression else len(task.label.values)
        self.classifier = nn.Linear(encoder.config.hidden_size, outputs)

    def forward(self, **batch) -> torch.Tensor:
        hidden = self.encode(batch).last_hidden_state
        return self.classifier(self.dropout(hidden[:, 0]))

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        labels = batch["labels"]
        if self.regression:
            valid = labels == labels  # NaN marks unlabelled and filler rows
            return _masked_mean((logits[:, 0].float() - labels.nan_to_num()) ** 2, valid)
        return F.cross_entropy(logits.float(), labels)  # -100 rows are ignored

    def predict(self, logits: torch.Tensor, enc: Optional[Encoded] = None) -> np.ndarray:
        """Class ids, or scores for tasks scored by ranking (regression value, or P(label 1))."""
        if self.regression:
            return logits[:, 0].float().numpy()
        if self.task.prediction == "score":
            return logits.float().softmax(-1)[:, 1].numpy()
        return logits.argmax(-1).numpy()

    def new_parameters(self):
        return list(self.classifier.parameters())


class EmbeddingParams(Params):
    pooling: Literal["cls", "mean", "last2avg", "first_last_avg"] = "mean"
    loss: Literal["cosent", "sbert", "contrastive", "simcse"] = "cosent"
    scale: float = Field(20.0, gt=0)  # CoSENT λ
    temperature: float = Field(0.05, gt=0)  # contrastive / SimCSE
    whitening: bool = False  # BERT-whitening fitted on the evaluated split's own sentences
    whitening_dim: Optional[int] = Field(None, ge=1)  # keep the top-k whitened components


@HEADS.register("embedding")
class EmbeddingHead(Head):
    """A bi-encoder: each sentence pooled to one vector; similarity = cosine.

    Losses: CoSENT (rank pairs by label), Sentence-BERT (softmax over (u, v, |u−v|)),
    in-batch contrastive on positive pairs, SimCSE (a sentence and its second dropout pass).
    """

    Params = EmbeddingParams
    separate_pairs = True

    def __init__(self, encoder, task, params: EmbeddingParams, dropout=0.1):
        super().__init__(encoder, task, params, dropout)
        self.needs_labels = params.loss != "simcse"
        self.classifier = None
        if params.loss == "sbert":
            classes = len(task.label.values) if task.label.kind == "categorical" else int(task.label.range[1]) + 1
            self.classifier = nn.Linear(3 * encoder.config.hidden_size, classes)

    def pool(self, batch: dict, prefix: str = "") -> torch.Tensor:
        pooling = self.params.pooling
        out = self.encode(batch, prefix, hidden_states=pooling in ("last2avg", "first_last_avg"))
        if pooling == "cls":
            return out.last_hidden_state[:, 0]
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
        from .similarity import cosent_loss, in_batch_contrastive_loss, sbert_features

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
        from .similarity import apply_whitening, cosine_scores, fit_whitening

        u, v = (x.numpy() for x in outputs.float().chunk(2, dim=-1))
        if self.params.whitening:
            kernel, bias = fit_whitening(np.concatenate([u, v]), self.params.whitening_dim)
            u, v = apply_whitening(u, kernel, bias), apply_whitening(v, kernel, bias)
        return cosine_scores(u, v)

    def new_parameters(self):
        return list(self.classifier.parameters()) if self.classifier is not None else []


def head_params(name: str, options: dict, where: str = "head") -> Params:
    cls = HEADS.get(name)
    try:
        return cls.Params.model_validate(options)
    except ValidationError as err:
        problems = "; ".join(f"{where}.{'.'.join(map(str, e['loc']))}: "
                             + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"]) for e in err.errors())
        raise ConfigError(f"{problems} (head {name!r} takes: {', '.join(cls.Params.model_fields) or 'no options'})") from None


def build_head(task, encoder: nn.Module, head_cfg=None, dropout: float = 0.1) -> Head:
    """The head named in the config (else the task's), with its options validated: the config's
    options over the task's defaults for its own head."""
    name = (head_cfg.name if head_cfg is not None and head_cfg.name else None) or task.head
    options = dict(task.head_options) if name == task.head else {}
    options.update({k: v for k, v in (head_cfg.model_dump() if head_cfg is not None else {}).items() if k != "name"})
    return HEADS.get(name)(encoder, task, head_params(name, options), dropout)


# The structured-task heads register themselves here.
from . import heads_structured  # noqa: E402, F401
