"""Synthetic proof of in-context scoring (as tests/test_prompts.py proves PET): a tiny GPT-2 pretrained
here on a generated language is scored by the `icl` head exactly as a hub decoder would be.

The language: a sentence is 3 characters of one group (甲乙丙丁戊己 or 子丑寅卯辰巳), then
"：" and a verdict word (好 / 坏). Zero-shot: pretrained with group 1 → 好, the model scores held-out
sentences ≥ 0.9 while the untrained one is at chance.

k-shot (slow, about a minute of CPU; bench/icl_kshot.py prints the table): a tiny Llama-shaped decoder
pretrained on episodes with a random key → verdict mapping each, scored on a mapping that only the
demonstrations show; zero-shot is 0.5 by construction, 4 demonstrations make it ≥ 0.8.
"""

from __future__ import annotations

import random
from typing import Callable, Optional

import pytest
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
    train_lm(model, tokenizer, lambda rng: episode(rng, flip_at_random, sentences), steps, seed=seed)


def train_lm(model, tokenizer, draw: Callable, steps: int, seed: int = 0, lr: float = 3e-3, batch: int = 32,
             warmup: int = 1, clip: Optional[float] = None, log: Optional[Callable] = None) -> None:
    """Language-model pretraining on texts `draw(rng)`, linear warm-up over `warmup` steps."""
    rng = random.Random(seed)
    pad_decoder(tokenizer, "right")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    model.train()
    for step in range(steps):
        enc = tokenizer([draw(rng) for _ in range(batch)], return_tensors="pt", padding=True)
        loss = model(**enc, labels=enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)).loss
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if log is not None and step % 250 == 0:
            log(f"step {step} loss {loss.item():.3f}")
    model.eval()


def accuracy(model, tokenizer, examples, k: int = 0, pool=None, task: TaskSpec = TASK) -> float:
    head = IclHead(Backbone(model, "causal_lm"), task, IclParams(k=k, balanced=True, seed=1)).eval()
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


# k-shot: a recall task that only the demonstrations can solve
KEYS = "甲乙丙丁戊己庚辛"  # pretraining keys; the evaluation uses the first two
FILLER = "子丑寅卯辰巳午未申酉戌亥山水火木"  # texts differ, as the icl head never shows the query's own text
RECALL = TaskSpec.model_validate({
    "name": "synthetic_recall", "version": 1, "data": {"dir": "unused", "splits": {"train": "x", "dev": "y"}},
    "inputs": {"text_a": "text"}, "label": {"values": ["good", "bad"]}, "metrics": ["accuracy"], "main_metric": "accuracy",
    "lm": {"templates": {"recall": "{text_a}"}, "label_words": {"good": WORDS[0], "bad": WORDS[1]}, "separator": "\n"}})
RECALL_STEPS = 2500  # induction heads formed at 1,000–2,000 steps in 4 seeds out of 4


def recall_text(rng) -> str:
    """A quarter of the time 2–9 lines filler+key+verdict under the episode's own key → verdict mapping
    over 2–8 keys (a verdict is known only from an earlier line with the same key, at any position), else
    4–16 random characters twice (copy data, which grows induction heads: at 1:1 one seed in 4 had none
    after 2,500 steps)."""
    if rng.random() < 0.75:
        part = "".join(rng.choice(KEYS + FILLER + "".join(WORDS)) for _ in range(rng.randint(4, 16)))
        return part + part
    mapping = {key: rng.choice(WORDS) for key in KEYS}
    active = rng.sample(KEYS, rng.randint(2, len(KEYS)))
    keys = [rng.choice(active) for _ in range(rng.randint(2, 9))]
    return "\n".join(rng.choice(FILLER) + key + mapping[key] for key in keys)


def recall_examples(rng, n: int, flip: int) -> list[Example]:
    """Filler+key texts over the keys 甲乙, labelled by the fixed mapping 甲→好 乙→坏 (`flip`: swapped)."""
    keys = [rng.randrange(2) for _ in range(n)]
    return [Example(id=i, text_a=rng.choice(FILLER) + KEYS[k], text_b=None, label=k ^ flip) for i, k in enumerate(keys)]


def tiny_llama(seed: int = 0, width: int = 64, layers: int = 2, heads: int = 4):
    """A Llama-shaped decoder: rotary positions make a previous-token head easy to learn, which GPT-2's
    learned absolute positions did not within 3,000 steps (it recalled from the first line only)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = decoder_tokenizer(KEYS + FILLER + "".join(WORDS))
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=heads, intermediate_size=2 * width, max_position_embeddings=128,
                         bos_token_id=0, eos_token_id=1)
    return LlamaForCausalLM(config), tokenizer


def pretrained_recall(steps: int = RECALL_STEPS, seed: int = 0, log: Optional[Callable] = None):
    model, tokenizer = tiny_llama(seed)
    train_lm(model, tokenizer, recall_text, steps, seed=seed, lr=1e-3, warmup=100, clip=1.0, log=log)
    return model, tokenizer


def kshot_scores(model, tokenizer, shots=(0, 1, 2, 4), queries: int = 200, pool: int = 40) -> dict:
    """{flip: {k: accuracy}} on held-out queries under the mapping 甲→好 乙→坏 (flip 0) and the swapped one:
    zero-shot predictions do not depend on the mapping, so their mean over the two is 0.5 exactly."""
    out = {}
    for flip in (0, 1):
        rng = random.Random(7)
        held_out, demos = recall_examples(rng, queries, flip), recall_examples(rng, pool, flip)
        out[flip] = {k: accuracy(model, tokenizer, held_out, k=k, pool=demos, task=RECALL) for k in shots}
    return out


@pytest.mark.slow
def test_kshot_beats_zero_shot_on_a_mapping_only_the_demonstrations_show():
    model, tokenizer = pretrained_recall()
    scores = kshot_scores(model, tokenizer, shots=(0, 1, 4))
    mean = {k: (scores[0][k] + scores[1][k]) / 2 for k in scores[0]}
    print(f"synthetic recall: {scores}, mean {mean}")
    assert mean[0] == pytest.approx(0.5), mean  # by construction (see kshot_scores)
    assert mean[1] >= 0.6, mean  # exact recall: 0.75 (the one demonstration shows the query's key half the time)
    assert mean[4] >= 0.8, mean  # recalling from the first line only gives 0.75; any line: 1.0
