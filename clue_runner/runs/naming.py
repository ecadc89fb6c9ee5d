"""How runs and models are named on disk and in reports.

A model's identity must tell two checkpoints apart even when their folders share a name
(`/a/model` and `/b/model`, any `checkpoint-1000`): a local directory is its folder name plus a
short hash of its absolute path; a hub id or packaged name is itself.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from pathlib import Path


def model_slug(name: str) -> str:
    """A file-system-safe, distinct name for grouping results by model."""
    path = Path(name).expanduser()
    if path.exists():
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
        return f"{path.resolve().name}-{digest}"
    return name.replace("/", "__")


def new_run_id(seed: int) -> str:
    return f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-seed{seed}-{secrets.token_hex(2)}"


def new_run_dir(output_dir: str, task_name: str, model_name: str, seed: int) -> Path:
    return Path(output_dir) / task_name / model_slug(model_name) / new_run_id(seed)
