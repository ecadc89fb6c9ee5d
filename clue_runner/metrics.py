"""Metrics by name. Each takes gold labels and predictions (class ids, or similarity scores for
ranking metrics) and returns a float: in [0, 1], or [-1, 1] for correlations.

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


def compute_metrics(names: Sequence[str], gold, pred, num_labels: int, calibration=None) -> dict[str, float]:
    """Metrics by name. `calibration` = (gold, pred) of a validation split for metrics that fit
    something first (a decision threshold); without it they fit on the scored split itself."""
    if not isinstance(gold, list):  # lists hold structured gold (answer texts, entity sets) as they are
        gold, pred = np.asarray(gold), np.asarray(pred)
    calibration = calibration or (gold, pred)
    out = {}
    for name in names:
        fn = METRICS.get(name)
        out[name] = fn(gold, pred, num_labels, calibration) if getattr(fn, "calibrated", False) else fn(gold, pred, num_labels)
    return out


def _entity(key: str):
    def metric(gold: list, pred: list, num_labels: int) -> float:
        from .global_pointer import entity_prf

        return entity_prf([set(g) for g in gold], [set(p) for p in pred])[key]

    return metric


# Entity-level micro scores on exact (type, first char, last char) matches (CLUENER).
for _key in ("precision", "recall", "f1"):
    METRICS.register(f"entity_{_key}")(_entity(_key))

# Similarity metrics (spearman, pearson) and the CMRC2018 EM/F1 register themselves there.
from . import cmrc_eval, similarity  # noqa: E402, F401


def _at_searched_threshold(key: str):
    def metric(gold: np.ndarray, pred: np.ndarray, num_labels: int, calibration) -> float:
        cal_gold, cal_pred = calibration
        threshold = similarity.best_threshold(cal_pred, cal_gold)  # fitted on the validation split...
        return similarity.threshold_scores(pred, gold, threshold)[key]  # ...applied unchanged here

    metric.calibrated = True
    return metric


# Accuracy / F1 of `score > t`, t maximising accuracy on the validation split (data.threshold_split;
# without one, on the scored split itself: an oracle threshold).
METRICS.register("threshold_accuracy")(_at_searched_threshold("accuracy"))
METRICS.register("threshold_f1")(_at_searched_threshold("f1"))
