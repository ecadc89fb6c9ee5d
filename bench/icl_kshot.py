"""k-shot against zero-shot on a generated task that only the demonstrations can solve (CPU).

The task: a text is a filler character (子…木: texts differ, as the icl head never shows a demonstration
with the query's own text) and a key (甲 or 乙); the template `{text_a}` with answer `{label}` renders a
line "亥乙坏", demonstrations joined by newlines. Pretraining episodes (12 lines) draw their own random key
→ verdict mapping over 8 keys, mixed 3:1 with repeated random characters (copy data, for induction
heads), so a key's verdict is known only from earlier lines of the same episode. Queries and the
demonstration pool share one fixed mapping (甲→好 乙→坏, then the swapped one): zero-shot cannot know
it, and its predictions are the same under both mappings, so their mean is 0.5 by construction. A
2-layer GPT-2 (hidden 128, 4 heads, lr 1e-3, 200 warm-up steps, batch 64) is pretrained here and
scored by the `icl` head (balanced demonstrations, seed 1) on 200 held-out queries, pool of 40.

    PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 19 python bench/icl_kshot.py --steps 2000

Measured 2026-12-03 (CPU, 1 thread, 377 s process CPU in all; bench/results/icl_kshot-20261203-2128.md):
mapping 甲→好 乙→坏: zero-shot 0.490, 1-shot 0.735, 4-shot 0.490; swapped: 0.510, 0.765, 0.510.
Mean over the two mappings: zero-shot 0.500, 1-shot 0.750, 4-shot 0.500. 1-shot beats zero-shot as
an exact recall would (0.75 = the demonstration has the query's key half of the time). 4-shot does NOT:
direct log-probabilities show the model recalls only from the FIRST line of the context (a positional
shortcut, not a general induction head): "木乙坏\n亥乙" → p(坏) 0.87, but with 乙's lines in positions 1
and 3 of 4 the verdict swap leaves the scores unchanged (log p 好 -0.86, 坏 -0.55 either way).
An earlier version (2 layers, hidden 64, 3 fillers+key per text, no copy data) was at chance for all k
after 8,000 steps (305 s).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from decoders import decoder_tokenizer  # noqa: E402
from test_incontext_synthetic import WORDS, accuracy  # noqa: E402

from clue_runner.data.splits import Example  # noqa: E402
from clue_runner.models.backbone import decoder_tokenizer as pad_decoder  # noqa: E402
from clue_runner.tasks.spec import TaskSpec  # noqa: E402

KEYS = "甲乙丙丁戊己庚辛"  # pretraining keys; the evaluation uses the first two
FILLER = "子丑寅卯辰巳午未申酉戌亥山水火木"
CHARS = KEYS + FILLER + "".join(WORDS)
TASK = TaskSpec.model_validate({
    "name": "synthetic_recall", "version": 1, "data": {"dir": "unused", "splits": {"train": "x", "dev": "y"}},
    "inputs": {"text_a": "text"}, "label": {"values": ["good", "bad"]}, "metrics": ["accuracy"], "main_metric": "accuracy",
    "lm": {"templates": {"recall": "{text_a}"}, "label_words": {"good": WORDS[0], "bad": WORDS[1]}, "separator": "\n"}})


def episode(rng: random.Random, lines: int = 12) -> str:
    """Lines filler+key+verdict under this episode's own key → verdict mapping."""
    mapping = {k: rng.choice(WORDS) for k in KEYS}
    active = rng.sample(KEYS, rng.randint(2, len(KEYS)))  # few keys (as in the evaluation) or many
    keys = [rng.choice(active) for _ in range(lines)]
    return "\n".join(rng.choice(FILLER) + k + mapping[k] for k in keys)


def repeated(rng: random.Random, length: int = 24) -> str:
    """Random characters, then the same characters again: copy data that grows induction heads."""
    part = "".join(rng.choice(CHARS) for _ in range(length))
    return part + part


def pretrain(model, tokenizer, steps: int, log, batch: int = 64, warmup: int = 200) -> None:
    rng = random.Random(0)
    pad_decoder(tokenizer, "right")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    model.train()
    for step in range(steps):
        texts = [episode(rng) if rng.random() < 0.75 else repeated(rng) for _ in range(batch)]
        enc = tokenizer(texts, return_tensors="pt", padding=True)
        loss = model(**enc, labels=enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 250 == 0:
            log(f"step {step} loss {loss.item():.3f}")
    model.eval()


def examples(rng: random.Random, n: int, flip: int) -> list[Example]:
    """Filler+key texts over the evaluation keys 甲乙, labelled by the fixed mapping 甲→好, 乙→坏 (`flip`: swapped)."""
    keys = [rng.randrange(2) for _ in range(n)]
    return [Example(id=i, text_a=rng.choice(FILLER) + KEYS[k], text_b=None, label=k ^ flip) for i, k in enumerate(keys)]


def tiny_gpt2(width: int, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = decoder_tokenizer(CHARS)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=width, n_layer=2, n_head=4, n_positions=128,
                        bos_token_id=0, eos_token_id=1)
    return GPT2LMHeadModel(config), tokenizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--save", help="a folder to save the pretrained model and tokenizer in")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.process_time()
    model, tokenizer = tiny_gpt2(args.width)
    pretrain(model, tokenizer, args.steps, lambda line: print(line, flush=True))
    print(f"pretraining CPU {time.process_time() - start:.0f} s", flush=True)
    if args.save:
        model.save_pretrained(args.save)
        tokenizer.save_pretrained(args.save)
    for flip in (0, 1):  # zero-shot predictions are the same under both mappings: their mean is 0.5 exactly
        rng = random.Random(7)
        queries, pool = examples(rng, 200, flip), examples(rng, 40, flip)
        scores = {k: accuracy(model, tokenizer, queries, k=k, pool=pool, task=TASK) for k in (0, 1, 4)}
        print(f"mapping {'甲→坏 乙→好' if flip else '甲→好 乙→坏'}: "
              + ", ".join(f"{k}-shot {v:.3f}" for k, v in scores.items()), flush=True)
    print(f"steps {args.steps}, width {args.width}: CPU {time.process_time() - start:.0f} s")


if __name__ == "__main__":
    main()
