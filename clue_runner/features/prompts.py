"""Prompt featurization: a template with text slots and a [MASK] for the label word (PET), or a
label prompt paired with the text (NSP-BERT).

The mask positions are where this module puts the masks, after truncation: the texts are cut
to fit `max_length`, the template never is (the FewCLUE scripts find them by searching for
placeholder characters after tokenization; building the ids piece by piece gives the same).
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .encoded import Encoded, Segment

MASK, SEP, PROMPT = "[MASK]", "[SEP]", "[P]"  # [P]: a continuous prompt vector (P-tuning)
BEFORE, AFTER = "{before_blank}", "{after_blank}"  # a cloze passage either side of its blank
TEXT_SLOTS = ("{text_a}", "{text_b}", BEFORE, AFTER)
_PIECE = re.compile(r"(\{text_a\}|\{text_b\}|\{before_blank\}|\{after_blank\}|\[MASK\]|\[SEP\]|\[P\])")


def parse_template(template: str) -> list[str]:
    """`"[MASK]满意。{text_a}"` → ["[MASK]", "满意。", "{text_a}"]."""
    return [p for p in _PIECE.split(template) if p]


def truncate_lengths(lengths: Sequence[int], budget: int) -> list[int]:
    """Longest first: shorten the longest text one token at a time until the total fits."""
    lengths = list(lengths)
    while sum(lengths) > budget:
        longest = max(range(len(lengths)), key=lambda i: lengths[i])
        lengths[longest] -= 1
    return lengths


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def render_prompts(examples, tokenizer, template: str, max_length: int, mask_length: int,
                   label_of=None) -> Encoded:
    """Every example rendered into `template`: [CLS] pieces [SEP], the [MASK] as `mask_length`
    masks. item_arrays: `mask_positions` [N, mask_length]; `prompt_positions` [N, n] for [P]s."""
    pieces = parse_template(template)
    literal = {p: ids for p, ids in zip(*_unique_literals(pieces, tokenizer))}
    slots = [p for p in pieces if p in TEXT_SLOTS]
    text_ids = {slot: _ids(tokenizer, [slot_text(ex, slot) for ex in examples]) for slot in set(slots)}
    fixed = (2 + sum(len(literal[p]) for p in pieces if p in literal) + mask_length * pieces.count(MASK)
             + pieces.count(SEP) + pieces.count(PROMPT))
    budget = max_length - fixed
    if budget < len(slots):
        raise ConfigError(f"template {template!r} takes {fixed} of data.max_length {max_length} tokens; "
                          "raise data.max_length")
    cls, sep, mask = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id
    prompt_id = tokenizer.unk_token_id  # a placeholder: P-tuning replaces its embedding
    ids_out, types_out, offsets, masks, prompts = [], [], [0], [], []
    for i in range(len(examples)):
        keep = truncate_lengths([len(text_ids[s][i]) for s in slots], budget)
        seq, types, seg, mask_at, prompt_at, slot_i = [cls], [0], 0, [], [], 0
        for p in pieces:
            if p == MASK:
                mask_at += range(len(seq), len(seq) + mask_length)
                add = [mask] * mask_length
            elif p == PROMPT:
                prompt_at.append(len(seq))
                add = [prompt_id]
            elif p == SEP:
                add = [sep]
            elif p in TEXT_SLOTS:
                ids, n = text_ids[p][i], keep[slot_i]
                add = ids[len(ids) - n:] if p == BEFORE else ids[:n]  # cut away from the blank
                slot_i += 1
            else:
                add = literal[p]
            seq += add
            types += [seg] * len(add)
            if p == SEP:
                seg = 1  # the second segment starts after a template's [SEP]
        seq.append(sep)
        types.append(seg)
        ids_out += seq
        types_out += types
        offsets.append(offsets[-1] + len(seq))
        masks.append(mask_at)
        prompts.append(prompt_at)
    has_types = "token_type_ids" in tokenizer.model_input_names
    segment = Segment(np.asarray(ids_out, dtype=np.int32), np.asarray(offsets, dtype=np.int64),
                      np.asarray(types_out, dtype=np.int8) if has_types else None)
    arrays = {"mask_positions": np.asarray(masks, dtype=np.int64).reshape(len(examples), mask_length)}
    if pieces.count(PROMPT):
        arrays["prompt_positions"] = np.asarray(prompts, dtype=np.int64).reshape(len(examples), -1)
    return Encoded({"": segment}, _labels(examples, label_of), item_arrays=arrays)


def slot_text(example, slot: str) -> str:
    """The text a template slot takes from an example; the blank slots split a cloze item's
    passage (`text_b`) at the blank its parser recorded (`extra["blank"]`, data.parsers)."""
    if slot in (BEFORE, AFTER):
        start, end = example.extra["blank"]
        return example.text_b[:start] if slot == BEFORE else example.text_b[end:]
    return getattr(example, slot[1:-1]) or ""


def _unique_literals(pieces, tokenizer):
    names = sorted({p for p in pieces if p not in (MASK, SEP, PROMPT, *TEXT_SLOTS)})
    return names, _ids(tokenizer, names)


def _labels(examples, label_of=None) -> np.ndarray:
    return np.asarray([(-100 if ex.label is None else ex.label) if label_of is None else label_of(ex)
                       for ex in examples], dtype=np.int64)


def candidate_ids(examples, tokenizer, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Each example's candidates as [N, C, length] token ids (one per character; C = the most
    candidates of any example) and a [N, C] mask of the candidates that can be scored: fillers
    of examples with fewer candidates, and candidates with a character outside the vocabulary,
    are impossible (masked out). A candidate of another length is refused."""
    width = max(len(ex.extra["choices"]) for ex in examples)
    ids = np.zeros((len(examples), width, length), dtype=np.int64)
    possible = np.zeros((len(examples), width), dtype=bool)
    vocab = {}
    for i, ex in enumerate(examples):
        for c, word in enumerate(ex.extra["choices"]):
            if len(word) != length:
                raise DataError(f"example {ex.id}: candidate {word!r} has {len(word)} characters; "
                                  f"prompt.word_length is {length}")
            for j, ch in enumerate(word):
                if ch not in vocab:
                    found = tokenizer.convert_tokens_to_ids(ch)
                    vocab[ch] = None if found is None or found == tokenizer.unk_token_id else found
                ids[i, c, j] = vocab[ch] or 0
            possible[i, c] = all(vocab[ch] is not None for ch in word)
    return ids, possible


def word_ids(tokenizer, words: list[str]) -> np.ndarray:
    """[C, k] token ids of equal-length label words, one token per character (refused otherwise)."""
    out = []
    for word in words:
        ids = [tokenizer.convert_tokens_to_ids(ch) for ch in word]
        if any(i is None or i == tokenizer.unk_token_id for i in ids):
            raise ConfigError(f"label word {word!r}: a character is not in the model's vocabulary")
        out.append(ids)
    return np.asarray(out, dtype=np.int64)


def tokenize_pairs(firsts: list[str], seconds: list[str], tokenizer, max_length: int, truncation: str, labels,
                 choices: int = 1) -> Encoded:
    """Text pairs as [CLS] a [SEP] b [SEP] with token types (NSP-BERT's input)."""
    enc = tokenizer(firsts, seconds, truncation=truncation, max_length=max_length)
    lengths = [len(x) for x in enc["input_ids"]]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    types = enc.get("token_type_ids")
    segment = Segment(np.asarray([t for x in enc["input_ids"] for t in x], dtype=np.int32), offsets,
                      None if types is None else np.asarray([t for x in types for t in x], dtype=np.int8))
    return Encoded({"": segment}, np.asarray(labels, dtype=np.int64), choices=choices)


def nsp_label_prompts(examples, tokenizer, prompts: list[str], max_length: int, prompt_first: bool,
                      label_of=None) -> Encoded:
    """One (prompt, text) pair per label per example (multiple-choice layout: `choices` = labels)."""
    texts = [ex.text_a for ex in examples for _ in prompts]
    labels_ = [p for _ in examples for p in prompts]
    if prompt_first:
        return tokenize_pairs(labels_, texts, tokenizer, max_length, "only_second", _labels(examples, label_of), len(prompts))
    return tokenize_pairs(texts, labels_, tokenizer, max_length, "only_first", _labels(examples, label_of), len(prompts))


def fill(pattern: str, word: str) -> str:
    return pattern.replace("{label}", word)


def bucket_labels(scores: np.ndarray, buckets: int) -> np.ndarray:
    """NSP-BERT's label mapping for pairs: rank by score, cut into `buckets` equal parts, lowest first."""
    order = np.argsort(scores, kind="stable")
    out = np.empty(len(scores), dtype=np.int64)
    for b, chunk in enumerate(np.array_split(order, buckets)):
        out[chunk] = b
    return out



def random_mask(input_ids: torch.Tensor, maskable: torch.Tensor, mask_id: int, vocab: int, probability: float,
                generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: `probability` of the maskable tokens become targets; of those 80 % [MASK],
    10 % a random token, 10 % kept. Returns (inputs, targets with -100 elsewhere)."""
    draw = torch.rand(input_ids.shape, device=input_ids.device, generator=generator)
    chosen = (draw < probability) & maskable
    targets = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    how = torch.rand(input_ids.shape, device=input_ids.device, generator=generator)
    inputs = torch.where(chosen & (how < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    randoms = torch.randint(vocab, input_ids.shape, device=input_ids.device, generator=generator)
    inputs = torch.where(chosen & (how >= 0.8) & (how < 0.9), randoms, inputs)
    return inputs, targets
