"""Sweeps: a base experiment × a grid (tasks, models, methods, seeds, any config key) → cells, one run each.

A cell's run id is a hash of its resolved config (seed included, output directory excluded), and its
directory is `<sweep dir>/<task>/<model slug>/<run id>`: a re-run of the same sweep finds it again, so it
skips finished cells (run.json), resumes interrupted ones (resume state) and retries failed ones.
Each cell runs as its own `python -m clue_runner train` process (a crash cannot take the sweep down),
under the run directory's lock (two sweeps never train the same cell); runs/launchers.py starts them
(local, ray or slurm). This module never imports the training code: workers only need it.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import ExperimentConfig, set_path, build_config, parse_override
from ..errors import ConfigError
from .naming import model_slug
from .result import RESULT_FILE, RunResult, atomic_write_text

CELL_FILE = "cell.yaml"  # the cell's resolved config, written before it is launched
STATUS_FILE = "sweep-status.json"  # the last attempt: running / done / failed, attempts, host
LOG_FILE = "train.log"  # every attempt's output, appended
RESUME_STATE = Path("resume") / "trainer.pt"
MANIFEST_FILE = "sweep.json"
# Shorthands in `grid:`: the dotted config key each one sets.
ALIASES = {"tasks": "task", "models": "model.name", "model": "model.name", "seeds": "train.seed", "seed": "train.seed",
           "lr": "train.lr"}
# Keys the report already tells apart (rows, columns, pairs): everything else is a hyperparameter.
REPORT_KEYS = ("task", "model.name", "methods", "data.variant", "train.seed")  # data.variant: the FewCLUE split
LAUNCHERS = ("local", "ray", "slurm")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RayOptions(_Strict):
    address: Optional[str] = None  # a running cluster ("auto", "ray://host:10001"); else $RAY_ADDRESS, else a local one
    num_cpus: Optional[int] = Field(None, ge=1)  # CPUs per run (default 1)
    num_gpus: Optional[float] = Field(None, ge=0)  # GPUs per run, fractions allowed (default 1 when the cluster has GPUs)


class SlurmOptions(_Strict):
    cluster: Optional[Literal["slurm", "local", "debug"]] = None  # None: slurm when `srun` exists, else local processes
    partition: Optional[str] = None
    timeout_min: int = Field(240, ge=1)
    gpus_per_node: int = Field(1, ge=0)
    cpus_per_task: int = Field(4, ge=1)
    mem_gb: Optional[float] = Field(None, gt=0)
    parameters: dict[str, Any] = {}  # any other submitit parameter, e.g. slurm_account


class SweepConfig(_Strict):
    name: Optional[str] = None  # default: the sweep file's name
    base: Union[str, dict] = {}  # an experiment YAML (relative to this file) or the experiment inline
    set: list[str] = []  # `key.path=value` overrides of the base, as `clue-run train --set`
    grid: dict[str, list[Any]] = {}  # key (dotted, or an alias: tasks, models, seeds, lr, methods) → its values
    seeds: list[int] = []  # shorthand for grid train.seed
    output_dir: Optional[str] = None  # default results/sweeps/<name>
    launcher: Literal["local", "ray", "slurm"] = "local"
    workers: Optional[int] = Field(None, ge=1)  # concurrent runs (local CPU workers; ray/slurm: a cap)
    gpus: Optional[list[int]] = None  # local: the GPUs to give one slot each (default: all visible)
    retries: int = Field(1, ge=0)  # extra attempts for a failed run (a resumable one resumes)
    # as each run finishes: score its best checkpoint on these splits too (its scores.json), e.g.
    # FewCLUE's `heldout`; `clue-run report --scored-on SPLIT` reports them
    evaluate: list[str] = []
    ray: RayOptions = RayOptions()
    slurm: SlurmOptions = SlurmOptions()


@dataclass
class Cell:
    index: int
    run_id: str
    run_dir: Path
    cfg: ExperimentConfig
    hparams: dict[str, Any]  # the grid values the report does not tell apart (the selection's choices)

    @property
    def task(self) -> str:
        return self.cfg.run_name

    @property
    def seed(self) -> int:
        return self.cfg.train.seed

    @property
    def hparam_label(self) -> str:
        return ",".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in self.hparams.items())

    def state(self) -> str:
        """done, partial (resume state on disk), failed (last attempt failed) or new."""
        if (self.run_dir / RESULT_FILE).is_file():
            return "done"
        if (self.run_dir / RESUME_STATE).is_file():
            return "partial"
        status = read_status(self.run_dir)
        return "failed" if status.get("state") == "failed" else "new"


@dataclass
class Sweep:
    name: str
    source: Path
    config: SweepConfig
    directory: Path
    cells: list[Cell] = field(default_factory=list)


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else json.dumps(value, ensure_ascii=False, separators=(",", ":")) \
        if isinstance(value, (list, dict)) else str(value)


def _methods_value(value: Any) -> list:
    """A `methods` grid value: a name, one method mapping, a list of them, or none/[] for plain fine-tuning."""
    if value in (None, "none", []):
        return []
    items = value if isinstance(value, list) else [value]
    return [{"name": v} if isinstance(v, str) else v for v in items]


def run_id_of(cfg: ExperimentConfig) -> str:
    """The same resolved config (and seed) gives the same id wherever the sweep's results live."""
    resolved = cfg.model_dump(mode="json", exclude={"output_dir"})
    digest = hashlib.sha256(json.dumps(resolved, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]
    return f"{digest}-seed{cfg.train.seed}"


def _load_base(base: Union[str, dict], source: Path) -> dict:
    if isinstance(base, dict):
        return copy.deepcopy(base)
    path = Path(base)
    path = path if path.is_absolute() else source.parent / path
    if not path.is_file():
        raise ConfigError(f"{source}: base: experiment file not found: {path}")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def load_sweep(path: Path, overrides: list[str] = (), sweep_overrides: Optional[dict] = None) -> Sweep:
    """Read a sweep file and expand it into cells; every cell's config is validated (a bad one names its grid values)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw.update({k: v for k, v in (sweep_overrides or {}).items() if v is not None})
    try:
        config = SweepConfig.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{path}: invalid sweep config: {problems}") from None
    name = config.name or path.stem
    directory = Path(config.output_dir or Path("results") / "sweeps" / name)
    sweep = Sweep(name, path, config, directory)
    sweep.cells = expand(config, _load_base(config.base, path), [*config.set, *overrides], directory, str(path))
    return sweep


def _grid(config: SweepConfig, source: str) -> list[tuple[str, list]]:
    axes: dict[str, list] = {}
    for key, values in config.grid.items():
        key = ALIASES.get(key, key)
        if not values:
            raise ConfigError(f"{source}: grid.{key}: give at least one value")
        if key in axes:
            raise ConfigError(f"{source}: grid.{key} is given twice (an alias and its key?)")
        axes[key] = [_methods_value(v) for v in values] if key == "methods" else list(values)
    if config.seeds:
        if "train.seed" in axes:
            raise ConfigError(f"{source}: seeds and grid.train.seed both given; keep one")
        axes["train.seed"] = list(config.seeds)
    order = {"task": 0, "model.name": 1, "methods": 2, "train.seed": 9}  # tasks first, seeds last: reads naturally
    return sorted(axes.items(), key=lambda kv: order.get(kv[0], 3))


def expand(config: SweepConfig, base: dict, overrides: list[str], directory: Path, source: str) -> list[Cell]:
    axes = _grid(config, source)
    for item in overrides:
        key, value = parse_override(item)
        set_path(base, key, value)
    cells, seen = [], {}
    for index, values in enumerate(itertools.product(*(v for _, v in axes))):
        raw = copy.deepcopy(base)
        for (key, _), value in zip(axes, values):
            set_path(raw, key, value)
        raw["output_dir"] = str(directory)
        where = ", ".join(f"{k}={_short(v)}" for (k, _), v in zip(axes, values)) or "the base"
        cfg = build_config(raw, source=f"{source} (cell {index}: {where})")
        run_id = run_id_of(cfg)
        if run_id in seen:
            raise ConfigError(f"{source}: cells {seen[run_id]} and {index} resolve to the same run ({where}); "
                              "a grid key does not change the config?")
        seen[run_id] = index
        hparams = {k: v for (k, _), v in zip(axes, values) if k not in REPORT_KEYS}
        run_dir = directory / cfg.run_name / model_slug(cfg.model.name) / run_id
        cells.append(Cell(index, run_id, run_dir, cfg, hparams))
    return cells


def write_manifest(sweep: Sweep) -> None:
    """The cells and their grid values beside the runs, so a report of the sweep directory can tell them apart."""
    manifest = {"name": sweep.name, "source": str(sweep.source), "cells": [
        {"run_id": c.run_id, "dir": str(c.run_dir.relative_to(sweep.directory)), "task": c.task, "seed": c.seed,
         "hparams": c.hparams} for c in sweep.cells]}
    atomic_write_text(sweep.directory / MANIFEST_FILE, json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
    for cell in sweep.cells:
        if cell.state() != "done":
            atomic_write_text(cell.run_dir / CELL_FILE, yaml.safe_dump(cell.cfg.model_dump(mode="json"),
                                                                       allow_unicode=True, sort_keys=False))


# -- one cell, in whatever process the launcher gives it ---------------------------------------


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_status(run_dir: Path, **status) -> None:
    atomic_write_text(run_dir / STATUS_FILE, json.dumps({**status, "host": socket.gethostname(), "pid": os.getpid(),
                                                         "at": time.time()}) + "\n")


# -- selection ----------------------------------------------------------------------------------


def select_best(sweep: Sweep, results: dict[str, RunResult]) -> dict[tuple, dict]:
    """Per task × model × method: the hyperparameters with the best mean (over seeds) of the main metric on the eval
    split (dev), among finished cells. Returns {(task, model, method): {"hparams", "score", "run_ids", "scores"}}."""
    groups: dict[tuple, dict[str, list]] = {}
    for cell in sweep.cells:
        result = results.get(cell.run_id)
        if result is None:
            continue
        system = (cell.task, result.model.slug, result.method)
        score = result.main_score
        entry = groups.setdefault(system, {}).setdefault(cell.hparam_label, {"hparams": cell.hparams, "run_ids": [],
                                                                            "scores": []})
        entry["run_ids"].append(cell.run_id)
        entry["scores"].append(score)
    chosen = {}
    for system, options in groups.items():
        label, best = max(options.items(), key=lambda kv: sum(kv[1]["scores"]) / len(kv[1]["scores"]))
        chosen[system] = {**best, "label": label, "score": sum(best["scores"]) / len(best["scores"]),
                          "candidates": len(options)}
    return chosen
