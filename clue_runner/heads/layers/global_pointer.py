"""GlobalPointer span scoring for (nested) named-entity recognition, its loss and decoding.

GlobalPointer (https://kexue.fm/archives/8373) scores every (start, end) token pair per entity type
with a dot product of start and end projections, so nested and overlapping entities need no tagging
scheme. RoPE on the projections makes the score depend on the relative offset end - start. The
efficient variant (https://kexue.fm/archives/8877) shares one start/end projection across types and
adds a cheap per-type bias, which cuts the head's parameters from types x 2 x head_size x hidden to
2 x head_size x hidden. Training uses the multi-label softmax cross-entropy of
https://kexue.fm/archives/7359 over all L*L cells of one type, which copes with the heavy class
imbalance (a handful of positives among thousands of cells) without thresholds or weights.

Conventions: spans are (type, start, end) with `end` inclusive; scores[b, t, i, j] scores tokens
i..j; padding cells and the lower triangle (j < i) hold MASK_VALUE (-1e12, always in float32);
RoPE rotates interleaved pairs of dimensions (2m, 2m + 1), as bert4keras and RoFormer do.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

MASK_VALUE = -1e12  # finite, so no inf - inf or 0 * inf NaNs downstream; its exp() is exactly 0 in float32


def rope_position_table(seq_len: int, dim: int, device: torch.device | None = None,
                        dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [seq_len, dim] for RoPE: position p turns the pair (2m, 2m + 1) by p * theta_m,
    theta_m = 10000^(-2m/dim) (RoFormer); both entries of a pair hold the same angle."""
    if dim % 2:
        raise ValueError(f"RoPE needs an even dimension, got {dim}")
    theta = 10000.0 ** (-torch.arange(0, dim, 2, device=device, dtype=dtype) / dim)
    angles = torch.arange(seq_len, device=device, dtype=dtype)[:, None] * theta
    angles = angles.repeat_interleave(2, dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each interleaved pair (x[2m], x[2m+1]) of `x` [..., L, dim] by the angles of `cos`/`sin` [L, dim]."""
    pairs = x.unflatten(-1, (-1, 2))
    turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # (a, b) -> (-b, a)
    return x * cos + turned * sin


class GlobalPointer(nn.Module):
    """Span scores [B, num_types, L, L] from token states [B, L, hidden_size].

    The linear projections run in whatever precision the caller chose (bf16 autocast included); the
    rotation, the pair scores and the mask are computed in float32 so MASK_VALUE never overflows.
    """

    def __init__(self, hidden_size: int, num_types: int, head_size: int = 64, rope: bool = True,
                 efficient: bool = False):
        super().__init__()
        if rope and head_size % 2:
            raise ValueError(f"RoPE needs an even head_size, got {head_size}")
        self.num_types, self.head_size, self.rope, self.efficient = num_types, head_size, rope, efficient
        if efficient:
            self.qk = nn.Linear(hidden_size, 2 * head_size)  # one start/end projection shared by all types
            self.type_bias = nn.Linear(2 * head_size, 2 * num_types)  # per type: a start and an end bias
        else:
            self.qk = nn.Linear(hidden_size, num_types * 2 * head_size)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, _ = hidden.shape
        proj = self.qk(hidden)
        bias = self.type_bias(proj) if self.efficient else None  # from the unrotated projection, as in 8877
        with torch.autocast(hidden.device.type, enabled=False):
            proj = proj.float()
            if self.efficient:
                q, k = proj.unsqueeze(1).chunk(2, dim=-1)  # [B, 1, L, D], broadcast over types below
            else:
                q, k = proj.view(batch, length, self.num_types, 2 * self.head_size).transpose(1, 2).chunk(2, dim=-1)
            if self.rope:
                cos, sin = rope_position_table(length, self.head_size, device=hidden.device)
                q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_size)
            if bias is not None:
                bias = bias.float().transpose(1, 2) / 2  # [B, 2T, L]; the halving follows bert4keras
                scores = scores + bias[:, 0::2, :, None] + bias[:, 1::2, None, :]  # start bias on i, end bias on j
            valid = mask.bool()
            upper = torch.ones(length, length, dtype=torch.bool, device=hidden.device).triu()
            keep = valid[:, None, :, None] & valid[:, None, None, :] & upper
            return scores.masked_fill(~keep, MASK_VALUE)


def multilabel_categorical_crossentropy(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row log(1 + sum_neg e^s) + log(1 + sum_pos e^-s) over the last dim (https://kexue.fm/archives/7359).

    `targets` is 0/1 (or bool) shaped like `scores`; the result has the shape of `scores` minus the last
    dim, in float32 (float64 for float64 scores). Scores are clamped to +-|MASK_VALUE|, so -inf masking
    works too. A masked cell (-1e12) that is wrongly a target adds about 1e12 to its row: finite, never
    inf or NaN, and large enough to show the labelling bug in the logged loss; it gives no gradient to the
    model, because the cell was overwritten by the mask.
    """
    dtype = torch.promote_types(scores.dtype, torch.float32)
    s = scores.to(dtype).clamp(MASK_VALUE, -MASK_VALUE)
    positive = targets > 0.5
    # Excluded cells get MASK_VALUE, not -inf: logsumexp over a row of only -inf has a NaN gradient.
    neg = torch.where(positive, MASK_VALUE, s).logsumexp(-1)
    pos = torch.where(positive, -s, MASK_VALUE).logsumexp(-1)
    zero = neg.new_zeros(())
    return torch.logaddexp(neg, zero) + torch.logaddexp(pos, zero)  # the "1 +" is the e^0 of a threshold at 0


def global_pointer_loss(scores: torch.Tensor, targets: torch.Tensor,
                        row_valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean multilabel loss over the (example, type) rows of L*L cells, counting only `row_valid` examples.

    Filler examples (row_valid False) are replaced by all-masked, target-free rows before the loss, which
    then score exactly 0: whatever they held (even NaN) reaches neither the value nor the gradient. No
    boolean indexing, so the loss has no data-dependent shapes (CUDA-graph capturable).
    """
    batch, types = scores.shape[:2]
    positive = targets > 0.5
    if row_valid is not None:
        keep = row_valid.view(batch, 1, 1, 1).bool()
        scores = torch.where(keep, scores, MASK_VALUE)
        positive = positive & keep
    rows = multilabel_categorical_crossentropy(scores.flatten(2), positive.flatten(2))
    if row_valid is None:
        return rows.mean()
    return rows.sum() / (row_valid.sum() * types).clamp_min(1)


def decode_spans(scores: np.ndarray | torch.Tensor, threshold: float = 0.0,
                 flat: bool = False) -> list[set[tuple[int, int, int]]]:
    """Per example of `scores` [B, T, L, L], the (type, start, end) spans scoring above `threshold`.

    Only cells with start <= end count, whatever they score. Nested and overlapping spans are kept unless
    `flat`, which keeps a non-overlapping subset greedily by score (highest first, across types; ties in
    (type, start, end) order) for tasks whose entities cannot nest.
    """
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().float().cpu().numpy()
    decoded = []
    for example in scores:
        t, i, j = np.nonzero(example > threshold)
        upper = i <= j
        t, i, j = t[upper], i[upper], j[upper]
        if flat:
            taken = np.zeros(example.shape[-1], dtype=bool)
            chosen = []
            for n in np.argsort(-example[t, i, j], kind="stable"):
                if not taken[i[n]:j[n] + 1].any():
                    taken[i[n]:j[n] + 1] = True
                    chosen.append(n)
            t, i, j = t[chosen], i[chosen], j[chosen]
        decoded.append({(int(a), int(b), int(c)) for a, b, c in zip(t, i, j)})
    return decoded
