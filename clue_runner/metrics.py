"""Metrics by name. Each takes gold and predicted label indices and returns a float in [0, 1].

Backed by scikit-learn, with the label set passed explicitly so that classes missing
from a small dev split still count in macro averages.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from sklearn import metrics as skm

from .registry import Registry

Metric = Callable[[np.ndarray, np.ndarray, int], float]
METRICS: Registry[Metric] = Registry("metric")


@METRICS.register("accuracy")
def accuracy(gold: np.ndarray, pred: np.ndarray, num_labels: int) -> float:
    return float(skm.accuracy_score(gold, pred))


@METRICS.register("macro_f1")
def macro_f1(gold: np.ndarray, pred: np.ndarray, num_labels: int) -> float:
    return float(skm.f1_score(gold, pred, labels=list(range(num_labels)), average="macro", zero_division=0))


@METRICS.register("binary_f1")
def binary_f1(gold: np.ndarray, pred: np.ndarray, num_labels: int) -> float:
    """F1 of the label at index 1 (the positive class of "0"/"1" tasks)."""
    return float(skm.f1_score(gold, pred, labels=[1], average="macro", zero_division=0))


def compute_metrics(names: Sequence[str], gold, pred, num_labels: int) -> dict[str, float]:
    gold, pred = np.asarray(gold), np.asarray(pred)
    return {name: METRICS.get(name)(gold, pred, num_labels) for name in names}


# Similarity metrics (spearman, pearson) register themselves there.
from . import similarity  # noqa: E402


@METRICS.register("threshold_accuracy")
def threshold_accuracy(gold: np.ndarray, pred: np.ndarray, num_labels: int) -> float:
    """Accuracy of `score > t` with t searched on these same scores (when no separate
    validation split is configured, this is the oracle threshold of the evaluated split)."""
    return similarity.threshold_scores(pred, gold, similarity.best_threshold(pred, gold))["accuracy"]


@METRICS.register("threshold_f1")
def threshold_f1(gold: np.ndarray, pred: np.ndarray, num_labels: int) -> float:
    return similarity.threshold_scores(pred, gold, similarity.best_threshold(pred, gold))["f1"]
