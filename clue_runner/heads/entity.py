"""GlobalPointer NER (CLUENER): span scores per entity type on character tokens, so gold character
offsets survive any tokenizer."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from pydantic import Field

from ..data.limits import TextLimits
from ..metrics.entity import EntitySpan
from ..features import Encoded, Segment, SpanTargets, cache_key, cached_arrays, pack
from . import Head, Params
from .layers.global_pointer import GlobalPointer, decode_spans, global_pointer_loss


class PointerParams(Params):
    head_size: int = Field(64, ge=2, multiple_of=2, description="query/key width of the span scorer (even: rotary positions turn pairs)")
    # Efficient GlobalPointer: kexue.fm/archives/8877
    efficient: bool = Field(False, description="Efficient GlobalPointer: one projection shared by all types, fewer weights")
    flat: bool = Field(False, description="decode non-overlapping entities only (false: nested entities allowed)")
    threshold: float = Field(0.0, description="a span is an entity when its score is above this")


class GlobalPointerHead(Head):
    """Entity spans per type scored by GlobalPointer over character tokens: one token per
    character (its own vocabulary piece when it has one, else the tokenizer's pieces for it),
    so a gold span (type, first char, last char) is always representable and decodes back exactly."""

    Params = PointerParams
    output = "span_scores"
    label_kinds = ("structured",)  # the row parser gives the gold
    graphable = False

    @classmethod
    def text_limits(cls, params, max_length: int) -> TextLimits:
        # none: the tokens are made character by character up to max_length (never from a whole text),
        # and the leaderboard's surface F1 needs the whole text's gold entities
        return TextLimits()

    def __init__(self, backbone, task, params: PointerParams, dropout=0.1):
        super().__init__(backbone, task, params, dropout)
        self.types = list(task.label.values)
        self.pointer = GlobalPointer(backbone.config.hidden_size, len(self.types), params.head_size,
                                     efficient=params.efficient)

    def featurize(self, examples, tokenizer, max_length: int, use_cache: bool = True) -> Encoded:
        texts = [ex.text_a for ex in examples]
        z = cached_arrays(cache_key(texts, None, tokenizer, f"chars|{max_length}"),
                          lambda: _char_tokens(texts, tokenizer, max_length), use_cache)
        segment = Segment(z["ids"], z["offsets"], z.get("type_ids"))
        index = {t: i for i, t in enumerate(self.types)}
        targets = []
        for i, ex in enumerate(examples):
            first, last = _char_to_token(z["token_char"][segment.offsets[i] : segment.offsets[i + 1]])
            targets.append([(index[kind], first[s], last[e]) for kind, s, e in ex.label or ()
                            if e < len(last) and first[s] >= 0 and last[e] >= 0])  # cut off by max_length: unreachable
        rows, offsets = pack([np.asarray(t, dtype=np.int64).reshape(-1, 3) for t in targets], np.int64)
        spans = SpanTargets(rows.reshape(-1, 3), offsets, len(self.types))
        gold = [None if ex.label is None else {EntitySpan(k, s, e, ex.text_a[s:e + 1]) for k, s, e in ex.label}
                for ex in examples]
        return Encoded({"": segment}, np.zeros(len(examples), dtype=np.int64), spans=spans, gold=gold,
                       meta={"token_char": z["token_char"], "texts": texts})

    def forward(self, **batch) -> torch.Tensor:
        hidden = self.backbone_outputs(batch).last_hidden_state
        return self.pointer(self.dropout(hidden), batch["attention_mask"])

    def loss(self, scores: torch.Tensor, batch: dict) -> torch.Tensor:
        return global_pointer_loss(scores, batch["span_labels"], batch["row_valid"])

    def predict(self, scores: torch.Tensor, enc: Optional[Encoded] = None) -> list[set]:
        """(type, first char, last char) entities per example."""
        offsets = enc.segments[""].offsets
        found = decode_spans(scores.float(), self.params.threshold, self.params.flat)
        out = []
        for i, spans in enumerate(found):
            chars = enc.meta["token_char"][offsets[i] : offsets[i + 1]]
            text = enc.meta["texts"][i]
            out.append({EntitySpan(self.types[t], int(chars[s]), int(chars[e]), text[int(chars[s]):int(chars[e]) + 1])
                        for t, s, e in spans if s < len(chars) and e < len(chars) and chars[s] >= 0 and chars[e] >= 0})
        return out



def _char_to_token(token_char: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per character up to the last one with a token, its first and its last token (-1: no token, e.g.
    whitespace); characters past the end were cut off by max_length (sized by the tokens, not the text)."""
    n_chars = int(token_char.max()) + 1 if len(token_char) else 0
    first = np.full(n_chars, -1, dtype=np.int64)
    last = np.full(n_chars, -1, dtype=np.int64)
    for t, c in enumerate(token_char):
        if c >= 0:
            if first[c] < 0:
                first[c] = t
            last[c] = t
    return first, last


def _special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after one text ([CLS] … [SEP], <s> … </s>)."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    wrapped = tokenizer("a")["input_ids"]
    at = next(i for i in range(len(wrapped)) if wrapped[i : i + len(bare)] == bare)
    return wrapped[:at], wrapped[at + len(bare) :]


def _char_tokens(texts: list[str], tokenizer, max_length: int) -> dict[str, np.ndarray]:
    """One token per character where the vocabulary has the (normalized) character, else the
    tokenizer's own pieces of that character; whitespace gets no token. token_char: the
    character each token stands for (-1 for special tokens)."""
    vocab = tokenizer.get_vocab()
    normalizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "normalizer", None)
    lower = getattr(tokenizer, "do_lower_case", False)
    before, after = _special_tokens(tokenizer)
    budget = max_length - len(before) - len(after)
    pieces_of: dict[str, list[int]] = {}
    ids, chars = [], []
    for text in texts:
        row_ids, row_chars = [], []
        for c, char in enumerate(text):
            if char not in pieces_of:
                norm = normalizer.normalize_str(char) if normalizer is not None else char
                norm = norm.lower() if lower else norm
                if not norm.strip():
                    pieces_of[char] = []
                elif norm in vocab:
                    pieces_of[char] = [vocab[norm]]
                else:  # e.g. a character the vocabulary spells as "▁" + piece: drop the bare "▁"
                    got = tokenizer(char, add_special_tokens=False)["input_ids"]
                    pieces_of[char] = [p for p in got if tokenizer.convert_ids_to_tokens(p).strip("▁ ")] or got
            piece_ids = pieces_of[char]
            if len(row_ids) + len(piece_ids) > budget:
                break
            row_ids += piece_ids
            row_chars += [c] * len(piece_ids)
        ids.append(before + row_ids + after)
        chars.append([-1] * len(before) + row_chars + [-1] * len(after))
    flat, offsets = pack(ids)
    arrays = {"ids": flat, "offsets": offsets, "token_char": pack(chars)[0]}
    if "token_type_ids" in tokenizer.model_input_names:
        arrays["type_ids"] = np.zeros(len(flat), dtype=np.int8)
    return arrays
