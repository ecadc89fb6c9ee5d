"""Tokenization (cached on disk), dynamic padding and length-grouped batches."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

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
class SpanTargets:
    """Gold token spans per item, stored flat: rows[offsets[i]:offsets[i+1]] are item i's (type, start, end)."""

    rows: np.ndarray  # int64 [M, 3], end inclusive
    offsets: np.ndarray  # int64 [n + 1]
    types: int


@dataclass
class Encoded:
    """Tokenized items, what a batch is made of: one segment for a cross-encoder (text pairs
    joined), two for a bi-encoder (keys "" and "b_": the prefixes of their batch keys).

    An item is usually one example. Multiple choice: an item has `choices` sequences (rows
    i*choices … of each segment). Reading comprehension: an example is split into windows,
    each an item (`item_example` maps back). `gold` is what metrics compare predictions with,
    per example (default: `labels`); `meta` holds what a head needs to decode predictions.
    """

    segments: dict[str, Segment]
    labels: np.ndarray  # int64 class ids (-100 where unlabelled) or float32 scores (NaN where unlabelled)
    choices: int = 1
    item_arrays: dict[str, np.ndarray] = field(default_factory=dict)  # more per-item batch inputs
    spans: Optional[SpanTargets] = None  # NER targets, made dense [B, types, L, L] per batch
    gold: Optional[list] = None
    item_example: Optional[np.ndarray] = None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per item over all segments: what batching groups by and throughput counts."""
        per_row = sum(seg.lengths for seg in self.segments.values())
        return per_row.reshape(len(self), self.choices).sum(1)

    @property
    def targets(self):
        """Per-example gold for metrics."""
        return self.labels if self.gold is None else self.gold

    def unlabelled(self) -> bool:
        if self.gold is not None:
            return any(g is None for g in self.gold)
        labels = self.labels
        return bool(np.isnan(labels).any() if labels.dtype.kind == "f" else (labels < 0).any())


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


def cache_key(texts_a: Sequence[str], texts_b: Optional[Sequence[str]], tokenizer, settings: str) -> str:
    """Hash of the tokenizer, the settings that shape the output and every text."""
    h = hashlib.sha1()
    h.update(f"v2|{tokenizer_fingerprint(tokenizer)}|{settings}".encode())
    for i, a in enumerate(texts_a):
        h.update(a.encode())
        h.update(b"\x00" + (texts_b[i].encode() if texts_b is not None else b"\x01") + b"\x00")
    return h.hexdigest()


def cached_arrays(key: str, build: Callable[[], dict[str, np.ndarray]], use_cache: bool = True) -> dict[str, np.ndarray]:
    """`build()` once per key: later runs load the arrays from the on-disk cache."""
    if not use_cache:
        return build()
    path = cache_root() / "tokens" / f"{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    arrays = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)
    return arrays


def pack(rows: Sequence[Sequence[int]], dtype=np.int32) -> tuple[np.ndarray, np.ndarray]:
    """Variable-length rows → (flat values, offsets)."""
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    flat = np.concatenate([np.asarray(r, dtype=dtype) for r in rows]) if len(rows) else np.zeros(0, dtype)
    return flat, offsets


def _tokenize(texts_a: Sequence[str], texts_b: Optional[Sequence[str]], tokenizer, max_length: int) -> Segment:
    want_types = "token_type_ids" in tokenizer.model_input_names
    ids, types = [], []
    for start in range(0, len(texts_a), TOKENIZE_CHUNK):
        out = tokenizer(
            list(texts_a[start : start + TOKENIZE_CHUNK]),
            list(texts_b[start : start + TOKENIZE_CHUNK]) if texts_b is not None else None,
            truncation=True,
            max_length=max_length,
            return_token_type_ids=want_types,
            return_attention_mask=False,
        )
        ids += out["input_ids"]
        if want_types:
            types += out["token_type_ids"]
    flat, offsets = pack(ids)
    return Segment(ids=flat, offsets=offsets, type_ids=pack(types, np.int8)[0] if want_types else None)


def cached_segment(texts_a, texts_b, tokenizer, max_length: int, use_cache: bool = True) -> Segment:
    def build():
        seg = _tokenize(texts_a, texts_b, tokenizer, max_length)
        return {"ids": seg.ids, "offsets": seg.offsets, **({"type_ids": seg.type_ids} if seg.type_ids is not None else {})}

    z = cached_arrays(cache_key(texts_a, texts_b, tokenizer, f"{max_length}"), build, use_cache)
    return Segment(z["ids"], z["offsets"], z.get("type_ids"))


def encode_examples(examples: Sequence[Example], tokenizer, max_length: int, separate_pairs: bool = False,
                    use_cache: bool = True) -> Encoded:
    """Tokenize (reusing an identical earlier tokenization from the on-disk cache).

    Text pairs become one sequence (`<s> A </s></s> B </s>` or `[CLS] A [SEP] B [SEP]`) unless
    `separate_pairs`, where A and B are tokenized on their own for a bi-encoder.
    """
    texts_a = [ex.text_a for ex in examples]
    texts_b = [ex.text_b for ex in examples] if examples[0].text_b is not None else None
    if separate_pairs and texts_b is not None:
        segments = {"": cached_segment(texts_a, None, tokenizer, max_length, use_cache),
                    "b_": cached_segment(texts_b, None, tokenizer, max_length, use_cache)}
    else:
        segments = {"": cached_segment(texts_a, texts_b, tokenizer, max_length, use_cache)}
    if any(isinstance(ex.label, float) for ex in examples):
        labels = np.array([np.nan if ex.label is None else ex.label for ex in examples], dtype=np.float32)
    else:
        labels = np.array([-100 if ex.label is None else ex.label for ex in examples], dtype=np.int64)
    return Encoded(segments, labels)


def collate(enc: Encoded, indices: Sequence[int], pad_id: int, pad_multiple: int = 1,
            targets: bool = True) -> dict[str, torch.Tensor]:
    """Pad each segment of the chosen items to its longest (rounded up to pad_multiple); with
    `targets`, also the labels (and NER span grids) that only a loss reads.

    `row_valid` marks real items: the fast path appends filler rows, which losses must ignore.
    """
    batch = {}
    indices = np.asarray(indices)
    rows = (indices[:, None] * enc.choices + np.arange(enc.choices)).ravel()  # the items' sequences
    for prefix, seg in enc.segments.items():
        lengths = seg.lengths[rows]
        width = -(-int(lengths.max()) // pad_multiple) * pad_multiple
        input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64) if seg.type_ids is not None else None
        for row, i in enumerate(rows):
            a, b = seg.offsets[i], seg.offsets[i + 1]
            input_ids[row, : b - a] = seg.ids[a:b]
            mask[row, : b - a] = 1
            if types is not None:
                types[row, : b - a] = seg.type_ids[a:b]
        batch[f"{prefix}input_ids"] = torch.from_numpy(input_ids)
        batch[f"{prefix}attention_mask"] = torch.from_numpy(mask)
        if types is not None:
            batch[f"{prefix}token_type_ids"] = torch.from_numpy(types)
    for key, values in enc.item_arrays.items():
        batch[key] = torch.from_numpy(values[indices])
    if targets:
        batch["labels"] = torch.from_numpy(enc.labels[indices])
    if targets and enc.spans is not None:
        batch["span_labels"] = _dense_spans(enc.spans, indices, batch["input_ids"].shape[1])
    batch["row_valid"] = torch.ones(len(indices), dtype=torch.bool)
    return batch


def _dense_spans(spans: SpanTargets, indices: np.ndarray, width: int) -> torch.Tensor:
    dense = np.zeros((len(indices), spans.types, width, width), dtype=np.float32)
    for row, i in enumerate(indices):
        for kind, start, end in spans.rows[spans.offsets[i] : spans.offsets[i + 1]]:
            dense[row, kind, start, end] = 1.0
    return torch.from_numpy(dense)


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
