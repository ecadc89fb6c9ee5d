"""Sentence-matching metrics: correlations of similarity scores, and accuracy / F1 at a searched threshold.

Pure functions over numpy arrays; nothing here knows about models or data files.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn import metrics as skm

def _undefined(gold: np.ndarray, scores: np.ndarray) -> bool:
    # A correlation needs two points and variation on both sides; otherwise it is NaN, as in scipy.
    return len(gold) < 2 or np.ptp(gold) == 0 or np.ptp(scores) == 0


def spearman(gold, scores, num_labels: int | None = None) -> float:
    """Spearman rank correlation; NaN when undefined (a constant prediction). num_labels: unused (metric registry signature)."""
    gold, scores = np.asarray(gold, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    return float("nan") if _undefined(gold, scores) else float(stats.spearmanr(gold, scores).statistic)


def pearson(gold, scores, num_labels: int | None = None) -> float:
    """Pearson correlation; NaN when undefined (a constant prediction). num_labels: unused (metric registry signature)."""
    gold, scores = np.asarray(gold, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    return float("nan") if _undefined(gold, scores) else float(stats.pearsonr(gold, scores).statistic)


def best_threshold(scores, labels) -> float:
    """The threshold t maximising the accuracy of `scores > t` against 0/1 labels.

    Candidates: min(scores) - 1, every midpoint between consecutive distinct scores, and
    max(scores) + 1 (finite stand-ins for "all positive" / "all negative", so they serialise).
    Ties go to the smallest such threshold. O(n log n): one sort, then cumulative counts.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.size == 0 or scores.shape != labels.shape:
        raise ValueError(f"need equally long non-empty scores and labels, got {scores.shape} and {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    values, group = np.unique(scores, return_inverse=True)  # sorted distinct scores
    pos = np.bincount(group, weights=labels, minlength=len(values))
    neg = np.bincount(group, minlength=len(values)) - pos
    # Candidate i puts the i lowest distinct values on the negative side (i = 0 .. len(values)).
    cum_neg = np.concatenate([[0.0], np.cumsum(neg)])
    cum_pos = np.concatenate([[0.0], np.cumsum(pos)])
    correct = cum_neg + (cum_pos[-1] - cum_pos)
    candidates = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])
    return float(candidates[np.argmax(correct)])  # argmax takes the first maximum: smallest threshold


def threshold_scores(scores, labels, threshold: float) -> dict[str, float]:
    """Accuracy and F1 (positive class 1) of `scores > threshold`."""
    pred = (np.asarray(scores) > threshold).astype(int)
    labels = np.asarray(labels).astype(int)
    return {
        "accuracy": float(skm.accuracy_score(labels, pred)),
        "f1": float(skm.f1_score(labels, pred, labels=[1], average="macro", zero_division=0)),
    }


def _at_searched_threshold(key: str):
    def metric(gold: np.ndarray, pred: np.ndarray, num_labels: int, calibration) -> float:
        cal_gold, cal_pred = calibration
        threshold = best_threshold(cal_pred, cal_gold)  # fitted on the validation split...
        return threshold_scores(pred, gold, threshold)[key]  # ...applied unchanged here

    metric.calibrated = True
    metric.__name__ = f"threshold_{key}"
    return metric


# Accuracy / F1 of `score > t`, t maximising accuracy on the validation split (data.threshold_split;
# without one, on the scored split itself: an oracle threshold).
threshold_accuracy = _at_searched_threshold("accuracy")
threshold_f1 = _at_searched_threshold("f1")
