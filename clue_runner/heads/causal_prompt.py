"""P-tuning for GPT (FewCLUE's PtuningGPT row): trainable prompt vectors in the context of a causal
LM, the label word scored at the end.

The context is `[P]×before text_a ([P] text_b) [P]×rest` (after the tokenizer's own leading tokens,
e.g. Llama's <s>); a label's score is the log-likelihood of its word's tokens after the context,
and the prediction is the best-scoring label. The `[P]`s are placeholders whose input embeddings
are replaced by the trained vectors. Training: cross-entropy over the labels' scores
(`loss: labels`), or the LM loss on the gold label word alone (`loss: lm`). The backbone stays
frozen unless `train_backbone` (then it trains as the methods left it: every weight, or LoRA's
adapters; the LM head trains when the word embeddings do). Label words are the task's
`prompt.label_words` (the PET ones); they may differ in token count (a score sums the word's tokens).

Cost: the context runs once per example; a label word's first token is read from it, and words of
k > 1 tokens add C continuations of k - 1 tokens from the context's cache (lm-eval and OpenCompass
run one full sequence per label). The LM head runs only where a word token is read.
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
    prompt_length: int = Field(8, ge=1, description="trained prompt vectors (one separates a pair's texts)")
    before: int = Field(4, ge=0, description="how many prompt vectors precede the text")
    loss: Literal["labels", "lm"] = Field(
        "labels", description="cross-entropy over the labels' scores, or lm: the gold word's LM loss")
    train_backbone: bool = Field(False, description="train the backbone too (false: frozen, only the prompt trains)")
    label_words: Optional[dict[str, str]] = Field(None, description="label value -> word, over the task's prompt.label_words")


class PtuningGptHead(Head):
    """Label words scored by a causal LM after a context with trainable prompt vectors."""

    Params = PtuningGptParams
    backbone_kind = requires_kind = "causal_lm"
    output = "class_logits"
    graphable = False  # the cache continuation has shapes of its own
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
        # the pretrained LM head trains when the word embeddings do (one matrix in tied models): not under LoRA
        trains = backbone.input_embeddings().weight.requires_grad
        for p in backbone.model.get_output_embeddings().parameters():
            p.requires_grad_(trains)
        table = backbone.input_embeddings().weight
        start = torch.randint(table.shape[0], (params.prompt_length,), generator=torch.Generator().manual_seed(0))
        self.prompt = nn.Parameter(table[start].detach().clone())  # start from real token embeddings

    def new_parameters(self) -> list:
        return [self.prompt]  # the LM head is pretrained: it trains only with the backbone (train_backbone)

    def featurize(self, examples, tokenizer, max_length: int, use_cache: bool = True) -> Encoded:
        words = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in self.words]
        if not all(words):
            raise ConfigError(f"head ptuning_gpt: label word {self.words[[bool(w) for w in words].index(False)]!r} has no tokens")
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
        rows, prompts = [], []  # one sequence per example: the context, the label words come apart
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
            rows.append(seq)
        lengths = [len(r) for r in rows]
        segment = Segment(np.concatenate([np.asarray(r, dtype=np.int32) for r in rows]),
                          np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), None)
        labels = np.asarray([-100 if ex.label is None else ex.label for ex in examples], dtype=np.int64)
        arrays = {"prompt_positions": np.asarray(prompts, dtype=np.int64), "word_ids": word_ids, "word_lengths": word_lengths}
        return Encoded({"": segment}, labels, item_arrays=arrays)

    def _layout(self) -> list[Optional[int]]:
        """The context as pieces: None = a prompt vector, 0/1 = text_a/text_b."""
        n, before = self.params.prompt_length, self.params.before
        middle = [0, None, 1] if self.pair else [0]
        return [None] * before + middle + [None] * (n - before - (1 if self.pair else 0))

    def forward(self, **batch) -> torch.Tensor:
        """[B, C] log-likelihood of each label's word after the prompted context. The context runs
        once; a word's first token is read from its last position, later tokens from a continuation
        of the context's cache, C continuations per example (none for one-token words)."""
        ids, mask = batch["input_ids"], batch["attention_mask"]  # [B, T], right-padded
        words, counts = batch["word_ids"], batch["word_lengths"]  # [B, C, k], [B, C]
        rows = torch.arange(ids.shape[0], device=ids.device)
        embeds = self.backbone.input_embeddings()(ids)
        at = batch["prompt_positions"]  # [B, n]
        embeds = embeds.index_put((rows[:, None].expand_as(at), at), self.prompt.to(embeds.dtype).expand(at.shape[0], -1, -1))
        length = mask.sum(1)
        out = self.backbone.lm_hidden(mask, inputs_embeds=embeds, use_cache=words.shape[2] > 1)
        last = self.backbone.lm_head(out.last_hidden_state[rows, length - 1]).float().log_softmax(-1)  # [B, V]
        scores = last.gather(1, words[:, :, 0])
        if words.shape[2] > 1:
            scores = scores + self._rest_of_words(out.cache, mask, words, counts)
        return scores

    def _rest_of_words(self, cache, mask: torch.Tensor, words: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """[B, C] log-likelihood of each word's tokens after its first, given the context's cache."""
        b, c, k = words.shape
        cache.batch_repeat_interleave(c)  # the context once per label
        feed = words[:, :, :-1].flatten(0, 1)  # [B*C, k-1]: tokens 0..k-2 predict tokens 1..k-1
        steps = torch.arange(k - 1, device=words.device)
        # after the right-padded context: its pads stay masked, positions continue from its length
        full = torch.cat([mask.repeat_interleave(c, 0), mask.new_ones(b * c, k - 1)], 1)
        positions = mask.sum(1).repeat_interleave(c)[:, None] + steps[None]
        hidden = self.backbone.lm_hidden(full, input_ids=feed, cache=cache, position_ids=positions).last_hidden_state
        logp = self.backbone.lm_head(hidden).float().log_softmax(-1)
        per_token = logp.gather(2, words[:, :, 1:].flatten(0, 1)[..., None])[..., 0]  # [B*C, k-1]
        real = (steps[None] + 1) < counts.flatten()[:, None]  # shorter words' filler tokens count nothing
        return (per_token * real).sum(1).view(b, c)

    def loss(self, scores: torch.Tensor, batch: dict) -> torch.Tensor:
        labels = batch["labels"]  # -100: unlabelled or filler rows, not counted
        if self.params.loss == "labels":
            return F.cross_entropy(scores, labels)
        gold = scores.gather(1, labels.clamp(min=0)[:, None])[:, 0]
        return -(gold * (labels >= 0)).sum() / (labels >= 0).sum().clamp(min=1)

    def predict(self, scores: torch.Tensor, enc: Optional[Encoded] = None) -> np.ndarray:
        return scores.float().argmax(-1).numpy()
