"""The run result: one self-describing, versioned JSON per run, written atomically."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from ..errors import ClueRunError
from ..storage import atomic_write_text, kill_point

# 2: a multi-task run adds `tasks` (each task's description, weight, role, best and final scores);
# a single-task run's fields are those of version 1, which is read by migrating it (migrate_v1).
SCHEMA_VERSION = 2
RESULT_FILE = "run.json"


def write_result(run_dir: Path, result: dict) -> Path:
    path = run_dir / RESULT_FILE
    atomic_write_text(path, json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    kill_point("result-written")
    return path


def read_result(run_dir: Path) -> dict:
    path = run_dir / RESULT_FILE if run_dir.is_dir() else run_dir
    if not path.is_file():
        raise ClueRunError(f"no run result at {path} (is this a finished run directory?)")
    result = json.loads(path.read_text(encoding="utf-8"))
    version = result.get("schema_version")
    if version == 1:
        return migrate_v1(result)
    if version != SCHEMA_VERSION:
        raise ClueRunError(
            f"{path}: result schema version {version!r} is not supported by this clue-run "
            f"(supports 1 and {SCHEMA_VERSION}); upgrade clue-run to read it"
        )
    return result


def migrate_v1(result: dict) -> dict:
    """A version-1 result as version 2: one task, so nothing moves; the version it was written as is kept."""
    return {**result, "schema_version": SCHEMA_VERSION, "migrated_from": 1}


def task_section(task, cfg) -> dict:
    """The run JSON's description of a task as `cfg` (a single-task config) trained it."""
    return {"name": task.name, "version": task.version, "benchmark": task.benchmark,
            "variant": task.resolve_variant(cfg.data.variant), "eval_split": cfg.data.eval_split,
            "main_metric": task.main_metric, "metrics": task.metrics}


def _git_sha() -> str | None:
    here = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(device) -> dict[str, Any]:
    import numpy
    import tokenizers
    import torch
    import transformers

    from .. import __version__

    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {
        "clue_run": __version__,
        "python": platform.python_version(),
        "packages": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "numpy": numpy.__version__,
        },
        "device": device_name,
        "processes": int(os.environ.get("WORLD_SIZE", "1")),  # data parallel: one per GPU (or CPU process)
        "platform": platform.platform(),
        "git_sha": _git_sha(),
    }


def describe_adaptation(info) -> str | None:
    """"adapted on N sentences" for the record `adapt-mlm` leaves in a model config (and run JSONs)."""
    return f"adapted on {info['sentences']:,} sentences" if isinstance(info, dict) and "sentences" in info else None
