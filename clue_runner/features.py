"""Tokenization (cached on disk), dynamic padding and length-grouped batches."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from .data import Example
from .paths import cache_root

TOKENIZE_CHUNK = 2048


@dataclass
class Segment:
    """Token ids of every example, stored flat (ids[offsets[i]:offsets[i+1]] is example i)."""

    ids: np.ndarray  # int32
    offsets: np.ndarray  # int64, len n+1
    type_ids: Optional[np.ndarray]  # int8, same layout as ids; None if the tokenizer has none

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass
class Encoded:
    """Tokenized examples: one segment for a cross-encoder (text pairs joined), two for a
    bi-encoder (keys "" and "b_": the prefixes of their batch keys), and the labels."""

    segments: dict[str, Segment]
    labels: np.ndarray  # int64 class ids (-100 where unlabelled) or float32 scores (NaN where unlabelled)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per example over all segments: what batching groups by and throughput counts."""
        return sum(seg.lengths for seg in self.segments.values())


_fingerprints: dict[int, str] = {}


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of everything that decides token ids: the full fast-tokenizer definition."""
    key = id(tokenizer)
    if key not in _fingerprints:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
        extra = json.dumps([tokenizer.__class__.__name__, tokenizer.model_input_names], sort_keys=True)
        _fingerprints[key] = hashlib.sha1((text + extra).encode()).hexdigest()
    return _fingerprints[key]


def _cache_key(texts_a: Sequence[str], texts_b: Optional[Sequence[str]], tokenizer, max_length: int) -> str:
    h = hashlib.sha1()
    h.update(f"v2|{tokenizer_fingerprint(tokenizer)}|{max_length}".encode())
    for i, a in enumerate(texts_a):
        h.update(a.encode())
        h.update(b"\x00" + (texts_b[i].encode() if texts_b is not None else b"\x01") + b"\x00")
    return h.hexdigest()


def _tokenize(texts_a: Sequence[str], texts_b: Optional[Sequence[str]], tokenizer, max_length: int) -> Segment:
    want_types = "token_type_ids" in tokenizer.model_input_names
    ids, types, lengths = [], [], []
    for start in range(0, len(texts_a), TOKENIZE_CHUNK):
        out = tokenizer(
            list(texts_a[start : start + TOKENIZE_CHUNK]),
            list(texts_b[start : start + TOKENIZE_CHUNK]) if texts_b is not None else None,
            truncation=True,
            max_length=max_length,
            return_token_type_ids=want_types,
            return_attention_mask=False,
        )
        for i, seq in enumerate(out["input_ids"]):
            ids.append(np.asarray(seq, dtype=np.int32))
            lengths.append(len(seq))
            if want_types:
                types.append(np.asarray(out["token_type_ids"][i], dtype=np.int8))
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Segment(ids=np.concatenate(ids), offsets=offsets, type_ids=np.concatenate(types) if want_types else None)


def _cached_segment(texts_a, texts_b, tokenizer, max_length: int, use_cache: bool) -> Segment:
    if not use_cache:
        return _tokenize(texts_a, texts_b, tokenizer, max_length)
    path = cache_root() / "tokens" / f"{_cache_key(texts_a, texts_b, tokenizer, max_length)}.npz"
    if path.is_file():
        with np.load(path) as z:
            return Segment(z["ids"], z["offsets"], z["type_ids"] if "type_ids" in z else None)
    seg = _tokenize(texts_a, texts_b, tokenizer, max_length)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"ids": seg.ids, "offsets": seg.offsets}
    if seg.type_ids is not None:
        arrays["type_ids"] = seg.type_ids
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)
    return seg


def encode_examples(examples: Sequence[Example], tokenizer, max_length: int, separate_pairs: bool = False,
                    use_cache: bool = True) -> Encoded:
    """Tokenize (reusing an identical earlier tokenization from the on-disk cache).

    Text pairs become one sequence (`<s> A </s></s> B </s>` or `[CLS] A [SEP] B [SEP]`) unless
    `separate_pairs`, where A and B are tokenized on their own for a bi-encoder.
    """
    texts_a = [ex.text_a for ex in examples]
    texts_b = [ex.text_b for ex in examples] if examples[0].text_b is not None else None
    if separate_pairs and texts_b is not None:
        segments = {"": _cached_segment(texts_a, None, tokenizer, max_length, use_cache),
                    "b_": _cached_segment(texts_b, None, tokenizer, max_length, use_cache)}
    else:
        segments = {"": _cached_segment(texts_a, texts_b, tokenizer, max_length, use_cache)}
    if any(isinstance(ex.label, float) for ex in examples):
        labels = np.array([np.nan if ex.label is None else ex.label for ex in examples], dtype=np.float32)
    else:
        labels = np.array([-100 if ex.label is None else ex.label for ex in examples], dtype=np.int64)
    return Encoded(segments, labels)


def collate(enc: Encoded, indices: Sequence[int], pad_id: int, pad_multiple: int = 1) -> dict[str, torch.Tensor]:
    """Pad each segment of the chosen examples to its longest (rounded up to pad_multiple).

    `row_valid` marks real rows: the fast path appends filler rows, which losses must ignore.
    """
    batch = {}
    for prefix, seg in enc.segments.items():
        lengths = seg.lengths[indices]
        width = -(-int(lengths.max()) // pad_multiple) * pad_multiple
        input_ids = np.full((len(indices), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(indices), width), dtype=np.int64)
        types = np.zeros((len(indices), width), dtype=np.int64) if seg.type_ids is not None else None
        for row, i in enumerate(indices):
            a, b = seg.offsets[i], seg.offsets[i + 1]
            input_ids[row, : b - a] = seg.ids[a:b]
            mask[row, : b - a] = 1
            if types is not None:
                types[row, : b - a] = seg.type_ids[a:b]
        batch[f"{prefix}input_ids"] = torch.from_numpy(input_ids)
        batch[f"{prefix}attention_mask"] = torch.from_numpy(mask)
        if types is not None:
            batch[f"{prefix}token_type_ids"] = torch.from_numpy(types)
    batch["labels"] = torch.from_numpy(enc.labels[indices])
    batch["row_valid"] = torch.ones(len(indices), dtype=torch.bool)
    return batch


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Copy a host batch to the device without stalling the host.

    A copy from pageable memory waits for the GPU stream to drain; from pinned memory it is
    queued, so the next batch is prepared while the GPU still works on this one.
    """
    if device.type != "cuda":
        return batch
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


def train_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool = True,
                  group_factor: int = 50) -> list[np.ndarray]:
    """One epoch's batches, a pure function of (seed, epoch) so a resumed run sees the same order.

    Length grouping: shuffle, cut into groups of `group_factor` batches, sort each group by
    length so a batch pads little, then shuffle the batch order.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if group_by_length:
        group = batch_size * group_factor
        order = np.concatenate([
            chunk[np.argsort(-lengths[chunk], kind="stable")]
            for chunk in np.array_split(order, range(group, len(order), group))
        ])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def eval_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Longest first (an out-of-memory shows at once); callers restore the original order."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
