"""Writing model weights: dtypes by name, safetensors files (directories are swapped in by `storage.atomic_dir`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..storage import atomic_dir  # noqa: F401  (the one atomic writer; model code imports it from here too)


def torch_dtype(name: str):
    """The torch dtype for a configured name; ModelError for anything else."""
    import torch

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ModelError(f"unsupported dtype {name!r}; choose one of {', '.join(dtypes)}")
    return dtypes[name]


def save_safetensors(state_dict: dict, path: Path, dtype: str) -> None:
    """Write numpy/torch tensors as one safetensors file in `dtype` (numpy has no bfloat16, torch does)."""
    import torch
    from safetensors.torch import save_file

    target = torch_dtype(dtype)
    tensors = {}
    for name, value in state_dict.items():
        value = torch.from_numpy(value) if isinstance(value, np.ndarray) else value
        tensors[name] = (value.to(target) if value.is_floating_point() else value).contiguous()
    save_file(tensors, str(path), metadata={"format": "pt"})
