"""Similarity metrics, threshold search, pair losses and whitening against direct implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn import metrics as skm

from clue_runner.metrics import METRICS, compute_metrics
from clue_runner.heads.layers.losses import cosent_loss, in_batch_contrastive_loss, sbert_features
from clue_runner.heads.layers.whitening import apply_whitening, cosine_scores, fit_whitening
from clue_runner.metrics.similarity import best_threshold, pearson, spearman, threshold_scores


def test_correlations_match_scipy_and_are_registered():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 6, size=200).astype(float)
    scores = gold + rng.normal(scale=2.0, size=200)
    assert spearman(gold, scores) == pytest.approx(stats.spearmanr(gold, scores).statistic)
    assert pearson(gold, scores) == pytest.approx(stats.pearsonr(gold, scores).statistic)
    got = compute_metrics(["spearman", "pearson"], gold, scores, num_labels=0)
    assert got == {"spearman": spearman(gold, scores), "pearson": pearson(gold, scores)}
    assert "spearman" in METRICS and "pearson" in METRICS


@pytest.mark.filterwarnings("error")  # no ConstantInputWarning either
def test_correlations_of_constant_input_are_nan_as_in_scipy():
    import math
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(stats.spearmanr([1, 2, 3], [0.5, 0.5, 0.5]).statistic)  # the reference
    assert math.isnan(spearman([1, 2, 3], [0.5, 0.5, 0.5]))
    assert math.isnan(pearson([2, 2, 2], [0.1, 0.2, 0.3]))
    assert math.isnan(spearman([1], [0.3]))


def test_a_nan_evaluation_never_becomes_the_best():
    from clue_runner.engine.trainer import _better

    nan = float("nan")
    assert not _better(nan, 0.1) and _better(0.1, nan) and _better(0.2, 0.1) and not _better(nan, nan)


def test_reports_show_an_undefined_score_as_null_in_json():
    from clue_runner.report import _round

    assert _round(float("nan")) is None and _round([0.5, float("nan")]) == [0.5, None]


def test_whitening_equals_sklearn_pca_whiten():
    from sklearn.decomposition import PCA

    from clue_runner.heads.layers.whitening import apply_whitening, fit_whitening

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12))  # correlated dimensions
    for k in (None, 5):
        kernel, bias = fit_whitening(x, k)
        ours = apply_whitening(x, kernel, bias).astype(np.float64)
        ref = PCA(n_components=k, whiten=True, svd_solver="full").fit_transform(x)
        signs = np.sign(np.sum(ours * ref, axis=0))  # components are defined up to sign
        np.testing.assert_allclose(ours * signs, ref, atol=1e-4)


def test_rank_deficient_covariance_is_warned_about():
    from clue_runner.heads.layers.whitening import fit_whitening

    x = np.random.default_rng(0).normal(size=(5, 16))  # 5 sentences, 16 dimensions: rank 4
    with pytest.warns(UserWarning, match="rank 4 of 16"):
        fit_whitening(x)
    with pytest.warns(UserWarning, match="rank 4 of 16"):
        fit_whitening(x, 8)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_whitening(x, 4)  # within the rank: nothing to warn about


@pytest.mark.parametrize(
    "scores, labels, expected",
    [
        ([0.2, 0.3, 0.7, 0.9], [0, 0, 1, 1], 0.5),  # separable: the gap's midpoint
        ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.225),  # 0.225 and 0.6 both give 3/4: smallest wins
        ([0.5, 0.5, 0.5], [1, 1, 0], -0.5),  # one distinct score: "all positive" is min - 1
        ([0.5, 0.5, 0.5], [0, 0, 1], 1.5),  # ... and "all negative" is max + 1
    ],
)
def test_best_threshold_on_known_cases(scores, labels, expected):
    assert best_threshold(scores, labels) == pytest.approx(expected)


def _brute_force(scores, labels):
    values = np.unique(scores)
    candidates = np.concatenate([[values[0] - 1], (values[:-1] + values[1:]) / 2, [values[-1] + 1]])
    accuracies = [np.mean((scores > t) == labels) for t in candidates]
    return candidates[int(np.argmax(accuracies))], max(accuracies)


@pytest.mark.parametrize("seed", range(5))
def test_best_threshold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=300)
    scores = np.round(labels * 0.3 + rng.normal(scale=0.4, size=300), 2)  # rounding makes ties
    threshold = best_threshold(scores, labels)
    expected_threshold, expected_accuracy = _brute_force(scores, labels)
    assert np.mean((scores > threshold) == labels) == pytest.approx(expected_accuracy)
    assert threshold == pytest.approx(expected_threshold)


def test_best_threshold_rejects_non_binary_labels():
    with pytest.raises(ValueError, match="0 or 1"):
        best_threshold([0.1, 0.2], [0, 2])


def test_threshold_scores_match_sklearn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=100)
    scores = labels * 0.5 + rng.normal(size=100)
    pred = (scores > 0.3).astype(int)
    got = threshold_scores(scores, labels, 0.3)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert got["f1"] == pytest.approx(skm.f1_score(labels, pred))
    assert threshold_scores([0.1, 0.2], [0, 0], 0.5) == {"accuracy": 1.0, "f1": 0.0}


def _cosent_direct(cos, labels, scale):
    total = 1.0
    for i in range(len(cos)):
        for j in range(len(cos)):
            if labels[i] > labels[j]:
                total += math.exp(scale * (cos[j] - cos[i]))
    return math.log(total)


@pytest.mark.parametrize(
    "cos, labels",
    [
        ([0.9, 0.1, 0.5, -0.3, 0.7, 0.2], [5.0, 0.0, 3.0, 1.2, 3.0, 4.0]),  # graded, with a tie
        ([0.8, 0.6, 0.75, 0.2, 0.9], [1, 0, 0, 0, 1]),  # binary
        ([0.3, 0.4], [1, 1]),  # no ordered pair: log(1) = 0
    ],
)
def test_cosent_loss_matches_its_formula(cos, labels):
    for scale in (20.0, 1.0):
        got = cosent_loss(torch.tensor(cos, dtype=torch.float64), torch.tensor(labels), scale=scale)
        assert got.item() == pytest.approx(_cosent_direct(cos, labels, scale), rel=1e-12, abs=1e-12)


def test_cosent_loss_is_differentiable():
    cos = torch.tensor([0.9, 0.1, 0.5, -0.3], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([2.0, 0.0, 2.0, 1.0])  # masked pairs (ties, diagonal) must not give nan
    assert torch.autograd.gradcheck(lambda c: cosent_loss(c, labels), (cos,))
    cosent_loss(cos, labels).backward()
    assert torch.isfinite(cos.grad).all() and cos.grad.abs().sum() > 0


def test_sbert_features():
    u, v = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 1.0]])
    assert sbert_features(u, v).tolist() == [[1.0, -2.0, 3.0, 1.0, 2.0, 3.0]]


def test_in_batch_contrastive_loss_matches_cross_entropy():
    torch.manual_seed(0)
    u, v = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    t = 0.05
    losses = []
    for i in range(5):
        logits = torch.stack([F.cosine_similarity(u[i], v[j], dim=0) / t for j in range(5)])
        losses.append(-(logits[i] - torch.logsumexp(logits, dim=0)))
    expected = torch.stack(losses).mean()
    assert in_batch_contrastive_loss(u, v, temperature=t).item() == pytest.approx(expected.item(), rel=1e-10)


def _correlated(n=500, d=6, seed=0):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * np.linspace(3.0, 0.5, d)[:, None]  # distinct variances
    return rng.normal(size=(n, d)) @ mixing + rng.normal(size=d) * 4


def test_whitening_gives_zero_mean_identity_covariance():
    x = _correlated()
    kernel, bias = fit_whitening(x)
    exact = (x + bias) @ kernel  # float64 algebra
    assert np.allclose(exact.mean(axis=0), 0, atol=1e-6)
    assert np.allclose(np.cov(exact.T), np.eye(6), atol=1e-6)
    out = apply_whitening(x, kernel, bias)
    assert out.dtype == np.float32
    assert np.allclose(out.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(np.cov(out.astype(np.float64).T), np.eye(6), atol=1e-4)


def test_whitening_with_k_keeps_top_components():
    x = _correlated()
    kernel, bias = fit_whitening(x, k=3)
    assert kernel.shape == (6, 3)
    out = apply_whitening(x, kernel, bias).astype(np.float64)
    assert np.allclose(np.cov(out.T), np.eye(3), atol=1e-4)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(x.T))
    top = eigenvectors[:, np.argsort(eigenvalues)[::-1][:3]]
    directions = kernel / np.linalg.norm(kernel, axis=0)
    assert np.allclose(np.abs(directions.T @ top), np.eye(3), atol=1e-8)  # same vectors up to sign


def test_whitening_survives_fewer_vectors_than_dimensions():
    x = _correlated(n=4, d=6)  # covariance of rank 3: three singular values are ~0
    out = apply_whitening(x, *fit_whitening(x))
    assert np.isfinite(out).all()
    assert np.allclose(np.cov(out[:, :3].astype(np.float64).T), np.eye(3), atol=1e-4)
    with pytest.raises(ValueError, match="k must be"):
        fit_whitening(x, k=7)


def test_cosine_scores_row_wise():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    expected = [a[i] @ b[i] / (np.linalg.norm(a[i]) * np.linalg.norm(b[i])) for i in range(4)]
    assert np.allclose(cosine_scores(a, b), expected)
    assert cosine_scores(np.zeros((1, 3)), np.ones((1, 3))).tolist() == [0.0]
