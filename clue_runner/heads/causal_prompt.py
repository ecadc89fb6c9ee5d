"""P-tuning for GPT (FewCLUE's PtuningGPT row): trainable prompt vectors in the context of a causal
LM, the label word scored at the end.

Each example becomes one sequence per label, `[P]×before text_a ([P] text_b) [P]×rest label-word`
(after the tokenizer's own leading tokens, e.g. Llama's <s>); a label's score is the log-likelihood
of its word's tokens given what precedes them, and the prediction is the best-scoring label. The
`[P]`s are placeholders whose input embeddings are replaced by the trained vectors. Training:
cross-entropy over the labels' scores (`loss: labels`), or the LM loss on the gold label word alone
(`loss: lm`). The backbone stays frozen unless `train_backbone` (then it trains as the methods left
it: every weight, or LoRA's adapters). Label words are the task's `prompt.label_words` (the PET
ones); they may differ in token count (a score is a sum over the word's tokens).

Cost: one sequence per label (C× a classifier's forward; the LM head only at the label tokens).
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..errors import ConfigError
from ..features import Encoded
from ..features.encoded import Segment
from ..features.prompts import truncate_lengths
from ..models.backbone import is_decoder
from . import Head, Params


class PtuningGptParams(Params):
    prompt_length: int = Field(8, ge=1)  # prompt vectors (a pair's texts are separated by one of them)
    before: int = Field(4, ge=0)  # how many precede the text
    loss: Literal["labels", "lm"] = "labels"
    train_backbone: bool = False
    label_words: Optional[dict[str, str]] = None  # label value -> word, over the task's prompt.label_words


class PtuningGptHead(Head):
    Params = PtuningGptParams
    backbone_kind = requires_kind = "causal_lm"
    output = "class_logits"
    graphable = False  # an item is one sequence per label
    label_kinds = ("categorical",)

    @classmethod
    def misfit(cls, task, params) -> Optional[str]:
        pair = task.inputs.text_b is not None
        if params.before > params.prompt_length - pair:
            return (f"head.before {params.before}: at most prompt_length{' - 1 (one vector separates a pair)' if pair else ''} "
                    f"= {params.prompt_length - pair}")
        return super().misfit(task, params)

    def __init__(self, backbone, task, params: PtuningGptParams, dropout=0.1):
        super().__init__(backbone, task, params, dropout)
        if not is_decoder(backbone.config):
            raise ConfigError(f"head ptuning_gpt: {backbone.config.model_type} is not a decoder-only LM "
                              "(GPT-2, Qwen2, Llama …); encoders have P-tuning with the pet head")
        words = dict(task.prompt.label_words) if task.prompt is not None else {}
        words.update(params.label_words or {})
        missing = [v for v in task.label.values if v not in words]
        if missing:
            raise ConfigError(f"head.label_words: no word for label {missing[0]!r} (task {task.name!r} prompt.label_words)")
        self.words = [words[v] for v in task.label.values]
        self.pair = task.inputs.text_b is not None
        if not params.train_backbone:
            for p in backbone.parameters():
                p.requires_grad_(False)
        table = backbone.input_embeddings().weight
        start = torch.randint(table.shape[0], (params.prompt_length,), generator=torch.Generator().manual_seed(0))
        self.prompt = nn.Parameter(table[start].detach().clone())  # start from real token embeddings

    def new_parameters(self) -> list:
        return [self.prompt]  # the LM head is pretrained: it trains only with the backbone (train_backbone)

    def featurize(self, examples, tokenizer, max_length: int, use_cache: bool = True) -> Encoded:
        words = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in self.words]
        width = max(len(w) for w in words)
        # per item (the batch carries them, so scoring needs no state from featurizing): [N, C, k] word ids, [N, C] counts
        word_ids = np.tile(np.asarray([w + [0] * (width - len(w)) for w in words], dtype=np.int64), (len(examples), 1, 1))
        word_lengths = np.tile(np.asarray([len(w) for w in words], dtype=np.int64), (len(examples), 1))
        lead = tokenizer("", add_special_tokens=True)["input_ids"]  # e.g. Llama's <s>
        slots = [[ex.text_a for ex in examples]] + ([[ex.text_b or "" for ex in examples]] if self.pair else [])
        texts = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in slots]
        budget = max_length - len(lead) - self.params.prompt_length - width
        if budget < len(slots):
            raise ConfigError(f"head ptuning_gpt: prompt and label word take {max_length - budget} of "
                              f"data.max_length {max_length} tokens; raise data.max_length")
        placeholder = tokenizer.pad_token_id  # its embedding is replaced by a prompt vector
        rows, prompts = [], []
        for i in range(len(examples)):
            keep = truncate_lengths([len(t[i]) for t in texts], budget)
            seq, at = list(lead), []
            for piece in self._layout():
                if piece is None:
                    at.append(len(seq))
                    seq.append(placeholder)
                else:
                    seq += texts[piece][i][:keep[piece]]
            prompts.append(at)
            rows += [seq + w for w in words]  # one sequence per label, the word at the end
        lengths = [len(r) for r in rows]
        segment = Segment(np.concatenate([np.asarray(r, dtype=np.int32) for r in rows]),
                          np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), None)
        labels = np.asarray([-100 if ex.label is None else ex.label for ex in examples], dtype=np.int64)
        return Encoded({"": segment}, labels, choices=len(words),
                       item_arrays={"prompt_positions": np.asarray(prompts, dtype=np.int64),
                                    "word_ids": word_ids, "word_lengths": word_lengths})

    def _layout(self) -> list[Optional[int]]:
        """The context as pieces: None = a prompt vector, 0/1 = text_a/text_b."""
        n, before = self.params.prompt_length, self.params.before
        middle = [0, None, 1] if self.pair else [0]
        return [None] * before + middle + [None] * (n - before - (1 if self.pair else 0))

    def forward(self, **batch) -> torch.Tensor:
        """[B, C] log-likelihood of each label's word after the prompted context."""
        choices = len(self.words)
        ids, mask = batch["input_ids"], batch["attention_mask"]  # [B*C, T], right-padded
        embeds = self.backbone.input_embeddings()(ids)
        at = batch["prompt_positions"].repeat_interleave(choices, 0)  # [B*C, n]
        rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(at)
        embeds = embeds.index_put((rows, at), self.prompt.to(embeds.dtype).expand(ids.shape[0], -1, -1))
        word, count = batch["word_ids"].flatten(0, 1), batch["word_lengths"].flatten()  # [B*C, k], [B*C]: row r holds label r % C
        steps = torch.arange(word.shape[1], device=ids.device)
        real = steps[None] < count[:, None]
        # the word's j-th token sits at length - count + j and is predicted from the position before it
        predict_at = (mask.sum(1)[:, None] - count[:, None] + steps[None] - 1).clamp(min=0)
        logits = self.backbone.lm_logits_at({**batch, "inputs_embeds": embeds}, predict_at.masked_fill(~real, 0))
        token_logp = logits.float().log_softmax(-1).gather(2, word[..., None])[..., 0]
        return (token_logp * real).sum(1).view(-1, choices)

    def loss(self, scores: torch.Tensor, batch: dict) -> torch.Tensor:
        labels = batch["labels"]  # -100: unlabelled or filler rows, not counted
        if self.params.loss == "labels":
            return F.cross_entropy(scores, labels)
        gold = scores.gather(1, labels.clamp(min=0)[:, None])[:, 0]
        return -(gold * (labels >= 0)).sum() / (labels >= 0).sum().clamp(min=1)

    def predict(self, scores: torch.Tensor, enc: Optional[Encoded] = None) -> np.ndarray:
        return scores.float().argmax(-1).numpy()
