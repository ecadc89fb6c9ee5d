"""Per-example predictions of a run's best checkpoint on its eval split, kept beside run.json.

`predictions.npz` (compressed numpy): `gold` and `pred` (class ids, or scores for similarity tasks), the
examples' `ids`, `num_labels`, and the `step` whose evaluation they come from. Paired bootstraps over
examples (report/compare.py) read them. Written at each new best (so the file always matches best/);
tasks whose gold or predictions are structured (spans, entity sets, answer texts) write none.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from ..storage import atomic_write_bytes

PREDICTIONS_FILE = "predictions.npz"


@dataclass
class Predictions:
    ids: np.ndarray
    gold: np.ndarray
    pred: np.ndarray
    num_labels: int
    step: int


def _flat_numbers(values) -> Optional[np.ndarray]:
    try:
        array = np.asarray(values)
    except ValueError:  # ragged: structured predictions
        return None
    return array if array.ndim == 1 and array.dtype.kind in "biuf" else None


def save_predictions(run_dir: Path, task, enc, preds, ids: list, step: int) -> bool:
    """Write one evaluation's decoded predictions `preds` over `enc` (the eval split, examples `ids`);
    False where there is nothing flat to keep (structured predictions)."""
    gold = _flat_numbers(enc.targets)
    pred = _flat_numbers(preds)
    if gold is None or pred is None or len(gold) != len(pred) or len(gold) != len(ids):
        return False
    buffer = io.BytesIO()
    np.savez_compressed(buffer, ids=np.asarray([str(i) for i in ids]), gold=gold, pred=pred,
                        num_labels=np.asarray(len(task.label.values)), step=np.asarray(step))
    atomic_write_bytes(Path(run_dir) / PREDICTIONS_FILE, buffer.getvalue())
    return True


def load_predictions(run_dir: Path) -> Optional[Predictions]:
    """A run's saved predictions, or None for runs that have none (older runs, structured tasks)."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        return Predictions(data["ids"], data["gold"], data["pred"], int(data["num_labels"]), int(data["step"]))
