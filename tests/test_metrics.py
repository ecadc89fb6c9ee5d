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


def _score_py_reference(pre_lines, gold_lines, labels):
    """The CLUENER2020 repository's score.py (get_f1_score_label / get_f1_score), verbatim but for
    the ZeroDivisionError on a label without predictions (scored 0 there)."""
    total = 0
    for label in labels:
        TP = FP = FN = 0
        for pre, gold in zip(pre_lines, gold_lines):
            pre = pre["label"].get(label, {}).keys()
            gold = gold["label"].get(label, {}).keys()
            for i in pre:
                if i in gold:
                    TP += 1
                else:
                    FP += 1
            for i in gold:
                if i not in pre:
                    FN += 1
        p = TP / (TP + FP) if TP + FP else 0
        r = TP / (TP + FN) if TP + FN else 0
        total += 2 * p * r / (p + r) if p + r else 0
    return total / len(labels)


def test_cluener_macro_f1_equals_the_leaderboard_score_py():
    import random

    from clue_runner.metrics.entity import EntitySpan, entity_prf, surface_macro_f1

    rng = random.Random(1)
    labels = ["address", "book", "name"]
    text = "北京王小明在上海读红楼梦和北京日报"
    gold, pred, gold_lines, pre_lines = [], [], [], []
    for _ in range(40):
        spans = []
        for _ in range(rng.randrange(4)):
            s = rng.randrange(len(text) - 2)
            spans.append((rng.choice(labels), s, s + rng.randrange(3)))
        g = {EntitySpan(k, s, e, text[s:e + 1]) for k, s, e in spans}
        p = {EntitySpan(k, s + rng.choice([0, 0, 1]), e, text[s:e + 1]) for k, s, e in spans if rng.random() < 0.7}
        gold.append(g)
        pred.append(p)
        as_line = lambda spans: {"label": {k: {sp.text: [[sp[1], sp[2]]] for sp in spans if sp[0] == k}
                                           for k in labels if any(sp[0] == k for sp in spans)}}
        gold_lines.append(as_line(g))
        pre_lines.append(as_line(p))
    assert surface_macro_f1(gold, pred) == pytest.approx(_score_py_reference(pre_lines, gold_lines, labels))
    assert surface_macro_f1(gold, pred) != pytest.approx(entity_prf(gold, pred)["f1"])  # a different number
    no_book = [{s for s in p if s[0] != "book"} for p in pred]  # score.py: ZeroDivisionError here
    assert surface_macro_f1(gold, no_book) == pytest.approx(_score_py_reference(
        [{"label": {k: v for k, v in l["label"].items() if k != "book"}} for l in pre_lines], gold_lines, labels))


def test_tasks_show_names_the_published_metric():
    from typer.testing import CliRunner

    from clue_runner.cli import app

    res = CliRunner().invoke(app, ["tasks", "show", "cluener"])
    assert res.exit_code == 0 and "published_metric: cluener_macro_f1" in res.stdout
