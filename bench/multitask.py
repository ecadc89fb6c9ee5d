"""Multi-task loss weightings against single-task runs, for a `clue-run report` table.

From a multi-task config (default configs/multitask_fewclue.yaml): every task alone (its entry as a
single-task config), then the tasks together under each weighting; every run capped at --steps
optimizer steps, for each seed. Gradient-based weightings (grad_norm, mgda, primary_auxiliary) take
one batch of every task per step, the others one scheduled task's batch (the config's schedule).
primary_auxiliary makes the first task primary.

    python bench/multitask.py --steps 300 --runs-dir /tmp/mt-runs [--seeds 1,2] [--weightings fixed,mgda]
    clue-run report /tmp/mt-runs --format markdown

Runs one after another in this process; an existing --runs-dir gains runs (the report keeps the newest
per system and seed with --latest).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clue_runner import api  # noqa: E402
from clue_runner.config import build_config, load_config  # noqa: E402
from clue_runner.multitask.weighting import weighting_class  # noqa: E402
from clue_runner.plugins import WEIGHTINGS  # noqa: E402


def multitask_raw(base: dict, weighting: str) -> dict:
    raw = copy.deepcopy(base)
    mt = raw.setdefault("multitask", {}) or {}
    raw["multitask"] = mt
    mt["weighting"] = weighting
    mt.pop("per_step", None)
    if weighting_class(weighting).needs_all_tasks:  # every task in every step: no schedule to draw from
        for key in ("schedule", "temperature", "frequencies"):
            mt.pop(key, None)
    for i, entry in enumerate(raw["tasks"]):
        entry.pop("role", None)
        if weighting == "primary_auxiliary":
            entry["role"] = "primary" if i == 0 else "auxiliary"
    return raw


def configs(base: dict, weightings: list[str], seeds: list[int], steps: int, runs_dir: Path, singles: bool,
            eval_limit: int | None, data_dir: str | None = None):
    common = {"output_dir": str(runs_dir)}
    if data_dir:
        base = {**base, "data": {**base["data"], "dir": data_dir}}
    for seed in seeds:
        cfg = build_config(base)
        jobs = []
        if singles:
            jobs += [cfg.task_config(entry).model_dump(mode="json") for entry in cfg.tasks]
        jobs += [build_config(multitask_raw(base, w)).model_dump(mode="json") for w in weightings]
        for raw in jobs:
            raw = {**raw, **common}
            raw["train"] = {**raw["train"], "seed": seed, "max_steps": steps}
            if eval_limit:
                raw["data"] = {**raw["data"], "max_eval_examples": eval_limit}
            yield build_config(raw, source=f"bench (seed {seed})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "multitask_fewclue.yaml")
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps per run")
    parser.add_argument("--runs-dir", type=Path, required=True)
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--weightings", default=",".join(WEIGHTINGS.names()))
    parser.add_argument("--no-single", action="store_true", help="skip the single-task runs")
    parser.add_argument("--eval-limit", type=int, default=None,
                        help="score on the first N dev examples of each task (smoke runs: dev files may be sorted by label)")
    parser.add_argument("--dev-subset", type=int, default=None,
                        help="score on a seeded random N of each task's dev file (FewCLUE dev_few_all), same for every run")
    args = parser.parse_args(argv)
    base = load_config(args.config).model_dump(mode="json")
    base = yaml.safe_load(yaml.safe_dump(base))  # plain data
    weightings = [w.strip() for w in args.weightings.split(",") if w.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    data_dir = None
    if args.dev_subset:
        sys.path.insert(0, str(ROOT / "bench"))
        from subsets import subset_data

        from clue_runner.data.readers import resolve_data_dir
        from clue_runner.tasks import get_task

        limits = {}
        for entry in base["tasks"]:
            task = get_task(entry["name"])
            variant = (entry.get("data") or {}).get("variant") or base["data"].get("variant")
            limits[task.data.dir] = {Path(task.split_file("dev", variant)).name + ".gz": args.dev_subset}
        data_dir = subset_data(str(resolve_data_dir(base["data"].get("dir"))), ROOT / "bench" / f"data-multitask-{args.dev_subset}", limits)
    done = set()
    if args.runs_dir.is_dir():  # a re-started bench skips the single-task runs it already has
        from clue_runner.report import load_runs

        done = {(r.task, r.method, r.seed) for r in load_runs([args.runs_dir])}
    for cfg in configs(base, weightings, seeds, args.steps, args.runs_dir, not args.no_single, args.eval_limit, data_dir):
        if not cfg.is_multitask and (cfg.task, cfg.method_label(), cfg.train.seed) in done:
            continue
        print(f"== {cfg.run_name} · {cfg.method_label()} · seed {cfg.train.seed}", file=sys.stderr, flush=True)
        api.train(cfg)
    print(f"clue-run report {args.runs_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
