"""Sentence-matching building blocks: correlation metrics, threshold search, pair losses, whitening.

Pure functions over numpy arrays (evaluation) and torch tensors (training losses); nothing here
knows about models or data files.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn import metrics as skm

from .metrics import METRICS  # metrics.py imports this module at its end; METRICS exists by then

# Variances below this are numerical noise (e.g. fewer vectors than dimensions); clamping them
# damps those directions instead of dividing by ~0 and blowing noise up to unit variance.
WHITENING_EPS = 1e-12


def _undefined(gold: np.ndarray, scores: np.ndarray) -> bool:
    # A correlation needs two points and variation on both sides; scipy would return nan.
    return len(gold) < 2 or np.ptp(gold) == 0 or np.ptp(scores) == 0


@METRICS.register("spearman")
def spearman(gold, scores, num_labels: int | None = None) -> float:
    """Spearman rank correlation; 0.0 when undefined. num_labels: unused (metric registry signature)."""
    gold, scores = np.asarray(gold, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    return 0.0 if _undefined(gold, scores) else float(stats.spearmanr(gold, scores).statistic)


@METRICS.register("pearson")
def pearson(gold, scores, num_labels: int | None = None) -> float:
    """Pearson correlation; 0.0 when undefined. num_labels: unused (metric registry signature)."""
    gold, scores = np.asarray(gold, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    return 0.0 if _undefined(gold, scores) else float(stats.pearsonr(gold, scores).statistic)


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


def cosent_loss(cos: torch.Tensor, labels: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """CoSENT: log(1 + Σ_{label_i > label_j} exp(scale·(cos_j − cos_i))) over all pairs in the batch.

    Only the order of labels matters, so graded (STS-B 0–5) and binary labels both work.
    """
    diff = scale * (cos[None, :] - cos[:, None])  # [i, j] = scale·(cos_j − cos_i)
    keep = labels[:, None] > labels[None, :]
    terms = diff.masked_fill(~keep, float("-inf")).flatten()
    # The prepended 0 is the "1 +": it keeps logsumexp finite when no pair qualifies.
    return torch.logsumexp(torch.cat([terms.new_zeros(1), terms]), dim=0)


def sbert_features(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(u, v, |u − v|): the Sentence-BERT input to its softmax classifier."""
    return torch.cat([u, v, (u - v).abs()], dim=-1)


def in_batch_contrastive_loss(u: torch.Tensor, v: torch.Tensor, temperature: float = 0.05,
                              valid: torch.Tensor | None = None, anchors: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE over cosine similarities: v[i] is u[i]'s positive, every other v[j] a negative.

    `valid` drops columns (filler rows are no negatives); `anchors` chooses the rows that count
    (positive pairs). Masks, not indexing: no data-dependent shapes, so it can be graph-captured.
    """
    sim = F.normalize(u, dim=-1) @ F.normalize(v, dim=-1).T / temperature
    if valid is not None:
        sim = sim.masked_fill(~valid.unsqueeze(0), float("-inf"))
    per_row = F.cross_entropy(sim, torch.arange(len(u), device=u.device), reduction="none")
    if anchors is None:
        return per_row.mean()
    weights = anchors.to(per_row.dtype)
    return (per_row.nan_to_num() * weights).sum() / weights.sum().clamp_min(1)


def fit_whitening(vectors: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """BERT-whitening: (kernel, bias) such that (x + bias) @ kernel has zero mean and identity covariance.

    bias = −mean (as in Su's reference code); kernel = U·diag(1/√S) from the SVD of the covariance,
    keeping only the k top components when k is given (dimension reduction).
    """
    x = np.asarray(vectors, dtype=np.float64)
    if k is not None and not 1 <= k <= x.shape[1]:
        raise ValueError(f"k must be between 1 and {x.shape[1]}, got {k}")
    mu = x.mean(axis=0)
    u, s, _ = np.linalg.svd(np.cov(x.T))  # singular values come sorted, largest first
    kernel = u / np.sqrt(np.maximum(s, WHITENING_EPS))
    return kernel[:, :k], -mu


def apply_whitening(vectors: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(x − mean) @ kernel, computed in float64 and returned as float32."""
    return ((np.asarray(vectors, dtype=np.float64) + bias) @ kernel).astype(np.float32)


def cosine_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of a[i] and b[i] for each row i (0 where a vector is all zeros)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(norms, np.finfo(np.float64).tiny)
