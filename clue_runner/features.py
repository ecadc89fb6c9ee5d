"""Tokenization (cached on disk), dynamic padding and length-grouped batches."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .data import Example
from .paths import cache_root

TOKENIZE_CHUNK = 2048


@dataclass
class Encoded:
    """Token ids of every example, stored flat (ids[offsets[i]:offsets[i+1]] is example i)."""

    ids: np.ndarray  # int32
    offsets: np.ndarray  # int64, len n+1
    type_ids: Optional[np.ndarray]  # int8, same layout as ids; None if the tokenizer has none
    labels: np.ndarray  # int64, -100 where unlabelled

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


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


def _cache_key(examples: Sequence[Example], tokenizer, max_length: int) -> str:
    h = hashlib.sha1()
    h.update(f"v1|{tokenizer_fingerprint(tokenizer)}|{max_length}".encode())
    for ex in examples:
        h.update(ex.text_a.encode())
        h.update(b"\x00" + (ex.text_b.encode() if ex.text_b is not None else b"\x01") + b"\x00")
    return h.hexdigest()


def _tokenize(examples: Sequence[Example], tokenizer, max_length: int) -> Encoded:
    pair = examples[0].text_b is not None
    want_types = "token_type_ids" in tokenizer.model_input_names
    ids, types, lengths = [], [], []
    for start in range(0, len(examples), TOKENIZE_CHUNK):
        chunk = examples[start : start + TOKENIZE_CHUNK]
        out = tokenizer(
            [ex.text_a for ex in chunk],
            [ex.text_b or "" for ex in chunk] if pair else None,
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
    labels = np.array([-100 if ex.label is None else ex.label for ex in examples], dtype=np.int64)
    return Encoded(
        ids=np.concatenate(ids),
        offsets=offsets,
        type_ids=np.concatenate(types) if want_types else None,
        labels=labels,
    )


def encode_examples(examples: Sequence[Example], tokenizer, max_length: int, use_cache: bool = True) -> Encoded:
    """Tokenize, reusing an earlier identical tokenization from the on-disk cache."""
    if not use_cache:
        return _tokenize(examples, tokenizer, max_length)
    path = cache_root() / "tokens" / f"{_cache_key(examples, tokenizer, max_length)}.npz"
    if path.is_file():
        with np.load(path) as z:
            return Encoded(z["ids"], z["offsets"], z["type_ids"] if "type_ids" in z else None, z["labels"])
    enc = _tokenize(examples, tokenizer, max_length)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"ids": enc.ids, "offsets": enc.offsets, "labels": enc.labels}
    if enc.type_ids is not None:
        arrays["type_ids"] = enc.type_ids
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)
    return enc


def collate(enc: Encoded, indices: Sequence[int], pad_id: int, pad_multiple: int = 1) -> dict[str, torch.Tensor]:
    """Pad the chosen examples to the longest of them (rounded up to pad_multiple)."""
    lengths = enc.lengths[indices]
    width = int(lengths.max())
    width = -(-width // pad_multiple) * pad_multiple
    input_ids = np.full((len(indices), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(indices), width), dtype=np.int64)
    types = np.zeros((len(indices), width), dtype=np.int64) if enc.type_ids is not None else None
    for row, i in enumerate(indices):
        a, b = enc.offsets[i], enc.offsets[i + 1]
        input_ids[row, : b - a] = enc.ids[a:b]
        mask[row, : b - a] = 1
        if types is not None:
            types[row, : b - a] = enc.type_ids[a:b]
    batch = {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(mask),
        "labels": torch.from_numpy(enc.labels[indices]),
    }
    if types is not None:
        batch["token_type_ids"] = torch.from_numpy(types)
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
