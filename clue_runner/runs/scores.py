"""Scores of a finished run's best checkpoint on further splits, kept beside run.json in `scores.json`.

{split: {"metrics": {...}, "examples": n, "source": the files scored}}: the FewCLUE protocol scores each
split's run on `heldout` (dev_few_all minus its dev_i) after training; `clue-run report --scored-on SPLIT`
reads them. run.json itself is never rewritten.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import RunError
from ..storage import atomic_write_text

SCORES_FILE = "scores.json"


def read_scores(run_dir: Path) -> dict[str, dict]:
    path = Path(run_dir) / SCORES_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise RunError(f"{path}: not valid JSON ({err})") from None


def write_scores(run_dir: Path, split: str, metrics: dict[str, float], examples: int, source: str) -> Path:
    """Add (or replace) one split's scores."""
    scores = read_scores(run_dir)
    scores[split] = {"metrics": metrics, "examples": examples, "source": source}
    path = Path(run_dir) / SCORES_FILE
    atomic_write_text(path, json.dumps(scores, ensure_ascii=False, indent=2) + "\n")
    return path
