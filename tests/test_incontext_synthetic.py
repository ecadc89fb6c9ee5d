"""Synthetic proof of in-context scoring (as tests/test_prompts.py proves PET): a tiny GPT-2 pretrained
here on a generated language is scored by the `icl` head exactly as a hub decoder would be.

The language: a sentence is 3 characters of one group (甲乙丙丁戊己 or 子丑寅卯辰巳), then
"：" and a verdict word (好 / 坏). Zero-shot: pretrained with group 1 → 好, the model scores held-out
sentences ≥ 0.9 while the untrained one is at chance.

Not here: k-shot beating zero-shot on a mapping only the demonstrations show (a group → word
mapping flipped per pretraining episode) needs an induction head; a 2-layer GPT-2 had not learnt one
after 600 steps (118 s of CPU: 4-shot 0.515 = zero-shot 0.515), too long for a test: bench/icl_kshot.py.
"""

from __future__ import annotations

import random

import torch

from clue_runner.data.splits import Example
from clue_runner.heads.incontext import IclHead, IclParams
from clue_runner.models.backbone import Backbone, decoder_tokenizer as pad_decoder
from clue_runner.tasks.spec import TaskSpec

from decoders import decoder_tokenizer

GROUPS = ("甲乙丙丁戊己", "子丑寅卯辰巳")
WORDS = ("好", "坏")
TASK = TaskSpec.model_validate({
    "name": "synthetic_verdict", "version": 1, "data": {"dir": "unused", "splits": {"train": "x", "dev": "y"}},
    "inputs": {"text_a": "text"}, "label": {"values": ["good", "bad"]}, "metrics": ["accuracy"], "main_metric": "accuracy",
    "lm": {"templates": {"verdict": "{text_a}："}, "label_words": {"good": WORDS[0], "bad": WORDS[1]}, "separator": "\n"}})


def sentence(rng, group: int) -> str:
    return "".join(rng.choice(GROUPS[group]) for _ in range(3))


def examples_of(rng, n: int, flip: int = 0) -> list[Example]:
    out = []
    for i in range(n):
        group = rng.randrange(2)
        out.append(Example(id=i, text_a=sentence(rng, group), text_b=None, label=group ^ flip))
    return out


def episode(rng, flip_at_random: bool, sentences: int = 1) -> str:
    flip = rng.randrange(2) if flip_at_random else 0
    return "\n".join(f"{sentence(rng, g)}：{WORDS[g ^ flip]}" for g in (rng.randrange(2) for _ in range(sentences)))


def tiny_gpt2(seed: int = 0, width: int = 32, heads: int = 2):
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = decoder_tokenizer(sorted(set("".join(GROUPS) + "".join(WORDS) + "：")))
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=width, n_layer=2, n_head=heads, n_positions=128,
                        bos_token_id=0, eos_token_id=1)
    return GPT2LMHeadModel(config), tokenizer


def pretrain(model, tokenizer, flip_at_random: bool, steps: int, seed: int = 0, sentences: int = 1) -> None:
    rng = random.Random(seed)
    pad_decoder(tokenizer, "right")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = tokenizer([episode(rng, flip_at_random, sentences) for _ in range(32)], return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def accuracy(model, tokenizer, examples, k: int = 0, pool=None) -> float:
    head = IclHead(Backbone(model, "causal_lm"), TASK, IclParams(k=k, balanced=True, seed=1)).eval()
    head.pool = pool or []
    enc = head.featurize(examples, tokenizer, 128)
    from clue_runner.features import collate

    with torch.no_grad():
        scores = head(**collate(enc, list(range(len(enc))), tokenizer.pad_token_id, targets=False))
    return float((head.predict(scores) == enc.labels).mean())


def test_pretrained_tiny_gpt2_scores_zero_shot_untrained_is_chance():
    model, tokenizer = tiny_gpt2()
    held_out = examples_of(random.Random(99), 200)
    untrained = accuracy(model, tokenizer, held_out)
    pretrain(model, tokenizer, flip_at_random=False, steps=100)
    trained = accuracy(model, tokenizer, held_out)
    print(f"synthetic zero-shot: untrained {untrained:.3f}, pretrained {trained:.3f}")
    assert trained >= 0.9, trained
    assert 0.3 <= untrained <= 0.7, untrained
