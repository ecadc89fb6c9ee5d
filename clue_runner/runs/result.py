"""The run result: one self-describing, versioned JSON per run (run.json), written atomically.

`RunResult` is its one typed model: the run writes one, and every reader (report, submit, sweep, the
CLI) reads one, by attribute. The models are strict (an unknown or misspelt key is an error naming
it): the files of every earlier clue-run carry no key that the current one lacks, only fewer (older
writers did not record them: those fields default to None). Free-form by design, and only these:
`config` (the experiment config as it was, validated by the config that wrote it; today's config
schema may not accept an old one), `methods` (each method's own summary) and `model.adapted` (the
record `clue-run model adapt-mlm` keeps in the model config).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_serializer

from ..errors import ClueRunError
from ..storage import atomic_write_text, kill_point

# 2: a multi-task run adds `tasks` (each task's description, weight, role, best and final scores);
# a single-task run's fields are those of version 1, which is read by migrating it (migrate_v1).
SCHEMA_VERSION = 2
READS = (1, SCHEMA_VERSION)
RESULT_FILE = "run.json"


class Record(BaseModel):
    # Metrics may be NaN (e.g. Spearman over constant predictions): kept as the run measured them.
    model_config = ConfigDict(extra="forbid")


class TaskInfo(Record):
    """The task as the run trained and scored it."""

    name: str
    version: Optional[int]
    benchmark: Optional[str]
    variant: Optional[str]  # the FewCLUE split trained on (e.g. few_all), else None
    eval_split: str
    main_metric: str
    metrics: list[str]


class TaskScores(TaskInfo):
    """One task of a multi-task run: its description, weight and role, its scores at the run's best step
    (chosen by the weighted main score) and at the last evaluation."""

    weight: float
    role: Optional[str]
    best: dict[str, float]
    final: dict[str, float]


class LoadReport(Record):
    """What loading the checkpoint found (models.backbone.LoadReport.as_dict)."""

    kind: str
    new_head: list[str]
    missing_encoder: list[str]
    unexpected: list[str]
    mismatched: list[str]
    dropped_pooler: bool


class ModelInfo(Record):
    name: str  # as the config gave it
    slug: str  # the name as a directory name: runs are grouped under it
    resolved: str  # the checkpoint directory loaded
    parameters: int
    trainable_parameters: Optional[int] = None  # None: not recorded (earliest files)
    load_report: Optional[LoadReport] = None  # None: not recorded or nothing loaded
    adapted: Optional[dict[str, Any]] = None  # adapt-mlm's record: reports say "adapted on N sentences"

    @field_validator("load_report", mode="before")
    @classmethod
    def _empty_is_none(cls, value):
        return value or None  # writers before the typed result wrote {} for "no report"


class SplitSummary(Record):
    """One split as loaded (data.splits.SplitData.summary)."""

    source: str
    examples: int
    dropped: dict[str, int]  # label value -> rows dropped by design
    skipped: int
    skipped_first: list[str]
    cut: Optional[int] = None  # texts cut before tokenizing (data.limits); absent when none was
    cut_first: Optional[list[str]] = None

    @model_serializer(mode="wrap")
    def _omit_uncut(self, handler):
        data = handler(self)
        if data.get("cut") is None:
            data.pop("cut", None)
            data.pop("cut_first", None)
        return data


class DataSummary(Record):
    train: Optional[SplitSummary]  # None: not trained (max_steps 0)
    eval: SplitSummary


class Evaluation(Record):
    """The scores of one evaluation: the best one, or (with the training state) one of the history."""

    step: int
    epoch: float
    metrics: dict[str, float]


class HistoryEntry(Evaluation):
    train_loss: Optional[float]  # None: no step since the previous evaluation
    lr: float
    train_seconds: float


class Throughput(Record):
    """Training rates over training time only (evaluation and saving excluded); the last evaluation's rate.
    None: not measured (nothing trained) or not recorded (older files)."""

    train_seconds: float
    train_cpu_seconds: Optional[float] = None
    train_samples_per_s: Optional[float]
    train_tokens_per_s: Optional[float]
    padding_share: Optional[float]
    eval_samples_per_s: float
    eval_padding_share: Optional[float] = None


class Environment(Record):
    clue_run: str
    python: str
    packages: dict[str, str]
    device: str
    processes: Optional[int] = None  # data parallel: one per GPU (or CPU process); None: not recorded
    platform: str
    git_sha: Optional[str]


class RunResult(Record):
    """run.json. Field order is the file's key order."""

    schema_version: int = SCHEMA_VERSION
    run_id: str
    status: str
    created_at: str  # ISO 8601, UTC
    task: TaskInfo  # a multi-task run: the run as one task, scored by the weighted main score
    model: ModelInfo
    method: str  # the system's label in reports
    methods: dict[str, dict[str, Any]] = {}  # each method's own summary (e.g. child_tuning's mask)
    seed: int
    config: dict[str, Any]
    data: Union[DataSummary, dict[str, DataSummary]]  # a multi-task run: per task
    history: list[HistoryEntry]
    best: Evaluation
    final: HistoryEntry
    stopped_early: bool
    steps: int
    throughput: Throughput
    environment: Environment
    wall_time_s: float  # this process (a resumed run counts its last part)
    tasks: Optional[dict[str, TaskScores]] = None  # a multi-task run: every task's own scores
    head: Optional[dict[str, Any]] = None  # the head's own record (an LM template's text and hash, demonstrations)
    migrated_from: Optional[int] = None  # read from an older schema version (never in a file written now)

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler):
        data = handler(self)
        for key in ("tasks", "head", "migrated_from"):  # absent, not null, as the file has always been
            if data.get(key) is None:
                data.pop(key, None)
        return data

    @property
    def is_multitask(self) -> bool:
        return bool(self.tasks)

    @property
    def main_score(self) -> float:
        """The best evaluation's score on the main metric (what selects the best checkpoint)."""
        return self.best.metrics[self.task.main_metric]


def write_result(run_dir: Path, result: Union[RunResult, dict]) -> Path:
    """Write run.json atomically; a dict (the run's record as the training flow builds it) is validated first."""
    result = result if isinstance(result, RunResult) else RunResult.model_validate(result)
    path = run_dir / RESULT_FILE
    text = json.dumps(result.model_dump(mode="json"), ensure_ascii=False, indent=2) + "\n"
    atomic_write_text(path, text)
    kill_point("result-written")
    return path


def read_result(run_dir: Path) -> RunResult:
    """A run directory's run.json (or the file itself) as a RunResult, migrated to the current version.
    Anything wrong with it is one ClueRunError line naming the file."""
    path = run_dir / RESULT_FILE if run_dir.is_dir() else run_dir
    if not path.is_file():
        raise ClueRunError(f"no run result at {path} (is this a finished run directory?)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ClueRunError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    except UnicodeDecodeError:
        raise ClueRunError(f"{path}: not UTF-8 text; is it a run.json?") from None
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version not in READS:
        raise ClueRunError(
            f"{path}: result schema version {version!r} is not supported by this clue-run "
            f"(supports {' and '.join(map(str, READS))}); upgrade clue-run to read it"
        )
    try:
        return RunResult.model_validate(migrate_v1(raw) if version == 1 else raw)
    except ValidationError as err:
        raise ClueRunError(f"{path}: not a run result: {validation_line(err)}") from None


def validation_line(err: ValidationError) -> str:
    """The first problem of a validation error as `key.path: message`, and how many more there are."""
    problems = err.errors()
    first = problems[0]
    where = ".".join(map(str, first["loc"])) or "(top level)"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{where}: {first['msg']}{more}"


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
