"""Classification metrics, backed by scikit-learn, with the label set passed explicitly so that
classes missing from a small dev split still count in macro averages."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def accuracy(gold: np.ndarray, pred: np.ndarray, num_labels: int) -> float:
    return float(skm.accuracy_score(gold, pred))


def macro_f1(gold: np.ndarray, pred: np.ndarray, num_labels: int) -> float:
    return float(skm.f1_score(gold, pred, labels=list(range(num_labels)), average="macro", zero_division=0))


def binary_f1(gold: np.ndarray, pred: np.ndarray, num_labels: int) -> float:
    """F1 of the label at index 1 (the positive class of "0"/"1" tasks)."""
    return float(skm.f1_score(gold, pred, labels=[1], average="macro", zero_division=0))
