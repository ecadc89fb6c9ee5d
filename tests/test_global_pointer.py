"""GlobalPointer: loss against a direct formula, RoPE relativity, masking, learning, decoding and the span metric."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch

from clue_runner.metrics.entity import entity_prf
from clue_runner.heads.layers.global_pointer import (
    MASK_VALUE,
    GlobalPointer,
    apply_rope,
    decode_spans,
    global_pointer_loss,
    multilabel_categorical_crossentropy,
    rope_position_table,
)


def _direct_loss(scores: torch.Tensor, targets: torch.Tensor) -> list[float]:
    rows = []
    for s_row, t_row in zip(scores.tolist(), targets.tolist()):
        neg = sum(math.exp(s) for s, t in zip(s_row, t_row) if not t)
        pos = sum(math.exp(-s) for s, t in zip(s_row, t_row) if t)
        rows.append(math.log(1 + neg) + math.log(1 + pos))
    return rows


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_multilabel_loss_matches_direct_formula(dtype, rtol):
    g = torch.Generator().manual_seed(0)
    scores = (torch.randn(6, 15, generator=g, dtype=torch.float64) * 3).to(dtype)
    targets = torch.rand(6, 15, generator=g) < 0.3
    targets[0], targets[1] = False, True  # a row without positives and one without negatives
    loss = multilabel_categorical_crossentropy(scores, targets)
    assert loss.shape == (6,) and loss.dtype == dtype
    expected = torch.tensor(_direct_loss(scores.double(), targets), dtype=torch.float64)
    torch.testing.assert_close(loss.double(), expected, rtol=rtol, atol=rtol)
    # 0/1 float targets mean the same as bool ones.
    torch.testing.assert_close(multilabel_categorical_crossentropy(scores, targets.float()), loss)


def test_multilabel_loss_goes_to_zero_with_the_margin():
    g = torch.Generator().manual_seed(1)
    targets = torch.rand(4, 20, generator=g) < 0.25
    sign = targets.double() * 2 - 1
    losses = [multilabel_categorical_crossentropy(sign * margin, targets).sum().item() for margin in (0, 1, 5, 10, 30)]
    assert all(a > b for a, b in itertools.pairwise(losses))
    assert losses[-1] < 1e-8


def test_multilabel_loss_stays_finite_on_masked_targets_and_infinities():
    inf = float("inf")
    scores = torch.tensor([[2.0, MASK_VALUE, -1.0], [-inf, 1.0, -3.0], [-inf, inf, 0.0]], requires_grad=True)
    targets = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 0]])
    loss = multilabel_categorical_crossentropy(scores, targets)
    assert torch.isfinite(loss).all()
    assert loss[0].item() == pytest.approx(-MASK_VALUE, rel=1e-6)  # the wrongly targeted masked cell shows
    assert loss[2].item() == pytest.approx(-2 * MASK_VALUE, rel=1e-6)  # infinities count as +-|MASK_VALUE|
    # -inf is read as a masked cell: the row equals one where it is MASK_VALUE.
    assert loss[1].item() == pytest.approx(_direct_loss(torch.tensor([[MASK_VALUE, 1.0, -3.0]]), targets[1:])[0])
    loss.sum().backward()
    assert torch.isfinite(scores.grad).all()


def test_rope_table_uses_interleaved_pairs():
    cos, sin = rope_position_table(7, 8, dtype=torch.float64)
    for p in range(7):
        for m in range(4):
            angle = p * 10000 ** (-2 * m / 8)
            assert cos[p, 2 * m] == cos[p, 2 * m + 1] == pytest.approx(math.cos(angle))
            assert sin[p, 2 * m] == sin[p, 2 * m + 1] == pytest.approx(math.sin(angle))
    with pytest.raises(ValueError):
        rope_position_table(4, 5)


def test_rope_dot_product_depends_only_on_relative_position():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 16, generator=g, dtype=torch.float64)
    cos, sin = rope_position_table(128, 16, dtype=torch.float64)

    def dot(i: int, j: int) -> float:
        return (apply_rope(q, cos[i], sin[i]) @ apply_rope(k, cos[j], sin[j])).item()

    for i, j, shift in [(3, 10, 7), (20, 5, 30), (0, 0, 50), (9, 60, 60)]:
        assert abs(dot(i, j) - dot(i + shift, j + shift)) < 1e-5
    assert abs(dot(0, 1) - dot(0, 5)) > 1e-3  # yet it does see the offset
    assert apply_rope(q, cos[17], sin[17]).norm().item() == pytest.approx(q.norm().item())  # a rotation


@pytest.mark.parametrize("efficient", [False, True])
def test_scores_see_relative_positions_only(efficient):
    # Shifting the same token states right by 3 shifts the score matrix by 3 along both axes.
    torch.manual_seed(3)
    model = GlobalPointer(12, 2, head_size=8, efficient=efficient)
    hidden = torch.randn(1, 6, 12)
    shifted = torch.cat([torch.randn(1, 3, 12), hidden], dim=1)
    with torch.no_grad():
        scores = model(hidden, torch.ones(1, 6))
        moved = model(shifted, torch.ones(1, 9))[:, :, 3:, 3:]
    torch.testing.assert_close(moved, scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("efficient", [False, True])
def test_scores_match_the_formula_cell_by_cell(efficient):
    # s_t(i, j) = <R_i q_t(h_i), R_j k_t(h_j)> / sqrt(D), plus (start_t(i) + end_t(j)) / 2 when efficient.
    torch.manual_seed(8)
    types, size, length = 2, 4, 5
    model = GlobalPointer(6, types, head_size=size, efficient=efficient)
    hidden = torch.randn(1, length, 6)
    with torch.no_grad():
        scores = model(hidden, torch.ones(1, length))
        proj = model.qk(hidden)[0]
        bias = model.type_bias(proj) if efficient else None
        cos, sin = rope_position_table(length, size)
        for t in range(types):
            block = proj if efficient else proj[:, 2 * size * t:2 * size * (t + 1)]
            q, k = block[:, :size], block[:, size:]
            for i in range(length):
                for j in range(i, length):
                    expected = apply_rope(q[i], cos[i], sin[i]) @ apply_rope(k[j], cos[j], sin[j]) / math.sqrt(size)
                    if bias is not None:
                        expected = expected + (bias[i, 2 * t] + bias[j, 2 * t + 1]) / 2
                    assert scores[0, t, i, j].item() == pytest.approx(expected.item(), abs=1e-5)


@pytest.mark.parametrize("efficient", [False, True])
@pytest.mark.parametrize("rope", [False, True])
def test_scores_mask_padding_and_lower_triangle(efficient, rope):
    torch.manual_seed(4)
    model = GlobalPointer(10, 3, head_size=4, rope=rope, efficient=efficient)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    scores = model(torch.randn(2, 6, 10), mask)
    assert scores.shape == (2, 3, 6, 6) and scores.dtype == torch.float32
    i, j = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    real = mask.bool()
    expected_masked = (j < i) | ~real[:, None, :, None] | ~real[:, None, None, :]
    expected_masked = expected_masked.expand_as(scores)
    assert (scores[expected_masked] == MASK_VALUE).all()
    assert torch.isfinite(scores).all() and (scores[~expected_masked].abs() < 1e3).all()


@pytest.mark.parametrize("efficient", [False, True])
def test_scores_stay_float32_under_bf16_autocast(efficient):
    torch.manual_seed(5)
    model = GlobalPointer(16, 2, head_size=8, efficient=efficient)
    mask = torch.tensor([[1, 1, 1, 0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = model(torch.randn(1, 4, 16), mask)
    assert scores.dtype == torch.float32
    assert scores[0, :, 1, 0].eq(MASK_VALUE).all() and scores[0, :, 0, 3].eq(MASK_VALUE).all()
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("efficient", [False, True])
def test_learns_a_fixed_set_of_nested_spans(efficient):
    torch.manual_seed(6)
    types, length, hidden_size = 3, 10, 32
    hidden = torch.randn(2, length, hidden_size)
    mask = torch.ones(2, length)
    mask[1, 7:] = 0
    # Nested, overlapping and one span with two types; the second example is padded after 7 tokens.
    gold = [{(0, 1, 3), (1, 2, 2), (0, 5, 8), (2, 1, 3), (1, 0, 9)}, {(1, 0, 6), (2, 4, 4)}]
    targets = torch.zeros(2, types, length, length)
    for b, spans in enumerate(gold):
        for t, start, end in spans:
            targets[b, t, start, end] = 1
    model = GlobalPointer(hidden_size, types, head_size=16, efficient=efficient)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        optimizer.zero_grad()
        loss = global_pointer_loss(model(hidden, mask), targets)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert decode_spans(model(hidden, mask)) == gold
    assert loss.item() < 0.1


def test_decode_spans_nested_threshold_and_flat():
    scores = np.full((2, 2, 5, 5), -10.0)
    scores[0, 0, 0, 3] = 5.0  # tokens 0..3
    scores[0, 0, 1, 2] = 3.0  # nested inside 0..3
    scores[0, 1, 1, 2] = 4.0  # the same tokens as another type
    scores[0, 0, 3, 4] = 2.0  # overlaps 0..3 at token 3
    scores[0, 1, 4, 4] = 0.5  # free token
    scores[0, 0, 3, 1] = 9.0  # lower triangle: never a span
    all_spans = {(0, 0, 3), (0, 1, 2), (1, 1, 2), (0, 3, 4), (1, 4, 4)}
    assert decode_spans(scores) == [all_spans, set()]
    assert decode_spans(torch.from_numpy(scores)) == [all_spans, set()]
    assert decode_spans(scores, threshold=1.0)[0] == all_spans - {(1, 4, 4)}
    assert decode_spans(scores, threshold=3.0)[0] == {(0, 0, 3), (1, 1, 2)}  # strictly above
    # Greedy by score: 0..3 (5.0) blocks the 4.0, 3.0 and 2.0 spans; the 0.5 one at token 4 is free.
    assert decode_spans(scores, flat=True) == [{(0, 0, 3), (1, 4, 4)}, set()]
    assert decode_spans(scores, threshold=4.5, flat=True)[0] == {(0, 0, 3)}
    # Without 0..3, the nested span outranks its overlapping neighbour and both can be kept.
    scores[0, 0, 0, 3] = -10.0
    assert decode_spans(scores, flat=True)[0] == {(1, 1, 2), (0, 3, 4)}


def test_entity_prf_hand_worked():
    gold = [
        {("LOC", 0, 5), ("ORG", 0, 2), ("PER", 7, 8)},  # ORG nested in LOC
        {("PER", 1, 1)},
        set(),
        {("LOC", 2, 3)},
    ]
    pred = [
        {("LOC", 0, 5), ("ORG", 0, 2), ("LOC", 7, 8)},  # 2 hits; 7..8 has the wrong type
        {("PER", 1, 1), ("PER", 1, 3)},  # 1 hit
        {("ORG", 4, 6)},
        set(),
    ]
    # hits 3, predicted 6, gold 5: P = 3/6, R = 3/5, F1 = 2 * 1/2 * 3/5 / (1/2 + 3/5) = 6/11
    m = entity_prf(gold, pred)
    assert m["precision"] == pytest.approx(1 / 2)
    assert m["recall"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(6 / 11)


@pytest.mark.parametrize("seed", range(5))
def test_entity_prf_agrees_with_brute_force_count(seed):
    rng = random.Random(seed)

    def spans() -> set[tuple]:
        return {(rng.randrange(3), s, s + rng.randrange(3)) for s in rng.sample(range(12), rng.randrange(6))}

    gold = [spans() for _ in range(20)]
    pred = [spans() for _ in range(20)]
    hits = sum(1 for g, p in zip(gold, pred) for a in g for b in p if a == b)
    n_gold, n_pred = sum(map(len, gold)), sum(map(len, pred))
    m = entity_prf(gold, pred)
    assert m["precision"] == pytest.approx(hits / n_pred)
    assert m["recall"] == pytest.approx(hits / n_gold)
    assert m["f1"] == pytest.approx(2 * hits / (n_gold + n_pred))


def test_entity_prf_zero_division_and_length_check():
    zeros = {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert entity_prf([], []) == zeros
    assert entity_prf([set(), set()], [set(), set()]) == zeros
    assert entity_prf([{(0, 1, 1)}], [set()]) == zeros
    assert entity_prf([set()], [{(0, 1, 1)}]) == zeros
    with pytest.raises(ValueError):
        entity_prf([set()], [])


def test_global_pointer_loss_ignores_invalid_rows():
    g = torch.Generator().manual_seed(7)
    scores = torch.randn(3, 2, 5, 5, generator=g)
    targets = (torch.rand(3, 2, 5, 5, generator=g) < 0.2).float()
    row_valid = torch.tensor([True, False, True])
    loss = global_pointer_loss(scores, targets, row_valid)
    # The mean over the (example, type) rows of the valid examples only.
    per_row = multilabel_categorical_crossentropy(scores[[0, 2]].flatten(2), targets[[0, 2]].flatten(2))
    torch.testing.assert_close(loss, per_row.mean())
    torch.testing.assert_close(global_pointer_loss(scores, targets), multilabel_categorical_crossentropy(
        scores.flatten(2), targets.flatten(2)).mean())

    garbage = scores.clone()
    garbage[1] = torch.randn(2, 5, 5, generator=g) * 100
    garbage[1, 0, 0, 0] = float("nan")
    garbage.requires_grad_(True)
    other_targets = targets.clone()
    other_targets[1] = 1 - other_targets[1]
    changed = global_pointer_loss(garbage, other_targets, row_valid)
    assert changed.item() == loss.item()
    changed.backward()
    assert torch.isfinite(garbage.grad).all() and (garbage.grad[1] == 0).all()

    assert global_pointer_loss(scores, targets, torch.zeros(3, dtype=torch.bool)).item() == 0.0
