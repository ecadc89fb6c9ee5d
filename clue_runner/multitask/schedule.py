"""Which task each micro-batch of a multi-task run comes from.

Everything is a pure function of (seed, epoch, position), as the single-task batch order is: a resumed
run restores (epoch, batch in epoch) and sees the same sequence. Task i's c-th batch is the c-th batch
of the single-task order `train_batches(lengths_i, batch_size, seed, c // n_i)[c % n_i]`, so each task's
examples come in the order its own single-task run would see them.

- scheduled (one task per micro-batch): an epoch is Σ_i n_i micro-batches (n_i: task i's batches per
  epoch); position b of epoch e takes task draws(e)[b], drawn with the schedule's probabilities
  from the generator seeded by (seed, epoch).
- all (every task in every micro-batch, for gradient-based weightings): an epoch is max_i n_i micro-batches.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

from ..features import Encoded, collate, train_batches

SCHEDULE_STREAM = 0x5C4ED  # keeps the task draws apart from the batch-order generator of the same (seed, epoch)


def task_probabilities(schedule: str, sizes: dict[str, int], temperature: float = 1.0,
                       frequencies: Optional[dict[str, float]] = None) -> dict[str, float]:
    """proportional: p_i ∝ n_i; temperature: p_i ∝ n_i^(1/T); fixed: p_i ∝ frequencies[i]."""
    if schedule == "proportional":
        raw = {name: float(n) for name, n in sizes.items()}
    elif schedule == "temperature":
        raw = {name: float(n) ** (1.0 / temperature) for name, n in sizes.items()}
    elif schedule == "fixed":
        raw = {name: float(frequencies[name]) for name in sizes}
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    total = sum(raw.values())
    return {name: value / total for name, value in raw.items()}


class MultiTaskSource:
    """Training batches of several tasks; an item is {task: example indices}."""

    def __init__(self, data: dict[str, Encoded], batch_size: int, seed: int, group_by_length: bool = True,
                 probabilities: Optional[dict[str, float]] = None):
        """`probabilities` None: every task in every micro-batch; else one task drawn per micro-batch."""
        self.data, self.batch_size, self.seed, self.group_by_length = data, batch_size, seed, group_by_length
        self.names = list(data)
        self.task_batches = {n: math.ceil(len(enc.lengths) / batch_size) for n, enc in data.items()}
        self.probabilities = probabilities
        if probabilities is None:
            self.batches_per_epoch = max(self.task_batches.values())
        else:
            self.batches_per_epoch = sum(self.task_batches.values())
            self.p = np.array([probabilities[n] for n in self.names], dtype=np.float64)
        self._orders: dict[tuple[str, int], list[np.ndarray]] = {}
        self._counts: dict[int, np.ndarray] = {0: np.zeros(len(self.names), dtype=np.int64)}

    def draws(self, epoch: int) -> np.ndarray:
        """Task indices of the micro-batches of `epoch` (scheduled mode)."""
        rng = np.random.default_rng([self.seed, epoch, SCHEDULE_STREAM])
        return rng.choice(len(self.names), size=self.batches_per_epoch, p=self.p)

    def _batch(self, name: str, c: int) -> np.ndarray:
        """The task's c-th batch since the start of training."""
        n = self.task_batches[name]
        key = (name, c // n)
        if key not in self._orders:
            self._orders[key] = train_batches(self.data[name].lengths, self.batch_size, self.seed, c // n,
                                              self.group_by_length)
        return self._orders[key][c % n]

    def _counts_before(self, epoch: int) -> np.ndarray:
        """How many batches each task gave in the epochs before `epoch`."""
        start = max(e for e in self._counts if e <= epoch)
        for e in range(start, epoch):
            self._counts[e + 1] = self._counts[e] + np.bincount(self.draws(e), minlength=len(self.names))
        return self._counts[epoch]

    def epoch(self, epoch: int) -> list[dict[str, np.ndarray]]:
        if self.probabilities is None:
            first = epoch * self.batches_per_epoch
            return [{n: self._batch(n, first + b) for n in self.names} for b in range(self.batches_per_epoch)]
        counts = self._counts_before(epoch).copy()
        items = []
        for t in self.draws(epoch):
            name = self.names[t]
            items.append({name: self._batch(name, int(counts[t]))})
            counts[t] += 1
        return items

    def collate(self, item: dict, pad_id: int, pad_multiple: int = 1) -> dict[str, dict]:
        return {n: collate(self.data[n], idx, pad_id, pad_multiple) for n, idx in item.items()}

    def shard(self, item: dict, shard: Callable) -> tuple[dict, float]:
        parts = {n: shard(idx) for n, idx in item.items()}
        weight = sum(w * len(idx) for (_, w), idx in zip(parts.values(), item.values())) / self.samples(item)
        return {n: mine for n, (mine, _) in parts.items()}, weight

    def samples(self, item: dict) -> int:
        return sum(len(idx) for idx in item.values())

    def real_tokens(self, item: dict) -> int:
        return sum(int(self.data[n].lengths[idx].sum()) for n, idx in item.items())
