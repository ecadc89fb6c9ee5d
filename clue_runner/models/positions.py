"""Inputs past a checkpoint's position table.

Absolute learned positions (BERT, RoBERTa, XLM-R, ELECTRA …) are extended to N rows once, at build
time, and the config records the new size, so the saved checkpoint reloads anywhere:

- `hierarchical` (Su, kexue.fm/archives/7947; bert4keras `hierarchical_position`): with the n trained
  rows p, u = (p − α·p_0)/(1 − α) and emb(i·n + j) = α·u_i + (1 − α)·u_j — positions < n are exactly
  the original rows, later ones stay distinct (up to n²);
- `interpolate`: linear interpolation of the n rows over N positions (changes positions < n too);
- `copy`: emb(k) = p[k mod n].

RoFormer's rotary/sinusoidal table is not learned: it is recomputed at the new length, exactly.
RoBERTa-style tables start after `padding_idx + 1` reserved rows, which are kept as they are.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..errors import ConfigError


def _embeddings(encoder: nn.Module) -> nn.Module:
    return getattr(encoder, "embeddings", None)


def table_offset(encoder: nn.Module) -> int:
    """Rows reserved before the first position (RoBERTa: padding_idx + 1 = 2; BERT: 0)."""
    emb = _embeddings(encoder)
    pad = getattr(emb, "padding_idx", None)
    return pad + 1 if pad is not None else 0


def usable_positions(config) -> Optional[int]:
    """How many tokens the architecture's position table holds (None: no limit known)."""
    if getattr(config, "position_embedding_type", "absolute") not in ("absolute", None):
        return None  # relative position schemes have no table to run past
    total = getattr(config, "max_position_embeddings", None)
    if total is None:
        return None
    offset = config.pad_token_id + 1 if config.model_type in ("roberta", "xlm-roberta", "camembert") else 0
    return total - offset


def is_rotary(config) -> bool:
    return config.model_type == "roformer"


def hierarchical(table: torch.Tensor, positions: int, alpha: float = 0.4) -> torch.Tensor:
    n = table.shape[0]
    if positions > n * n:
        raise ConfigError(f"hierarchical positions reach n² = {n * n} at most; asked for {positions}")
    u = (table - alpha * table[:1]) / (1 - alpha)
    k = torch.arange(positions)
    return alpha * u[k // n] + (1 - alpha) * u[k % n]


def interpolate(table: torch.Tensor, positions: int) -> torch.Tensor:
    return nn.functional.interpolate(table.T[None], size=positions, mode="linear", align_corners=True)[0].T


def copy(table: torch.Tensor, positions: int) -> torch.Tensor:
    return table[torch.arange(positions) % table.shape[0]]


EXTENSIONS = {"hierarchical": hierarchical, "interpolate": interpolate, "copy": copy}


def extend_positions(encoder: nn.Module, positions: int, mode: str = "hierarchical", alpha: float = 0.4) -> str:
    """Give `encoder` a position table of `positions` tokens (no-op when it has that many); returns a note."""
    config = encoder.config
    if is_rotary(config):
        return _resize_sinusoidal(encoder, positions)
    usable = usable_positions(config)
    if usable is None:
        return f"{config.model_type} uses relative positions: nothing to extend"
    if positions <= usable:
        return f"{config.model_type} already holds {usable} positions"
    emb = _embeddings(encoder)
    old = getattr(emb, "position_embeddings", None)
    if not isinstance(old, nn.Embedding):
        raise ConfigError(f"long_positions: no absolute position table found in {type(encoder).__name__}")
    offset = table_offset(encoder)
    weight = old.weight.detach()
    extended = torch.cat([weight[:offset], _extend(weight[offset:], positions, mode, alpha)])
    new = nn.Embedding(extended.shape[0], extended.shape[1], padding_idx=old.padding_idx,
                       device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(extended)
    emb.position_embeddings = new
    _resize_buffers(emb, extended.shape[0])
    config.max_position_embeddings = extended.shape[0]
    return f"position table extended {usable} → {positions} ({mode}{f', α={alpha:g}' if mode == 'hierarchical' else ''})"


def _extend(table: torch.Tensor, positions: int, mode: str, alpha: float) -> torch.Tensor:
    fn = EXTENSIONS[mode]
    return fn(table, positions, alpha) if mode == "hierarchical" else fn(table, positions)


def _resize_buffers(emb: nn.Module, total: int) -> None:
    # The id buffers transformers keeps beside the table must cover the new length too.
    for name in ("position_ids", "token_type_ids"):
        buf = getattr(emb, name, None)
        if isinstance(buf, torch.Tensor) and buf.ndim == 2:
            fresh = torch.arange(total, device=buf.device).expand(1, -1) if name == "position_ids" \
                else torch.zeros(1, total, dtype=buf.dtype, device=buf.device)
            persistent = name not in getattr(emb, "_non_persistent_buffers_set", set())
            emb.register_buffer(name, fresh.to(buf.dtype), persistent=persistent)


def _resize_sinusoidal(encoder: nn.Module, positions: int) -> str:
    table = encoder.encoder.embed_positions
    if positions <= table.weight.shape[0]:
        return "rotary positions: the table already covers the length"
    resized = type(table)(positions, table.weight.shape[1]).to(table.weight.device)
    with torch.no_grad():
        resized.weight.copy_(resized.create_weight())
    encoder.encoder.embed_positions = resized
    encoder.config.max_position_embeddings = positions
    return f"rotary positions are not learned: sinusoidal table recomputed for {positions} tokens"
