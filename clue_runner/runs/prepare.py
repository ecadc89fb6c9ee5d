"""A run made ready to train, before its run directory exists: every split loaded and checked, the model
built once (one head, or one per task on a shared encoder), every split featurized, the evaluator set up.
Everything that can fail on bad input fails here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

from ..config import ExperimentConfig
from ..data.splits import SplitData
from ..engine.build import Built, build, load_task_split, threshold_split_data
from ..engine.evaluate import SplitEvaluator
from ..errors import DataError
from ..features import Encoded
from .result import task_section


@dataclass
class TaskData:
    """One task's splits as loaded (before the model exists)."""

    train: Optional[SplitData]  # None: the run trains nothing (max_steps 0)
    eval: SplitData
    threshold: Optional[SplitData]  # where threshold metrics fit (None: the eval split itself)


@dataclass
class Prepared:
    """One task's run, ready to train: its model, its data and their encodings, its evaluator."""

    task: object
    built: Built
    train_data: Optional[SplitData]
    eval_data: SplitData
    train_enc: Optional[Encoded]
    eval_enc: Encoded
    evaluator: SplitEvaluator

    @property
    def train_source(self) -> Optional[Encoded]:
        return self.train_enc

    def summary_line(self, cfg: ExperimentConfig) -> str:
        def count(enc) -> str:
            if enc is None:
                return "0"
            if len(enc.targets) == len(enc):
                return f"{len(enc):,}"
            return f"{len(enc.targets):,} ({len(enc):,} windows)"  # reading comprehension: an item is a window

        return (f"[bold]{self.task.name}[/] · {cfg.model.name} · {cfg.method_label()} · seed {cfg.train.seed} · "
                f"{count(self.train_enc)} train / {count(self.eval_enc)} {cfg.data.eval_split} examples")

    def task_result(self, cfg: ExperimentConfig) -> dict:
        return task_section(self.task, cfg)

    def data_result(self) -> dict:
        return {"train": self.train_data.summary() if self.train_enc is not None else None,
                "eval": self.eval_data.summary()}

    def tasks_result(self, state) -> Optional[dict]:
        return None  # one task: its scores are the run's


def prepare(cfg: ExperimentConfig, log: Callable[[str], None]):
    """A `Prepared` run, or for a multi-task config a `multitask.run.MultiPrepared` of one per task."""
    configs = cfg.task_configs()
    data = {name: load_task_data(tc) for name, tc in configs.items()}  # data errors before the model loads
    built = build(cfg, log=log)
    parts = {name: featurize_task_data(configs[name], view, data[name]) for name, view in built.views().items()}
    if not built.multitask:
        return parts[cfg.task]
    from ..multitask.run import MultiPrepared

    return MultiPrepared(cfg, built, parts)


def load_task_data(cfg: ExperimentConfig) -> TaskData:
    task = cfg.resolved.task
    trains = cfg.train.max_steps != 0
    train = load_task_split(cfg, task, cfg.data.train_split, cfg.data.max_train_examples, training=True) if trains else None
    evaluated = load_task_split(cfg, task, cfg.data.eval_split, cfg.data.max_eval_examples)
    if task.label.kind != "structured" and any(ex.label is None for ex in evaluated.examples):
        first = next(i for i, ex in enumerate(evaluated.examples) if ex.label is None)
        raise DataError(f"{evaluated.source}: split {cfg.data.eval_split!r} has unlabelled rows (example {first + 1}); "
                        "data.eval_split must name a labelled split")
    return TaskData(train, evaluated, threshold_split_data(cfg, task, cfg.data.eval_split))


def featurize_task_data(cfg: ExperimentConfig, built: Built, data: TaskData) -> Prepared:
    """`built`: the task's model (a task view of a multi-task model: its data options in its config)."""
    train_data = data.train
    train_enc = built.featurize_split(train_data) if train_data is not None else None
    eval_enc = built.featurize_split(data.eval)
    if train_data is not None:
        head = built.head
        if head.needs_labels and train_enc.unlabelled():
            raise DataError(f"{train_data.source}: the training split has unlabelled rows")
        if head.unlabeled_split:  # semi-supervised heads (PET) train on an unlabelled split beside the labelled one
            pool = load_task_split(cfg, built.task, head.unlabeled_split, head.unlabeled_examples,
                                   training=True, unlabelled=True)
            train_data = dataclasses.replace(train_data, examples=train_data.examples + pool.examples,
                                             source=f"{train_data.source} + {pool.source} ({len(pool.examples)} unlabelled)")
            train_enc = built.featurize_split(train_data)
    threshold_enc = built.featurize_split(data.threshold) if data.threshold is not None else None
    evaluator = SplitEvaluator(built, eval_enc, [ex.id for ex in data.eval.examples], threshold_enc)
    return Prepared(built.task, built, train_data, data.eval, train_enc, eval_enc, evaluator)
