"""BERT-whitening (Su et al. 2021) and cosine scores of paired vectors."""

from __future__ import annotations

import warnings

import numpy as np

# Variances below this are numerical noise (e.g. fewer vectors than dimensions); clamping them
# damps those directions instead of dividing by ~0 and blowing noise up to unit variance.
WHITENING_EPS = 1e-12


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
    rank = int(np.sum(s > max(s[0], WHITENING_EPS) * 1e-10))
    if rank < (k or x.shape[1]):
        # Fewer independent sentences than dimensions: the extra directions are noise, so whitening
        # to more than `rank` dimensions gives nothing the rank-k result does not.
        warnings.warn(f"whitening: the covariance of {x.shape[0]} vectors has rank {rank} of {x.shape[1]} "
                      f"dimensions; whitening_dim {k or x.shape[1]} keeps {(k or x.shape[1]) - rank} noise "
                      f"direction(s) (set whitening_dim <= {rank} or fit on more sentences)", UserWarning, stacklevel=2)
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
