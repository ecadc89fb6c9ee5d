"""A multi-task run as the training loop and the run JSON see it: one batch source over the tasks,
per-task evaluation with a weighted main score, and every task's scores in the result."""

from __future__ import annotations

from typing import Optional

from ..runs.result import task_section
from ..engine.build import MultiBuilt
from .schedule import MultiTaskSource, task_probabilities

MAIN_METRIC = "weighted_main"  # Σ weight_i · main metric_i / Σ weight_i: early stopping and best/


def task_metric(task: str, metric: str) -> str:
    """The key of one task's metric among a multi-task run's metrics."""
    return f"{task}/{metric}"


def weighted_main(metrics: dict[str, dict[str, float]], main: dict[str, str], weights: dict[str, float]) -> float:
    total = sum(weights.values())
    return sum(weights[n] * metrics[n][main[n]] for n in metrics) / total


def combined_metrics(per_task: dict[str, dict[str, float]], main: dict[str, str], weights: dict[str, float]) -> dict:
    """The weighted main score, then every task's metrics under `task/metric`."""
    metrics = {MAIN_METRIC: weighted_main(per_task, main, weights)}
    for name, scores in per_task.items():
        metrics.update({task_metric(name, k): v for k, v in scores.items()})
    return metrics


class MultiTaskEvaluator:
    """Every task's `SplitEvaluator`, combined (a `trainer.Evaluator`)."""

    main_metric = MAIN_METRIC

    def __init__(self, evaluators: dict, weights: dict[str, float]):
        self.evaluators, self.weights = evaluators, weights

    @property
    def examples(self) -> int:
        return sum(e.examples for e in self.evaluators.values())

    @property
    def last_predictions(self) -> dict:
        return {name: e.last_predictions for name, e in self.evaluators.items()}

    def evaluate(self) -> dict[str, float]:
        per_task = {name: e.evaluate() for name, e in self.evaluators.items()}
        return combined_metrics(per_task, {n: e.main_metric for n, e in self.evaluators.items()}, self.weights)

    def timed_seconds(self) -> float:
        return sum(e.timed_seconds() for e in self.evaluators.values())

    def padding_share(self) -> Optional[float]:
        return None  # per task in each task's own runs; one share over several tasks' batches says little


class MultiPrepared:
    """The tasks' single-task preparations (`runs.prepare.Prepared`, sharing one model) as one run."""

    def __init__(self, cfg, built: MultiBuilt, parts: dict):
        self.cfg, self.built, self.parts = cfg, built, parts
        self.entries = {e.name: e for e in cfg.tasks}
        self.evaluator = MultiTaskEvaluator({n: p.evaluator for n, p in parts.items()},
                                            {e.name: e.weight for e in cfg.tasks})
        self.train_source = None
        if cfg.train.max_steps != 0:
            data = {n: p.train_enc for n, p in parts.items()}
            mt = cfg.multitask
            probabilities = None if mt.per_step == "all" else task_probabilities(
                mt.schedule, {n: len(enc) for n, enc in data.items()}, mt.temperature, mt.frequencies)
            self.train_source = MultiTaskSource(data, cfg.train.batch_size, cfg.train.seed, cfg.train.group_by_length,
                                                probabilities)

    def summary_line(self, cfg) -> str:
        sizes = ", ".join(f"{n} {len(p.train_enc) if p.train_enc is not None else 0}/{p.evaluator.examples}"
                          for n, p in self.parts.items())
        return (f"[bold]{cfg.run_name}[/] · {cfg.model.name} · {cfg.method_label()} · seed {cfg.train.seed} · "
                f"train/eval examples {sizes}")

    def task_result(self, cfg) -> dict:
        tasks = [p.task for p in self.parts.values()]
        splits = sorted({p.built.cfg.data.eval_split for p in self.parts.values()})
        benchmarks = sorted({t.benchmark for t in tasks if t.benchmark})
        return {"name": cfg.run_name, "version": None, "benchmark": "+".join(benchmarks) or None, "variant": None,
                "eval_split": "/".join(splits), "main_metric": MAIN_METRIC, "metrics": [MAIN_METRIC]}

    def data_result(self) -> dict:
        return {n: p.data_result() for n, p in self.parts.items()}

    def tasks_result(self, state) -> dict:
        """Per task: how it was trained and scored, its weight and role, and its scores at the run's best
        step (chosen by the weighted main score) and at the last evaluation."""
        out = {}
        for name, part in self.parts.items():
            def scores(record, name=name, part=part):
                return {m: record["metrics"][task_metric(name, m)] for m in part.task.metrics
                        if task_metric(name, m) in record["metrics"]}
            entry = self.entries[name]
            out[name] = {**task_section(part.task, part.built.cfg), "weight": entry.weight, "role": entry.role,
                         "best": scores(state.best), "final": scores(state.history[-1])}
        return out
