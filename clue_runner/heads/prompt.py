"""Prompt heads on a pretrained head of the backbone: PET (masked LM) and NSP-BERT (next sentence).

Both need the checkpoint's own pretrained head (`requires_kind`); a model without one is refused
when it loads. Templates and label words are task data (`prompt:` in the task YAML); a config
picks a template by name (`head: {name: pet, template: manyi}`) or gives its own (`pattern`).

Cloze tasks (CHID, `prompt.label_words: candidates`): each example's own candidates are its label
words. A candidate with a character outside the model's vocabulary is scored as impossible (it
never wins; an example whose gold is impossible adds no loss and counts as wrong), not refused:
the embedded model's vocabulary lacks a few rare idiom characters, and a refusal would leave
no way to write a submission.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError
from ..features import Encoded
from ..features.prompts import (bucket_labels, candidate_ids, fill, nsp_label_prompts, random_mask, render_prompts,
                                tokenize_pairs, word_ids)
from ..tasks.spec import check_template
from . import MASKED, Head


class PetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    template: Optional[str] = Field(None, description="a template name of the task's prompt: block (null: its default)")
    # cloze tasks: {before_blank}[MASK]{after_blank}
    pattern: Optional[str] = Field(None, description="your own template instead: {text_a}, {text_b}, one [MASK]")
    label_words: Optional[dict[str, str]] = Field(
        None, description="label value -> word, over the task's prompt.label_words (equal lengths)")
    # Semi-supervised PET: rows of this split (no labels) join training; every training row then
    # also gets BERT's random masking and its MLM loss, in the same step (bojone/Pattern-Exploiting-Training).
    unlabeled_split: Optional[str] = Field(
        None, description="semi-supervised: this split trains unlabelled, every row adds an MLM loss")
    unlabeled_examples: Optional[int] = Field(None, description="at most this many unlabelled rows, the first (null: all)")
    mlm_probability: float = Field(0.15, description="share of tokens chosen for BERT's random masking (with unlabeled_split)")


def _prompt(task):
    if task.prompt is None:
        raise ConfigError(f"task {task.name!r} has no prompt: section (templates and label words); "
                          "add one to its YAML or give head.pattern and head.label_words")
    return task.prompt


def label_scores(mask_logits: torch.Tensor, label_ids: torch.Tensor) -> torch.Tensor:
    """[B, k, V] logits at the k masks, label word ids [C, k] (the task's) or [B, C, k] (each
    example's candidates) → [B, C] joint log-probabilities sum_j log p(word_c[j] at mask j)
    (log-softmax over the whole vocabulary at each mask)."""
    logp = mask_logits.float().log_softmax(-1)  # [B, k, V]
    if label_ids.dim() == 2:
        label_ids = label_ids.expand(logp.shape[0], -1, -1)
    per_slot = logp.gather(2, label_ids.transpose(1, 2))  # [B, k, C]
    return per_slot.sum(1)


class PetHead(Head):
    """PET: the label word's joint probability at the template's masks, restricted to the task's
    label words. Zero-shot with `train.max_steps: 0`; few-shot: cross-entropy over the label
    words; semi-supervised with `unlabeled_split` (adds the random-masking MLM loss)."""

    Params = PetParams
    backbone_kind = requires_kind = "mlm"
    output = "class_logits"
    graphable = False
    label_kinds = ("categorical", "structured")  # structured: a cloze task's per-example candidates

    @classmethod
    def misfit(cls, task, params) -> Optional[str]:
        if task.label.kind == "structured" and not (task.prompt is not None and task.prompt.per_example):
            return f"{task.name} has structured labels; pet scores them only with prompt.label_words: candidates"
        return super().misfit(task, params)

    def __init__(self, backbone, task, params, dropout=0.1):
        super().__init__(backbone, task, params, dropout)
        prompt = task.prompt
        self.per_example = prompt is not None and prompt.per_example
        if params.pattern is not None:
            try:
                check_template(params.pattern, "head.pattern", cloze=self.per_example)
            except ValueError as err:
                raise ConfigError(str(err)) from None
            self.template = params.pattern
        else:
            self.template = _prompt(task).template(params.template)
        self.unlabeled_split, self.unlabeled_examples = params.unlabeled_split, params.unlabeled_examples
        self._aux_loss: Optional[torch.Tensor] = None
        self._mask_id = self._vocab = None
        if self.per_example:
            if params.label_words:
                raise ConfigError(f"head.label_words: task {task.name!r} takes each example's candidates as its label words")
            self.word_length = prompt.word_length
            self.register_buffer("label_ids", torch.zeros(0, self.word_length, dtype=torch.long), persistent=False)
            return
        words = dict(prompt.label_words) if prompt is not None else {}
        words.update(params.label_words or {})
        missing = [v for v in task.label.values if v not in words]
        if missing:
            raise ConfigError(f"head.label_words: no word for label {missing[0]!r}")
        self.words = [words[v] for v in task.label.values]
        if len({len(w) for w in self.words}) != 1:
            raise ConfigError("head.label_words: all label words must have the same length")
        self.word_length = len(self.words[0])
        self.register_buffer("label_ids", torch.zeros(len(self.words), self.word_length, dtype=torch.long),
                             persistent=False)

    def use_template(self, template: str) -> None:
        if self.per_example:
            raise ConfigError(f"task {self.task.name!r}: a method's prompt template (ptuning) has no place for a "
                              "cloze blank; use pet alone")
        self.template = template

    def featurize(self, examples, tokenizer, max_length: int, use_cache: bool = True) -> Encoded:
        self._mask_id, self._vocab = tokenizer.mask_token_id, len(tokenizer)
        self._special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        if not self.per_example:
            self.label_ids.copy_(torch.from_numpy(word_ids(tokenizer, self.words)))
            return render_prompts(examples, tokenizer, self.template, max_length, self.word_length)
        enc = render_prompts(examples, tokenizer, self.template, max_length, self.word_length)
        ids, possible = candidate_ids(examples, tokenizer, self.word_length)
        enc.item_arrays.update(candidate_ids=ids, choice_mask=possible)
        return enc

    def forward(self, **batch) -> torch.Tensor:
        self._aux_loss = None
        if self.training and self.unlabeled_split is not None:
            batch = self._with_random_masking(batch)
        logits = self.backbone.mlm_logits(batch)  # [B, L, V]
        positions = batch["mask_positions"]  # [B, k]
        at_masks = logits.gather(1, positions[..., None].expand(-1, -1, logits.shape[-1]))
        if "mlm_targets" in batch:
            targets = batch["mlm_targets"].flatten()
            per_token = F.cross_entropy(logits.float().flatten(0, 1), targets, reduction="none")
            self._aux_loss = per_token.sum() / (targets >= 0).sum().clamp(min=1)
        if "candidate_ids" not in batch:
            return label_scores(at_masks, self.label_ids)
        return label_scores(at_masks, batch["candidate_ids"]).masked_fill(~batch["choice_mask"], MASKED)

    def _with_random_masking(self, batch: dict) -> dict:
        ids = batch["input_ids"]
        maskable = (batch["attention_mask"] > 0) & ~torch.isin(ids, self._special.to(ids.device))
        maskable &= batch["row_valid"][:, None]
        inputs, targets = random_mask(ids, maskable, self._mask_id, self._vocab, self.params.mlm_probability)
        return {**batch, "input_ids": inputs, "mlm_targets": targets}

    def loss(self, scores: torch.Tensor, batch: dict) -> torch.Tensor:
        labels = batch["labels"]
        if "choice_mask" in batch:  # a gold candidate that cannot be scored teaches nothing
            gold_possible = batch["choice_mask"].gather(1, labels.clamp(min=0)[:, None])[:, 0]
            labels = labels.masked_fill(~gold_possible, -100)
        labelled = (labels >= 0).sum()
        loss = F.cross_entropy(scores.float(), labels.clamp(min=0), reduction="none")
        loss = (loss * (labels >= 0)).sum() / labelled.clamp(min=1)  # unlabelled rows add only the MLM loss
        if self._aux_loss is not None:
            loss = loss + self._aux_loss
        return loss

    def predict(self, scores: torch.Tensor, enc: Optional[Encoded] = None) -> np.ndarray:
        return scores.argmax(-1).numpy()


class NspParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # default: the task's nsp default, else its last template (as the reference)
    template: Optional[str] = Field(None, description="an NSP template name of the task's prompt.nsp (null: its default)")


class NspHead(Head):
    """NSP-BERT zero-shot. Single-sentence tasks: argmax over the label prompts of
    P(IsNext | prompt, text). Pair tasks: P(IsNext | pair), mapped to labels by equal-size
    buckets of the scored split (transductive: assumes balanced labels)."""

    Params = NspParams
    backbone_kind = requires_kind = "pretraining"
    output = "nsp"
    graphable = False

    def __init__(self, backbone, task, params, dropout=0.1):
        super().__init__(backbone, task, params, dropout)
        nsp = _prompt(task).nsp
        if nsp is None:
            raise ConfigError(f"task {task.name!r}: its prompt: section has no nsp: (NSP-BERT label prompts)")
        self.nsp = nsp
        if nsp.mode == "label_prompt":
            t = nsp.template(params.template)
            words = {**{v: task.label.names.get(v, v) for v in task.label.values}, **nsp.words, **t.words}
            self.prompts = [fill(t.pattern, words[v]) for v in task.label.values]
        else:
            if sorted(nsp.buckets) != sorted(task.label.values):
                raise ConfigError(f"task {task.name!r}: prompt.nsp.buckets must list every label once")
            self.bucket_label = np.asarray([task.label.values.index(v) for v in nsp.buckets])

    def featurize(self, examples, tokenizer, max_length: int, use_cache: bool = True) -> Encoded:
        if self.nsp.mode == "label_prompt":
            return nsp_label_prompts(examples, tokenizer, self.prompts, max_length, self.nsp.prompt_first)
        labels = [-100 if ex.label is None else ex.label for ex in examples]
        a, b = [ex.text_a for ex in examples], [ex.text_b or "" for ex in examples]
        if self.nsp.pair_first == "text_b":
            a, b = b, a
        return tokenize_pairs(a, b, tokenizer, max_length, "longest_first", labels)

    def forward(self, **batch) -> torch.Tensor:
        is_next = self.backbone.nsp_logits(batch).float().log_softmax(-1)[:, 0]  # log P(IsNext)
        rows = batch["row_valid"].shape[0]
        return is_next.view(rows, -1)  # [B, labels] for label prompts, [B, 1] for pairs

    def loss(self, scores: torch.Tensor, batch: dict) -> torch.Tensor:
        if self.nsp.mode != "label_prompt":
            raise ConfigError("NSP-BERT on sentence pairs is zero-shot only: set train.max_steps: 0")
        return F.cross_entropy(scores, batch["labels"])

    def predict(self, scores: torch.Tensor, enc: Optional[Encoded] = None) -> np.ndarray:
        if self.nsp.mode == "label_prompt":
            return scores.argmax(-1).numpy()
        return self.bucket_label[bucket_labels(scores[:, 0].numpy(), len(self.bucket_label))]
