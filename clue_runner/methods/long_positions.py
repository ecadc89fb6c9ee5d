"""`long_positions`: inputs past a checkpoint's learned position table (see models.positions)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..models.positions import extend_positions
from . import Method, Params


class LongPositionsParams(Params):
    max_positions: int = Field(1024, ge=2, le=262144, description="tokens the position table holds once extended")
    mode: Literal["hierarchical", "interpolate", "copy"] = Field(
        "hierarchical", description="hierarchical (positions < n unchanged), interpolate, or copy (row k mod n)")
    alpha: float = Field(0.4, gt=0, lt=1, allow_inf_nan=False, description="hierarchical only: α in emb(i·n + j) = α·u_i + (1 − α)·u_j")


class LongPositions(Method):
    Params = LongPositionsParams

    def wrap_model(self, backbone, ctx):
        p = self.params
        note = extend_positions(backbone.encoder, p.max_positions, p.mode, p.alpha)
        if ctx is not None:
            ctx.log(f"long_positions: {note}")
        return backbone

    def max_positions(self) -> int:
        return self.params.max_positions
