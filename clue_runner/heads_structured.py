"""Heads of the structured CLUE tasks, after the bert4keras CLUE baselines (kexue.fm/archives/8739):

- `multiple_choice` (C3, CHID): every (text, choice) pair scored by one linear unit on the first
  token, softmax over a question's choices; CHID can decode the blanks of a passage jointly by
  optimal one-to-one assignment of candidates (Hungarian, scipy).
- `span` (CMRC2018): start/end logits over the context, long contexts cut into overlapping
  windows, the best span over all windows of a question mapped back to its characters.
- `global_pointer` (CLUENER): GlobalPointer span scores per entity type on character tokens,
  so gold character offsets survive any tokenizer.

Each head owns its featurization (`featurize`) and decoding (`predict`); the trainer sees only
batches and a loss.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .errors import ConfigError
from .features import Encoded, Segment, SpanTargets, cache_key, cached_arrays, cached_segment, pack
from .heads import HEADS, Head, Params
from .structured_inputs import choice_text

MASKED = -1e4  # a choice or position that cannot win (finite: fp32 softmax stays NaN-free)


def _type_ids(batch: dict) -> dict:
    return {"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}


# -- multiple choice -------------------------------------------------------------------------


class ChoiceParams(Params):
    decode: Literal["argmax", "hungarian"] = "argmax"  # hungarian: one candidate per blank within a passage


@HEADS.register("multiple_choice")
class MultipleChoiceHead(Head):
    """Scores each choice from the first token of `text_a + choice` paired with `text_b`
    (C3: question + option, document; CHID: candidate idiom, passage window around the blank)."""

    Params = ChoiceParams
    graphable = False  # an item is several sequences

    def __init__(self, encoder, task, params: ChoiceParams, dropout=0.1):
        super().__init__(encoder, task, params, dropout)
        self.scorer = nn.Linear(encoder.config.hidden_size, 1)

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
        hidden = self.encode(batch).last_hidden_state[:, 0]
        scores = self.scorer(self.dropout(hidden)).float().view(choice_mask.shape)
        return scores.masked_fill(~choice_mask, MASKED)

    def loss(self, scores: torch.Tensor, batch: dict) -> torch.Tensor:
        return F.cross_entropy(scores, batch["labels"])  # -100 (filler or unlabelled) rows are ignored

    def predict(self, scores: torch.Tensor, enc: Optional[Encoded] = None) -> np.ndarray:
        scores = scores.float()
        if self.params.decode == "argmax" or enc is None:
            return scores.argmax(-1).numpy()
        return assign_candidates(scores.log_softmax(-1).numpy(), enc.meta["groups"])

    def new_parameters(self):
        return list(self.scorer.parameters())


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


# -- span extraction -------------------------------------------------------------------------


class SpanParams(Params):
    stride: int = Field(128, ge=1)  # tokens shared by consecutive windows of a long context
    max_answer_tokens: int = Field(64, ge=1)
    top_k: int = Field(20, ge=1)  # start and end candidates tried per window


@HEADS.register("span")
class SpanHead(Head):
    """Extractive reading comprehension: (question, context window) → start and end logits."""

    Params = SpanParams
    graphable = False

    def __init__(self, encoder, task, params: SpanParams, dropout=0.1):
        super().__init__(encoder, task, params, dropout)
        self.pointer = nn.Linear(encoder.config.hidden_size, 2)

    def featurize(self, examples, tokenizer, max_length: int, use_cache: bool = True) -> Encoded:
        if self.params.stride >= max_length // 2:
            raise ConfigError(f"head.stride {self.params.stride} must be under half of data.max_length ({max_length}): "
                              "the stride is the overlap of consecutive windows, each also holding the question")
        questions = [ex.text_a for ex in examples]
        contexts = [ex.text_b for ex in examples]
        spans = [ex.extra.get("span") for ex in examples]

        def build() -> dict[str, np.ndarray]:
            return _windows(questions, contexts, spans, tokenizer, max_length, self.params.stride)

        key = cache_key(questions, contexts, tokenizer, f"span|{max_length}|{self.params.stride}|{spans}")
        z = cached_arrays(key, build, use_cache)
        segment = Segment(z["ids"], z["offsets"], z.get("type_ids"))
        return Encoded({"": segment}, z["labels"], gold=[ex.label for ex in examples], item_example=z["item_example"],
                       meta={"char_start": z["char_start"], "char_end": z["char_end"], "contexts": contexts})

    def forward(self, **batch) -> torch.Tensor:
        hidden = self.encode(batch).last_hidden_state
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

    def new_parameters(self):
        return list(self.pointer.parameters())


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


def _windows(questions, contexts, spans, tokenizer, max_length: int, stride: int) -> dict[str, np.ndarray]:
    """(question, context) pairs cut into windows with the tokenizer's own overflow handling.

    Per window token: the context characters it covers (char_start/char_end, -1 outside the
    context). Label per window: the answer's first and last token, or the first token (0) when
    the answer is not wholly inside the window, as in BERT's SQuAD recipe.
    """
    want_types = "token_type_ids" in tokenizer.model_input_names
    out = tokenizer(questions, contexts, truncation="only_second", max_length=max_length, stride=stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True, return_token_type_ids=want_types)
    char_start, char_end, labels = [], [], []
    for w, offsets in enumerate(out["offset_mapping"]):
        in_context = np.array([s == 1 for s in out.sequence_ids(w)])
        starts = np.where(in_context, [o[0] for o in offsets], -1)
        ends = np.where(in_context, [o[1] for o in offsets], -1)
        char_start.append(starts)
        char_end.append(ends)
        span = spans[out["overflow_to_sample_mapping"][w]]
        label = (0, 0)
        if span is not None:
            first = np.flatnonzero(in_context & (starts <= span[0]) & (ends > span[0]))
            last = np.flatnonzero(in_context & (starts < span[1]) & (ends >= span[1]))
            if len(first) and len(last):
                label = (int(first[0]), int(last[-1]))
        labels.append(label)
    ids, offsets = pack(out["input_ids"])
    arrays = {"ids": ids, "offsets": offsets, "char_start": pack(char_start)[0], "char_end": pack(char_end)[0],
              "labels": np.array(labels, dtype=np.int64).reshape(-1, 2),
              "item_example": np.asarray(out["overflow_to_sample_mapping"], dtype=np.int64)}
    if want_types:
        arrays["type_ids"] = pack(out["token_type_ids"], np.int8)[0]
    return arrays


# -- GlobalPointer NER -----------------------------------------------------------------------


class PointerParams(Params):
    head_size: int = Field(64, ge=2, multiple_of=2)
    efficient: bool = False  # Efficient GlobalPointer (kexue.fm/archives/8877): fewer parameters
    flat: bool = False  # decode non-overlapping entities only (default: nested allowed)
    threshold: float = 0.0


@HEADS.register("global_pointer")
class GlobalPointerHead(Head):
    """Entity spans per type scored by GlobalPointer over character tokens: one token per
    character (its own vocabulary piece when it has one, else the tokenizer's pieces for it),
    so a gold span (type, first char, last char) is always representable and decodes back exactly."""

    Params = PointerParams
    graphable = False

    def __init__(self, encoder, task, params: PointerParams, dropout=0.1):
        from .global_pointer import GlobalPointer

        super().__init__(encoder, task, params, dropout)
        self.types = list(task.label.values)
        self.pointer = GlobalPointer(encoder.config.hidden_size, len(self.types), params.head_size,
                                     efficient=params.efficient)

    def featurize(self, examples, tokenizer, max_length: int, use_cache: bool = True) -> Encoded:
        texts = [ex.text_a for ex in examples]
        z = cached_arrays(cache_key(texts, None, tokenizer, f"chars|{max_length}"),
                          lambda: _char_tokens(texts, tokenizer, max_length), use_cache)
        segment = Segment(z["ids"], z["offsets"], z.get("type_ids"))
        index = {t: i for i, t in enumerate(self.types)}
        targets = []
        for i, ex in enumerate(examples):
            first, last = _char_to_token(z["token_char"][segment.offsets[i] : segment.offsets[i + 1]], len(ex.text_a))
            targets.append([(index[kind], first[s], last[e]) for kind, s, e in ex.label or ()
                            if first[s] >= 0 and last[e] >= 0])  # cut off by max_length: unreachable
        rows, offsets = pack([np.asarray(t, dtype=np.int64).reshape(-1, 3) for t in targets], np.int64)
        spans = SpanTargets(rows.reshape(-1, 3), offsets, len(self.types))
        gold = [None if ex.label is None else set(ex.label) for ex in examples]
        return Encoded({"": segment}, np.zeros(len(examples), dtype=np.int64), spans=spans, gold=gold,
                       meta={"token_char": z["token_char"]})

    def forward(self, **batch) -> torch.Tensor:
        hidden = self.encode(batch).last_hidden_state
        return self.pointer(self.dropout(hidden), batch["attention_mask"])

    def loss(self, scores: torch.Tensor, batch: dict) -> torch.Tensor:
        from .global_pointer import global_pointer_loss

        return global_pointer_loss(scores, batch["span_labels"], batch["row_valid"])

    def predict(self, scores: torch.Tensor, enc: Optional[Encoded] = None) -> list[set]:
        """(type, first char, last char) entities per example."""
        from .global_pointer import decode_spans

        offsets = enc.segments[""].offsets
        found = decode_spans(scores.float(), self.params.threshold, self.params.flat)
        out = []
        for i, spans in enumerate(found):
            chars = enc.meta["token_char"][offsets[i] : offsets[i + 1]]
            out.append({(self.types[t], int(chars[s]), int(chars[e])) for t, s, e in spans
                        if s < len(chars) and e < len(chars) and chars[s] >= 0 and chars[e] >= 0})
        return out

    def new_parameters(self):
        return list(self.pointer.parameters())


def _char_to_token(token_char: np.ndarray, n_chars: int) -> tuple[np.ndarray, np.ndarray]:
    """Per character, its first and its last token (-1: no token, e.g. cut off by max_length)."""
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
