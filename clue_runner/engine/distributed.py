"""Data parallel training across processes (torchrun, `accelerate launch`, `clue-run train --num-processes`).

The launcher sets WORLD_SIZE / RANK / LOCAL_RANK; every process builds the same model, takes its share of each
global batch (the same batches everywhere: their order is a function of the seed), and the gradients are
averaged over processes before the step, so N processes train as one process with the same global batch.
Only rank 0 writes. Nothing here knows a task or a method.
"""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np
import torch


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's index on its machine: the GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def enabled() -> bool:
    return world_size() > 1


def init(device: torch.device) -> None:
    """Join the process group (gloo on CPU, nccl on CUDA) once; on CUDA `device` is this process's LOCAL_RANK GPU
    (engine.device.pick_device), made the current one so collectives run there."""
    import torch.distributed as dist

    if not enabled() or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device if device.index is not None else local_rank())
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def shard(indices: np.ndarray) -> tuple[np.ndarray, float]:
    """This process's items of a global batch, and the weight that turns its mean loss into its share of the
    global mean (n_rank / n_global × world size), so averaging over processes gives the one-process gradient."""
    if not enabled():
        return indices, 1.0
    mine = indices[rank()::world_size()]
    return mine, len(mine) * world_size() / len(indices)


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Every process starts from rank 0's weights (new head weights too)."""
    import torch.distributed as dist

    if enabled():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, 0)


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Mean of the gradients over processes, in one flat all-reduce (a missing gradient counts as zero)."""
    import torch.distributed as dist

    if not enabled():
        return
    params = [p for p in parameters if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
        offset += n


def average(value: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if enabled():
        value = value.clone()
        dist.all_reduce(value)
        value /= world_size()
    return value
