import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from clue_runner.metrics import compute_metrics


def test_hand_worked_example():
    gold = [0, 0, 1, 1, 2, 2]
    pred = [0, 1, 1, 1, 2, 0]
    m = compute_metrics(["accuracy", "macro_f1"], gold, pred, 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # per class F1: c0 p=1/2 r=1/2 → 1/2; c1 p=2/3 r=1 → 4/5; c2 p=1 r=1/2 → 2/3
    assert m["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)


@pytest.mark.parametrize("seed", range(5))
def test_equal_to_sklearn_on_random_fixtures(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 8))
    gold, pred = rng.integers(0, k, 200), rng.integers(0, k, 200)
    m = compute_metrics(["accuracy", "macro_f1", "binary_f1"], gold, pred, k)
    assert m["accuracy"] == pytest.approx(accuracy_score(gold, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro", labels=list(range(k))))
    assert m["binary_f1"] == pytest.approx(f1_score(gold == 1, pred == 1))


def test_macro_f1_counts_classes_absent_from_the_split():
    # Class 2 never occurs: with the full label set it scores 0 and pulls the macro average down.
    m = compute_metrics(["macro_f1"], [0, 1], [0, 1], 3)
    assert m["macro_f1"] == pytest.approx(2 / 3)
