"""In-context scoring requests: each example's context (k demonstrations, then the query rendered
from the task's LM template) and the continuation scored for each label (or choice).

Demonstrations come from a pool (the train split), drawn per example from (seed, example index):
deterministic, never the query itself (same texts), optionally balanced over labels. When context
plus the longest continuation exceeds the maximum length, whole demonstrations are dropped from the
left; the query is never cut for a demonstration.

Tokens split as lm-evaluation-harness splits them: context = tokens(context); continuation =
tokens(context + continuation) after those, with trailing whitespace of the context moved to the
continuation. Every label of one example shares the same context tokens.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ..tasks.spec import BLANK_SLOTS, LABEL_SLOT, LmTemplate
from .encoded import Encoded, Segment

CONTENT_FREE = "N/A"  # the content-free query of contextual calibration (Zhao et al., 2021)


def template_hash(template: LmTemplate, separator: str) -> str:
    """A short hash of what decides the scored text (prompt, answer, separator): reports show it."""
    text = json.dumps([template.prompt, template.answer, separator], ensure_ascii=False)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def example_choices(ex) -> Optional[list[str]]:
    return ex.extra.get("choices")


def render_prompt(template: LmTemplate, ex, fill: Optional[str] = None) -> str:
    """The query's context; `fill` replaces every input text (the content-free query)."""
    if "blank" in ex.extra:  # a cloze passage: the context ends where the blank starts
        start, _ = ex.extra["blank"]
        return template.prompt.replace(BLANK_SLOTS[0], fill if fill is not None else ex.text_a[:start])
    a = fill if fill is not None else ex.text_a
    b = fill if fill is not None else (ex.text_b or "")
    return template.prompt.replace("{text_a}", a).replace("{text_b}", b)


def render_answers(template: LmTemplate, ex, words: Sequence[str]) -> list[str]:
    """The continuation of each label word (a cloze passage: the candidate and the text after the blank)."""
    after = ""
    if "blank" in ex.extra:
        after = ex.text_a[ex.extra["blank"][1]:]
    return [template.answer.replace(LABEL_SLOT, w).replace(BLANK_SLOTS[1], after) for w in words]


def label_words(ex, words: Optional[Sequence[str]]) -> list[str]:
    """The words scored for `ex`: its own choices (C3, CHID), else the task's label words."""
    return example_choices(ex) or list(words)


def gold_answer(template: LmTemplate, ex, words: Optional[Sequence[str]]) -> str:
    return render_answers(template, ex, [label_words(ex, words)[ex.label]])[0]


def draw_demonstrations(pool, k: int, seed: int, index: int, query, balanced: bool = False) -> list[int]:
    """Indices of k labelled pool examples for the `index`-th query: a pure function of (seed, index),
    none with the query's texts; `balanced` takes labels in turn (in a random label order)."""
    if k <= 0:
        return []
    rng = np.random.default_rng([seed, index])
    allowed = [i for i, ex in enumerate(pool)
               if ex.label is not None and (ex.text_a, ex.text_b) != (query.text_a, query.text_b)]
    order = [allowed[i] for i in rng.permutation(len(allowed))]
    if not balanced:
        return order[:k]
    by_label: dict = {}
    for i in order:
        by_label.setdefault(pool[i].label, []).append(i)
    labels = [by_label[key] for key in sorted(by_label, key=str)]
    labels = [labels[i] for i in rng.permutation(len(labels))]
    picked: list[int] = []
    while len(picked) < min(k, len(order)):
        for queue in labels:
            if queue and len(picked) < k:
                picked.append(queue.pop(0))
    return picked


@dataclass
class Request:
    """One example's scoring request, as token ids."""

    context: list[int]
    continuations: list[list[int]]
    demonstrations: list = field(default_factory=list)  # the pool ids shown, left to right
    calibration_context: Optional[list[int]] = None  # the same demonstrations, then the content-free query
    characters: list[int] = field(default_factory=list)  # characters of each continuation (`char` normalisation)
    text: str = ""  # the context as text, and the continuations' texts (what another harness would be given)
    answers: list[str] = field(default_factory=list)


def split_tokens(tokenizer, context: str, continuations: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """lm-evaluation-harness's split: trailing whitespace moves from the context to each continuation."""
    stripped = context.rstrip()
    moved = context[len(stripped):]
    ctx = tokenizer(stripped)["input_ids"]
    conts = []
    for cont in continuations:
        whole = tokenizer(stripped + moved + cont)["input_ids"]
        conts.append(whole[len(ctx):])
    return ctx, conts


def fit_context(tokenizer, demos: list[str], query: str, separator: str, room: int) -> tuple[list[int], int]:
    """Context token ids of `demos + [query]` joined by `separator` within `room` tokens, dropping
    whole demonstrations from the left; returns (ids, demonstrations kept). The query is never cut."""
    for first in range(len(demos) + 1):
        ids = tokenizer(separator.join([*demos[first:], query]).rstrip())["input_ids"]
        if len(ids) <= room:
            return ids, len(demos) - first
    return ids, 0


@dataclass
class Renderer:
    """Renders and tokenizes requests for one task, template and set of options."""

    template: LmTemplate
    words: Optional[list[str]]  # the task's label words in label order (None: each example's choices)
    separator: str
    k: int = 0
    seed: int = 0
    balanced: bool = False
    calibrate: bool = False

    def request(self, tokenizer, ex, index: int, pool, max_length: int) -> Request:
        picked = draw_demonstrations(pool, self.k, self.seed, index, ex, self.balanced)
        demos = [render_prompt(self.template, pool[i]) + gold_answer(self.template, pool[i], self.words) for i in picked]
        query = render_prompt(self.template, ex)
        answers = render_answers(self.template, ex, label_words(ex, self.words))
        _, conts = split_tokens(tokenizer, query, answers)
        room = max_length - max(len(c) for c in conts)
        _, kept = fit_context(tokenizer, demos, query, self.separator, room)
        shown = demos[len(demos) - kept:]
        text = self.separator.join([*shown, query])
        ctx, conts = split_tokens(tokenizer, text, answers)
        request = Request(ctx, conts, [pool[i].id for i in picked[len(picked) - kept:]],
                          characters=[len(a) for a in answers], text=text, answers=answers)
        if self.calibrate:
            free = render_prompt(self.template, ex, CONTENT_FREE)
            request.calibration_context, _ = split_tokens(tokenizer, self.separator.join([*shown, free]), answers)
        return request


def pack_requests(requests: list[Request], labels: np.ndarray) -> Encoded:
    """Requests as an `Encoded`: one item per example, its context the segment "" (the calibration
    context "cf_"), its continuations `item_arrays["continuation_ids"]` [n, C, L] (-1 = none) and
    their characters `continuation_chars` [n, C]."""
    width = max(len(c) for r in requests for c in r.continuations)
    choices = max(len(r.continuations) for r in requests)
    conts = np.full((len(requests), choices, width), -1, dtype=np.int64)
    for i, r in enumerate(requests):
        for j, c in enumerate(r.continuations):
            conts[i, j, : len(c)] = c
    segments = {"": _segment([r.context for r in requests])}
    if requests and requests[0].calibration_context is not None:
        segments["cf_"] = _segment([r.calibration_context for r in requests])
    chars = np.ones((len(requests), choices), dtype=np.float32)
    for i, r in enumerate(requests):
        chars[i, : len(r.characters)] = r.characters
    meta = {"demonstrations": [r.demonstrations for r in requests]}
    return Encoded(segments, labels, item_arrays={"continuation_ids": conts, "continuation_chars": chars}, meta=meta)


def _segment(rows: list[list[int]]) -> Segment:
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    ids = np.fromiter((t for r in rows for t in r), dtype=np.int32, count=int(offsets[-1]))
    return Segment(ids, offsets, None)
