"""Where a run computes and how: the device, the seed, the autocast precision.

Under a distributed launch (WORLD_SIZE > 1) each process takes the GPU of its LOCAL_RANK, chosen
here before any model moves, so N processes on one machine use N GPUs (not N copies on GPU 0).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import ClueRunError
from . import distributed


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch (CPU and CUDA) generators, as transformers seeds them."""
    from transformers import set_seed

    set_seed(seed % 2**32)


def pick_device(requested: str) -> torch.device:
    """`auto`, `cuda` or `cpu` as a device; a distributed launch on CUDA: this process's LOCAL_RANK GPU."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ClueRunError("device cuda was asked for, but no CUDA device is available; use auto or cpu")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    if not distributed.enabled():
        return torch.device("cuda")
    index = distributed.local_rank()
    if index >= torch.cuda.device_count():
        raise ClueRunError(f"LOCAL_RANK {index}: this machine has {torch.cuda.device_count()} CUDA devices; "
                           "launch at most one process per GPU")
    return torch.device("cuda", index)


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.bfloat16
    if device.type == "cuda" and precision == "fp16":
        return torch.float16
    return None  # fp32 on CPU: bf16 autocast there is slow and not what users compare against
