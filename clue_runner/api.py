"""The plain Python API behind the CLI: train, evaluate, predict, encode. A façade: each function
forwards to where the work is done (`runs.driver` trains, `runs.scoring` uses a finished run), and
importing it loads neither torch nor transformers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    import numpy as np

    from .config import ExperimentConfig
    from .data.splits import SplitData
    from .engine.build import Built
    from .engine.trainer import Event
    from .runs.result import RunResult


def train(cfg: Optional["ExperimentConfig"], resume: Optional[Path] = None,
          on_event: Optional[Callable[["Event"], None]] = None, log: Optional[Callable[[str], None]] = None,
          run_dir: Optional[Path] = None) -> Path:
    """Fine-tune, keep the best checkpoint, write the run JSON; returns the run directory.

    With `resume`, complete an interrupted run from its last committed state with its saved config
    (see `runs.rundir` for the protocol that makes every interruption resumable). With `run_dir`,
    write the run there (a sweep's deterministic cell directory) instead of a new timestamped one.
    `log` gets the progress lines (default: stderr). Data parallel: every process trains; rank 0
    alone logs and writes (the others follow read-only).
    """
    from .runs import driver

    return driver.train(cfg, resume, on_event, log, run_dir)


def dry_run(cfg: "ExperimentConfig") -> dict:
    """What `train` would do, writing nothing to the output directory: the resolved config, split
    sizes, optimizer steps and parameter counts (the model is built, not trained; no vocabulary trim
    is written, its effect is named instead). A multi-task config: every task's splits."""
    from .runs import driver

    return driver.dry_run(cfg)


def load_run(run_dir: Path, device: str = "auto"):
    """A run's best checkpoint, built exactly as the run trained it (same methods re-applied). A
    multi-task run gives a `MultiBuilt` (`.multitask` True) with one single-task view per task."""
    from .runs import scoring

    return scoring.load_run(run_dir, device)


def load_checkpoint(path: Path, task_name: str, device: str = "auto") -> "Built":
    """A plain transformers checkpoint fine-tuned elsewhere (e.g. a saved BertForSequenceClassification),
    scored as it is on `task_name`. Its label order must be the task's: names in `id2label` are checked."""
    from .runs import scoring

    return scoring.load_checkpoint(path, task_name, device)


def evaluate(run_dir: Path, split: str = "dev", data_dir: Optional[str] = None, device: str = "auto",
             task: Optional[str] = None) -> dict:
    """Score a run's best checkpoint on a labelled split; with `task`, `run_dir` may be a plain
    transformers checkpoint directory fine-tuned elsewhere. A multi-task run: every task, and the
    weighted main score."""
    from .runs import scoring

    return scoring.evaluate(run_dir, split, data_dir, device, task)


def predict(run_dir: Path, split: str = "test", data_dir: Optional[str] = None, clue_version: str = "1.1",
            out: Optional[Path] = None, device: str = "auto"):
    """Write predictions in the task's leaderboard format, in the test file's order. A multi-task run
    writes one file per task (into `out` as a directory, if given) and returns their paths."""
    from .runs import scoring

    return scoring.predict(run_dir, split, data_dir, clue_version, out, device)


def read_run(run_dir: Path) -> "RunResult":
    """A run's run.json (older schema versions migrated)."""
    from .runs.result import read_result

    return read_result(Path(run_dir))


def encode_texts(texts: list[str], run_dir: Optional[Path] = None, model_name: Optional[str] = None,
                 pooling: str = "mean", max_length: int = 128, batch_size: int = 256,
                 device: str = "auto") -> "np.ndarray":
    """Sentence vectors (float32, one row per text, in input order) from a run's trained bi-encoder
    or from a model's pooled hidden states. Batches are sorted by length; bf16 on a GPU."""
    from .runs import scoring

    return scoring.encode_texts(texts, run_dir, model_name, pooling, max_length, batch_size, device)


def load_task_split(cfg: "ExperimentConfig", task, split: str, limit=None, on_bad_row=None, data_dir=None,
                    training: bool = False, unlabelled: bool = False) -> "SplitData":
    """One split of a task's data as `cfg` reads it (`training`: every row labelled where the head needs it)."""
    from .engine.build import load_task_split as load

    return load(cfg, task, split, limit, on_bad_row, data_dir, training, unlabelled)
