"""What a batch is made of: tokenized items, stored flat."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


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
