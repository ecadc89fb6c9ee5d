"""Training losses shared by heads: CoSENT, Sentence-BERT features, in-batch contrastive, masked mean.

All are mask-based (no data-dependent shapes), so they can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # A sum over a mask instead of boolean indexing: no data-dependent shapes (graph-capturable).
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1)


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
