"""Writing model weights: dtypes by name, safetensors files, and whole directories swapped in atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import ModelError


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


@contextmanager
def atomic_dir(out_dir) -> Iterator[Path]:
    """Yield a temporary sibling of `out_dir` to fill; on success it replaces `out_dir` by renames.

    A killed process leaves at most a hidden `.NAME.*.partial` sibling, never a half-written `out_dir`.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        yield tmp
        if out_dir.exists():
            old = tmp.with_suffix(".old")
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
