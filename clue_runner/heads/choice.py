"""Multiple choice (C3, CHID), after the bert4keras CLUE baselines (kexue.fm/archives/8739): every
(text, choice) pair scored by one linear unit on the first token, softmax over a question's choices;
CHID can decode the blanks of a passage jointly by optimal one-to-one assignment of candidates
(Hungarian, scipy)."""

from __future__ import annotations

from collections import defaultdict
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..data.parsers import choice_text
from ..features import Encoded, cached_segment
from . import MASKED, Head, Params


class ChoiceParams(Params):
    decode: Literal["argmax", "hungarian"] = Field(
        "argmax", description="argmax per question, or hungarian: one candidate per blank of a passage")


class MultipleChoiceHead(Head):
    """Scores each choice from the first token of `text_a + choice` paired with `text_b`
    (C3: question + option, document; CHID: candidate idiom, passage window around the blank)."""

    Params = ChoiceParams
    output = "class_logits"  # one logit per choice, softmax over a question's choices
    label_kinds = ("structured",)  # the row parser gives the gold
    graphable = False  # an item is several sequences

    def __init__(self, backbone, task, params: ChoiceParams, dropout=0.1):
        super().__init__(backbone, task, params, dropout)
        self.scorer = nn.Linear(backbone.config.hidden_size, 1)

    def featurize(self, examples, tokenizer, max_length: int, use_cache: bool = True) -> Encoded:
        width = max(len(ex.extra["choices"]) for ex in examples)
        firsts, seconds = [], []
        mask = np.zeros((len(examples), width), dtype=bool)
        for i, ex in enumerate(examples):
            choices = ex.extra["choices"]
            mask[i, : len(choices)] = True
            for k in range(width):  # a question with fewer choices gets empty, masked-out fillers
                real = k < len(choices)
                firsts.append(choice_text(ex.text_a, choices[k]) if real else "")
                seconds.append((ex.text_b or "") if real else "")
        segment = cached_segment(firsts, seconds, tokenizer, max_length, use_cache)
        labels = np.array([-100 if ex.label is None else ex.label for ex in examples], dtype=np.int64)
        return Encoded({"": segment}, labels, choices=width, item_arrays={"choice_mask": mask},
                       meta={"groups": np.array([ex.extra["row"] for ex in examples])})

    def forward(self, choice_mask: torch.Tensor, **batch) -> torch.Tensor:
        hidden = self.backbone.summary(self.backbone_outputs(batch).last_hidden_state, batch["attention_mask"])
        scores = self.scorer(self.dropout(hidden)).float().view(choice_mask.shape)
        return scores.masked_fill(~choice_mask, MASKED)

    def loss(self, scores: torch.Tensor, batch: dict) -> torch.Tensor:
        return F.cross_entropy(scores, batch["labels"])  # -100 (filler or unlabelled) rows are ignored

    def predict(self, scores: torch.Tensor, enc: Optional[Encoded] = None) -> np.ndarray:
        scores = scores.float()
        if self.params.decode == "argmax" or enc is None:
            return scores.argmax(-1).numpy()
        return assign_candidates(scores.log_softmax(-1).numpy(), enc.meta["groups"])



def assign_candidates(log_probs: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per group (the blanks of one passage, sharing its candidates), the one-to-one assignment
    of candidates to blanks with the highest total log-probability; blanks beyond the number of
    candidates keep their own best."""
    from scipy.optimize import linear_sum_assignment

    choice = log_probs.argmax(-1)
    members = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    for rows in members.values():
        if len(rows) < 2:
            continue
        picked, candidates = linear_sum_assignment(log_probs[rows], maximize=True)
        choice[np.asarray(rows)[picked]] = candidates
    return choice
