"""k-shot against zero-shot on a generated task that only the demonstrations can solve (CPU).

The task: a text is a filler character (子…木: texts differ, as the icl head never shows a demonstration
with the query's own text) and a key (甲 or 乙); the template `{text_a}` with answer `{label}` renders a
line "亥乙坏", demonstrations joined by newlines. Queries and the demonstration pool share one fixed
mapping (甲→好 乙→坏, then the swapped one): zero-shot cannot know it, and its predictions are the same
under both mappings, so their mean is 0.5 by construction.

The recipe (tests/test_incontext_synthetic.py: `recall_text`, `pretrained_recall`, `kshot_scores`): a
2-layer Llama-shaped decoder (hidden 64, 4 heads, MLP 128, rotary positions, no dropout) pretrained
2,000 steps (batch 32, AdamW lr 1e-3, 100 warm-up steps, clip 1.0) on half episodes of 2–9 lines
"filler key verdict" under the episode's own random mapping over 2–8 of 8 keys (a verdict is known
only from an earlier line with the same key, at any position), half random characters repeated once
(copy data). Scored by the `icl` head (balanced demonstrations, seed 1) on 200 held-out queries, a
pool of 40 labelled examples.

    PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 19 python bench/icl_kshot.py

Measured 2026-12-03 (CPU, 1 thread, 58 s process CPU in all; bench/results/icl_kshot-20261203-2254.md),
mean over the two mappings: zero-shot 0.500, 1-shot 0.725, 2-shot 1.000, 4-shot 1.000 (seed 0; seeds
1–3: 1-shot 0.64–0.66, 2- and 4-shot 1.000). The slow test in tests/test_incontext_synthetic.py runs the
same model and asserts 4-shot ≥ 0.8 (recall from the first line only would give 0.75).

History: bench/results/icl_kshot-20261203-2128.md — a 2-layer GPT-2 (hidden 128, 12-line episodes,
copy data 1:3) recalled from the first context line only: zero-shot 0.500, 1-shot 0.750, 4-shot 0.500.
Its learned absolute positions are the obstacle: GPT-2 (hidden 64 or 128, no dropout, this data) stayed
at 0.72–0.76 on a 4-demonstration probe and did not learn to copy (9 % next-token accuracy on the
repeated half of copy data after 2,000–3,000 steps), while the rotary-position decoder copies (≥ 90 %)
and recalls from any line after 1,000–2,000 steps.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_incontext_synthetic import RECALL_STEPS, kshot_scores, pretrained_recall  # noqa: E402

SHOTS = (0, 1, 2, 4)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=RECALL_STEPS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", help="a folder to save the pretrained model and tokenizer in")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.process_time()
    model, tokenizer = pretrained_recall(args.steps, args.seed, log=lambda line: print(line, flush=True))
    trained = time.process_time() - start
    if args.save:
        model.save_pretrained(args.save)
        tokenizer.save_pretrained(args.save)
    scores = kshot_scores(model, tokenizer, SHOTS)
    print("| mapping | " + " | ".join(f"{k}-shot" if k else "zero-shot" for k in SHOTS) + " |")
    for flip, name in ((0, "甲→好 乙→坏"), (1, "甲→坏 乙→好")):
        print(f"| {name} | " + " | ".join(f"{scores[flip][k]:.3f}" for k in SHOTS) + " |")
    print("| mean | " + " | ".join(f"{(scores[0][k] + scores[1][k]) / 2:.3f}" for k in SHOTS) + " |")
    print(f"steps {args.steps}, seed {args.seed}: pretraining CPU {trained:.0f} s, "
          f"in all {time.process_time() - start:.0f} s")


if __name__ == "__main__":
    main()
