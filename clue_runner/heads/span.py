"""Span extraction (CMRC2018): start/end logits over the context, long contexts cut into overlapping
windows, the best span over all windows of a question mapped back to its characters."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..data.limits import TextLimit, TextLimits
from ..errors import ConfigError
from ..features import Encoded, Segment, cache_key, cached_arrays, pack
from . import MASKED, Head, Params


class SpanParams(Params):
    stride: int = Field(128, ge=1, description="tokens shared by consecutive windows of a long context")
    max_answer_tokens: int = Field(64, ge=1, description="longest answer span decoded, in tokens")
    top_k: int = Field(20, ge=1, description="start and end candidates tried per window")
    max_windows: Optional[int] = Field(None, ge=1, description="read only a context's first N windows (1: truncate; null: all)")
    # Without max_windows every window of a context is read, so a context is kept whole: a longer one is a
    # bad row (data.on_bad_row), as tokenizing it takes memory in proportion (~600 bytes per character).
    max_context_chars: int = Field(100_000, ge=1, description="without max_windows: longest context in characters (longer: a bad row)")


class SpanHead(Head):
    """Extractive reading comprehension: (question, context window) → start and end logits."""

    Params = SpanParams
    output = "span_logits"
    label_kinds = ("structured",)  # the row parser gives the gold
    graphable = False

    @classmethod
    def text_limits(cls, params: SpanParams, max_length: int) -> TextLimits:
        """The question as any text; the context whole (up to max_context_chars), or as much as its
        first max_windows windows can hold."""
        question = TextLimits.within(max_length).text_a
        if params.max_windows is None:
            return TextLimits(question, TextLimit(refuse=params.max_context_chars, why="head.max_context_chars; "
                                                  "every window of a context is read unless head.max_windows is set"))
        tokens = params.max_windows * max_length
        return TextLimits(question, TextLimit.tokens(tokens, f"head.max_windows {params.max_windows} × data.max_length "
                                                             f"{max_length} tokens"))

    def __init__(self, backbone, task, params: SpanParams, dropout=0.1):
        super().__init__(backbone, task, params, dropout)
        self.pointer = nn.Linear(backbone.config.hidden_size, 2)

    def featurize(self, examples, tokenizer, max_length: int, use_cache: bool = True) -> Encoded:
        if self.params.stride >= max_length // 2:
            raise ConfigError(f"head.stride {self.params.stride} must be under half of data.max_length ({max_length}): "
                              "the stride is the overlap of consecutive windows, each also holding the question")
        questions = [ex.text_a for ex in examples]
        contexts = [ex.text_b for ex in examples]
        spans = [ex.extra.get("span") for ex in examples]

        def build() -> dict[str, np.ndarray]:
            return _windows(questions, contexts, spans, tokenizer, max_length, self.params.stride, self.params.max_windows)

        key = cache_key(questions, contexts, tokenizer,
                        f"span|{max_length}|{self.params.stride}|{self.params.max_windows}|{spans}")
        z = cached_arrays(key, build, use_cache)
        segment = Segment(z["ids"], z["offsets"], z.get("type_ids"))
        return Encoded({"": segment}, z["labels"], gold=[ex.label for ex in examples], item_example=z["item_example"],
                       meta={"char_start": z["char_start"], "char_end": z["char_end"], "contexts": contexts})

    def forward(self, **batch) -> torch.Tensor:
        hidden = self.backbone_outputs(batch).last_hidden_state
        logits = self.pointer(self.dropout(hidden)).float()
        return logits.masked_fill(batch["attention_mask"].unsqueeze(-1) == 0, MASKED)

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        labels = batch["labels"]
        return (F.cross_entropy(logits[..., 0], labels[:, 0]) + F.cross_entropy(logits[..., 1], labels[:, 1])) / 2

    def predict(self, logits: torch.Tensor, enc: Optional[Encoded] = None) -> list[str]:
        """The best-scoring span over all windows of each question, as text of its context."""
        logits = logits.float().numpy()
        meta, offsets = enc.meta, enc.segments[""].offsets
        best: dict[int, tuple[float, str]] = {}
        for w, example in enumerate(enc.item_example):
            a, b = offsets[w], offsets[w + 1]
            char_start, char_end = meta["char_start"][a:b], meta["char_end"][a:b]
            found = best_span(logits[w, : b - a, 0], logits[w, : b - a, 1], char_start >= 0,
                              self.params.max_answer_tokens, self.params.top_k)
            if found is not None and (example not in best or found[0] > best[example][0]):
                s, e = found[1], found[2]
                best[example] = (found[0], meta["contexts"][example][char_start[s] : char_end[e]])
        return [best[i][1] if i in best else "" for i in range(len(meta["contexts"]))]



def best_span(start: np.ndarray, end: np.ndarray, allowed: np.ndarray, max_tokens: int,
              top_k: int) -> Optional[tuple[float, int, int]]:
    """(score, start, end) maximising start + end logits with start ≤ end < start + max_tokens,
    both inside the context; None if the window has no context."""
    positions = np.flatnonzero(allowed)
    if not len(positions):
        return None
    starts = positions[np.argsort(-start[positions])[:top_k]]
    ends = positions[np.argsort(-end[positions])[:top_k]]
    score = start[starts][:, None] + end[ends][None, :]
    length = ends[None, :] - starts[:, None]
    score = np.where((length >= 0) & (length < max_tokens), score, -np.inf)
    i, j = np.unravel_index(np.argmax(score), score.shape)
    return (float(score[i, j]), int(starts[i]), int(ends[j])) if np.isfinite(score[i, j]) else None


def _windows(questions, contexts, spans, tokenizer, max_length: int, stride: int,
             max_windows: Optional[int] = None) -> dict[str, np.ndarray]:
    """(question, context) pairs cut into windows with the tokenizer's own overflow handling, at most
    `max_windows` per pair (the first ones).

    Per window token: the context characters it covers (char_start/char_end, -1 outside the
    context). Label per window: the answer's first and last token, or the first token (0) when
    the answer is not wholly inside the window, as in BERT's SQuAD recipe.
    """
    want_types = "token_type_ids" in tokenizer.model_input_names
    out = tokenizer(questions, contexts, truncation="only_second", max_length=max_length, stride=stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True, return_token_type_ids=want_types)
    example_of = list(out["overflow_to_sample_mapping"])
    # An example's windows are consecutive: window w is among its first max_windows unless the window
    # max_windows places back belongs to the same example.
    kept = [w for w in range(len(example_of))
            if max_windows is None or w < max_windows or example_of[w - max_windows] != example_of[w]]
    char_start, char_end, labels = [], [], []
    for w in kept:
        offsets = out["offset_mapping"][w]
        in_context = np.array([s == 1 for s in out.sequence_ids(w)])
        starts = np.where(in_context, [o[0] for o in offsets], -1)
        ends = np.where(in_context, [o[1] for o in offsets], -1)
        char_start.append(starts)
        char_end.append(ends)
        span = spans[example_of[w]]
        label = (0, 0)
        if span is not None:
            first = np.flatnonzero(in_context & (starts <= span[0]) & (ends > span[0]))
            last = np.flatnonzero(in_context & (starts < span[1]) & (ends >= span[1]))
            if len(first) and len(last):
                label = (int(first[0]), int(last[-1]))
        labels.append(label)
    ids, offsets = pack([out["input_ids"][w] for w in kept])
    arrays = {"ids": ids, "offsets": offsets, "char_start": pack(char_start)[0], "char_end": pack(char_end)[0],
              "labels": np.array(labels, dtype=np.int64).reshape(-1, 2),
              "item_example": np.asarray([example_of[w] for w in kept], dtype=np.int64)}
    if want_types:
        arrays["type_ids"] = pack([out["token_type_ids"][w] for w in kept], np.int8)[0]
    return arrays
