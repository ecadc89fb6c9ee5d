"""The fast path: static-shape batches replayed as CUDA graphs.

Small encoders spend most of a step launching kernels, not computing. Capturing the whole
training step (forward, loss, backward, clipping, fused AdamW) as one CUDA graph per padded
width removes that overhead. Graphs need fixed shapes, so batches are padded to a multiple
of `WIDTH_STEP` tokens and to a fixed number of rows; filler rows carry the label -100,
which the loss ignores, so the loss equals the one on the real rows.

`StaticBatcher` (the shapes) works everywhere and is what the CPU tests compare against the
dynamic-padding path; the graph classes need CUDA.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from ..features import Encoded, collate

WIDTH_STEP = 16  # token widths are rounded up to this: few shapes, little extra padding
IGNORE = -100


class StaticBatcher:
    """Collates to one of a few fixed shapes: (rows, width rounded up to WIDTH_STEP)."""

    def __init__(self, enc: Encoded, pad_id: int, rows: int):
        self.enc, self.pad_id, self.rows = enc, pad_id, rows

    def __call__(self, indices: Sequence[int]) -> tuple[dict[str, torch.Tensor], int]:
        batch = collate(self.enc, indices, self.pad_id, pad_multiple=WIDTH_STEP)
        # A bi-encoder's two segments share one width: otherwise every (width A, width B) pair is a graph.
        width = max(v.shape[1] for k, v in batch.items() if k.endswith("input_ids"))
        batch = {k: _pad_columns(k, v, width, self.pad_id) for k, v in batch.items()}
        real = len(indices)
        if real < self.rows:
            batch = {k: _pad_rows(k, v, self.rows, self.pad_id) for k, v in batch.items()}
        return batch, real


def _pad_rows(key: str, value: torch.Tensor, rows: int, pad_id: int) -> torch.Tensor:
    extra = rows - value.shape[0]
    if key == "labels":  # ignored by the losses: -100 for class ids, NaN for scores
        return torch.cat([value, value.new_full((extra,), float("nan") if value.is_floating_point() else IGNORE)])
    if key == "row_valid":
        return torch.cat([value, value.new_zeros(extra)])
    filler = value.new_full((extra, value.shape[1]), pad_id if key.endswith("input_ids") else 0)
    if key.endswith("attention_mask"):
        filler[:, 0] = 1  # one visible token: a fully masked row can turn attention into NaN
    return torch.cat([value, filler])


def _pad_columns(key: str, value: torch.Tensor, width: int, pad_id: int) -> torch.Tensor:
    if value.ndim < 2 or value.shape[1] == width:
        return value
    filler = value.new_full((value.shape[0], width - value.shape[1]), pad_id if key.endswith("input_ids") else 0)
    return torch.cat([value, filler], dim=1)


def _shape_key(batch: dict[str, torch.Tensor]) -> tuple:
    return tuple(tuple(v.shape) for k, v in sorted(batch.items()) if k.endswith("input_ids"))


def _fill(static: dict[str, torch.Tensor], host: dict[str, torch.Tensor]) -> None:
    # Pinned source: the copy is queued behind the previous replay instead of waiting for it.
    for k, v in host.items():
        static[k].copy_(v.pin_memory(), non_blocking=True)


def _warm_up(fn: Callable[[], None]) -> None:
    # cuBLAS handles and autotuning must exist before capture; do it on a side stream as PyTorch advises.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)


class GraphedTrainStep:
    """One captured training step per padded width, sharing one memory pool.

    The optimizer must be AdamW(fused=True, capturable=True). Learning rates live in device
    tensors that the graphs read; `set_lrs` copies the scheduler's values into them.
    """

    def __init__(self, model, loss_fn, optimizer, max_grad_norm: Optional[float], amp: Optional[torch.dtype]):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.max_grad_norm, self.amp = max_grad_norm, amp
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle()
        self.lrs = [torch.tensor(float(g["lr"]), device="cuda") for g in optimizer.param_groups]

    def set_lrs(self) -> None:
        for tensor, group in zip(self.lrs, self.optimizer.param_groups):
            tensor.fill_(float(group["lr"]))

    def _body(self, batch) -> torch.Tensor:
        with torch.autocast("cuda", dtype=self.amp, enabled=self.amp is not None, cache_enabled=False):
            logits = self.model(**batch)
        loss = self.loss_fn(logits, batch)
        loss.backward()
        if self.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm, foreach=True)
        self._step_with_tensor_lrs()
        return loss

    def _step_with_tensor_lrs(self) -> None:
        floats = [g["lr"] for g in self.optimizer.param_groups]
        for group, tensor in zip(self.optimizer.param_groups, self.lrs):
            group["lr"] = tensor
        try:
            self.optimizer.step()
        finally:
            for group, value in zip(self.optimizer.param_groups, floats):
                group["lr"] = value

    def _capture(self, batch) -> tuple:
        static = {k: v.clone() for k, v in batch.items()}
        if not self.graphs:
            self._warm_up_once(static)
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            loss = self._body(static)
        return graph, static, loss

    def _warm_up_once(self, static) -> None:
        """One real step before the first capture: it creates the optimizer state (which must not be
        created inside a graph, or every replay would zero it) and the cuBLAS handles. The step is
        then undone exactly: weights and optimizer state are put back."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        saved_params = [p.detach().clone() for p in params]
        saved_state = {p: {k: v.clone() for k, v in self.optimizer.state[p].items()} for p in params
                       if p in self.optimizer.state}

        def step():
            self.optimizer.zero_grad(set_to_none=True)
            self._body(static)

        _warm_up(step)
        with torch.no_grad():
            for p, s in zip(params, saved_params):
                p.copy_(s)
            for p in params:
                for k, v in self.optimizer.state[p].items():
                    if p in saved_state:
                        v.copy_(saved_state[p][k])
                    else:
                        v.zero_()  # fresh AdamW state is all zeros (moments and step)

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Run one step on a static-shape host batch; returns the loss (a device tensor)."""
        key = _shape_key(batch)
        if key not in self.graphs:
            self.graphs[key] = self._capture({k: v.cuda() for k, v in batch.items()})
        graph, static, loss = self.graphs[key]
        _fill(static, batch)
        graph.replay()
        return loss


class GraphedForward:
    """Inference replayed as one graph per padded width (evaluation and prediction)."""

    def __init__(self, model, amp: Optional[torch.dtype]):
        self.model, self.amp = model, amp
        self.graphs: dict[tuple, tuple] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def _run(self, batch):
        with torch.autocast("cuda", dtype=self.amp, enabled=self.amp is not None, cache_enabled=False):
            return self.model(**batch).float()

    @torch.no_grad()
    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of a static-shape host batch (a reused device buffer: copy what you keep)."""
        key = _shape_key(batch)
        if key not in self.graphs:
            static = {k: v.cuda() for k, v in batch.items()}
            _warm_up(lambda: self._run(static))
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = self._run(static)
            self.graphs[key] = (graph, static, out)
        graph, static, out = self.graphs[key]
        _fill(static, batch)
        graph.replay()
        return out
