"""P-tuning for GPT (`head: {name: ptuning_gpt}`) on tiny random decoders (tests/decoders.py): label
scores equal a brute-force causal-LM forward, only the prompt vectors train by default, a few steps
reduce the loss, and a run reloads with identical predictions and its run.json score."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clue_runner import api
from clue_runner.config import build_config
from clue_runner.engine.build import build, load_task_split
from clue_runner.features.batching import collate


def _cfg(model_dir, data_dir, out, task="fewclue_eprstmt", head=None, steps=6, methods=()):
    return build_config({
        "task": task, "model": {"name": str(model_dir)}, "head": {"name": "ptuning_gpt", **(head or {})},
        "methods": list(methods),
        "data": {"dir": str(data_dir), "variant": "0", "max_length": 48, "max_train_examples": 16},
        "train": {"batch_size": 8, "max_steps": steps, "lr": 1e-3, "head_lr": 5e-2, "eval_batch_size": 8, "seed": 1},
        "output_dir": str(out),
    })


def _batch(built, n=6, split="train"):
    enc = built.featurize_split(load_task_split(built.cfg, built.task, split, limit=n))
    return enc, collate(enc, range(n), built.tokenizer.pad_token_id)


def _brute_force(model_dir, head, enc, example: int, label: int) -> float:
    """log p(label word | prompted context) from one unpadded full forward of AutoModelForCausalLM."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    seg = enc.segments[""]
    k = int(enc.item_arrays["word_lengths"][example, label])
    word = enc.item_arrays["word_ids"][example, label, :k]
    context = seg.ids[seg.offsets[example]:seg.offsets[example + 1]]
    ids = torch.from_numpy(np.concatenate([context, word]).astype(np.int64))
    embeds = lm.get_input_embeddings()(ids).clone()
    embeds[torch.from_numpy(enc.item_arrays["prompt_positions"][example])] = head.prompt.detach()
    with torch.no_grad():
        logp = lm(inputs_embeds=embeds[None]).logits[0].log_softmax(-1)
    return sum(logp[len(ids) - k + j - 1, ids[len(ids) - k + j]].item() for j in range(k))


@pytest.mark.parametrize("arch,task,words", [
    ("gpt2", "fewclue_eprstmt", None),  # one-token words: read from the context's last position
    ("llama", "fewclue_ocnli", None),  # two-token words: a continuation of the cache; a pair task
    ("qwen2", "fewclue_eprstmt", {"Negative": "不满意", "Positive": "好"}),  # words of different lengths
])
def test_label_scores_equal_a_brute_force_forward(arch, task, words, tiny_decoder, data_dir, tmp_path):
    model_dir = tiny_decoder(arch)
    built = build(_cfg(model_dir, data_dir, tmp_path, task=task, head={"label_words": words} if words else None), device="cpu")
    head = built.head.eval()
    enc, batch = _batch(built, n=4, split="dev")
    with torch.no_grad():
        scores = head(**batch)
    assert scores.shape == (4, len(built.task.label.values))
    for i in range(4):
        for c in range(scores.shape[1]):
            assert scores[i, c].item() == pytest.approx(_brute_force(model_dir, head, enc, i, c), abs=1e-4)
    if arch == "llama":  # the tokenizer's <s> leads; a pair's texts are split by a prompt vector
        assert enc.segments[""].ids[0] == built.tokenizer.bos_token_id
        assert enc.item_arrays["prompt_positions"].shape[1] == 8


@pytest.mark.parametrize("train_backbone", [False, True])
def test_prompt_vectors_train_and_the_backbone_is_frozen_unless_asked(train_backbone, tiny_decoder, data_dir, tmp_path):
    built = build(_cfg(tiny_decoder("gpt2"), data_dir, tmp_path, head={"train_backbone": train_backbone}), device="cpu")
    head = built.head.train()
    _, batch = _batch(built, n=8)
    optimizer = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=5e-2)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = head.loss(head(**batch), batch)
        loss.backward()
        if not losses:
            assert head.prompt.grad is not None and head.prompt.grad.abs().sum() > 0
            backbone_grads = [p.grad for p in head.backbone.parameters()]
            if train_backbone:
                assert all(g is not None for g in backbone_grads)
            else:
                assert all(not p.requires_grad for p in head.backbone.parameters())
                assert all(g is None for g in backbone_grads)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05


def test_with_lora_and_train_backbone_only_the_adapters_and_prompts_train(tiny_decoder, data_dir, tmp_path):
    cfg = _cfg(tiny_decoder("llama"), data_dir, tmp_path, head={"train_backbone": True}, methods=[{"name": "lora"}])
    head = build(cfg, device="cpu").head
    trainable = {name for name, p in head.named_parameters() if p.requires_grad}
    assert "prompt" in trainable and len(trainable) > 1
    assert all(name == "prompt" or "lora_" in name for name in trainable)  # not Llama's untied LM head


def test_lm_loss_is_the_gold_words_negative_log_likelihood(tiny_decoder, data_dir, tmp_path):
    built = build(_cfg(tiny_decoder("qwen2"), data_dir, tmp_path, head={"loss": "lm"}), device="cpu")
    head = built.head.eval()
    _, batch = _batch(built, n=4)
    batch["labels"][1] = -100  # an unlabelled row adds nothing
    with torch.no_grad():
        scores = head(**batch)
        loss = head.loss(scores, batch)
    gold = [-scores[i, batch["labels"][i]].item() for i in (0, 2, 3)]
    assert loss.item() == pytest.approx(sum(gold) / 3, abs=1e-5)


def test_run_reloads_with_identical_predictions(tiny_decoder, data_dir, tmp_path):
    from safetensors.torch import load_file

    model_dir = tiny_decoder("gpt2")
    run_dir = api.train(_cfg(model_dir, data_dir, tmp_path), log=lambda _: None)
    result = api.read_run(run_dir)
    assert result.method.startswith("finetune+ptuning_gpt")
    assert result.model.trainable_parameters == 8 * 32  # the prompt vectors alone
    before, after = load_file(str(model_dir / "model.safetensors")), load_file(str(run_dir / "best" / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before if k in after)  # the frozen LM is saved as it was
    again = api.evaluate(run_dir, device="cpu")  # what `clue-run eval` runs
    assert again["metrics"] == pytest.approx(result.best.metrics, abs=1e-9)
    first, second = api.load_run(run_dir, "cpu"), api.load_run(run_dir, "cpu")
    enc = first.featurize_split(load_task_split(first.cfg, first.task, "dev"))
    a, b = first.logits(enc)[0], second.logits(enc)[0]
    assert np.array_equal(a, b) and np.array_equal(first.predict(torch.from_numpy(a)), second.predict(torch.from_numpy(b)))


# Synthetic proof (as tests/test_prompts.py proves PET): a tiny GPT-2 pretrained here on a generated
# language where "<3 characters of group g>：" is followed by verdict word g and "<…>。" by the other
# word. Frozen, with ONE trailing prompt vector started at "。"'s embedding, it scores the task near 0;
# P-tuning that vector alone (32 numbers) on 32 labelled sentences moves it to mean "：".
GROUPS, VERDICTS = ("甲乙丙丁戊己", "子丑寅卯辰巳"), ("好", "坏")


def _sentences(rng, n):
    from clue_runner.data.splits import Example

    groups = [rng.randrange(2) for _ in range(n)]
    return [Example(id=i, text_a="".join(rng.choice(GROUPS[g]) for _ in range(3)), text_b=None, label=g)
            for i, g in enumerate(groups)]


def _pretrained_gpt2(steps=200):
    import random

    from transformers import GPT2Config, GPT2LMHeadModel

    from clue_runner.models.backbone import decoder_tokenizer as pad_with_eos
    from decoders import decoder_tokenizer

    tokenizer = pad_with_eos(decoder_tokenizer(sorted(set("".join(GROUPS) + "".join(VERDICTS) + "：。"))), "right")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                       bos_token_id=0, eos_token_id=1))
    rng, optimizer = random.Random(0), torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        texts = [f"{ex.text_a}：{VERDICTS[ex.label]}" if i % 2 else f"{ex.text_a}。{VERDICTS[1 - ex.label]}"
                 for i, ex in enumerate(_sentences(rng, 32))]
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), tokenizer


def test_synthetic_ptuning_recovers_a_missing_prompt_on_a_frozen_lm():
    import random

    from clue_runner.heads.causal_prompt import PtuningGptHead, PtuningGptParams
    from clue_runner.models.backbone import Backbone
    from clue_runner.tasks.spec import TaskSpec

    task = TaskSpec.model_validate({
        "name": "synthetic_verdict", "version": 1, "data": {"dir": "unused", "splits": {"train": "x", "dev": "y"}},
        "inputs": {"text_a": "text"}, "label": {"values": ["0", "1"]}, "metrics": ["accuracy"], "main_metric": "accuracy",
        "prompt": {"templates": {"t": "{text_a}[MASK]"}, "label_words": {"0": VERDICTS[0], "1": VERDICTS[1]}}})
    model, tokenizer = _pretrained_gpt2()
    head = PtuningGptHead(Backbone(model, "causal_lm"), task, PtuningGptParams(prompt_length=1, before=0), 0.0)
    start = tokenizer("。", add_special_tokens=False)["input_ids"]
    head.prompt.data.copy_(model.get_input_embeddings().weight[start].detach())
    rng = random.Random(1)
    train, held_out = _sentences(rng, 32), _sentences(rng, 200)

    def batch_of(examples):
        return collate(head.featurize(examples, tokenizer, 16), range(len(examples)), tokenizer.pad_token_id)

    def accuracy():
        with torch.no_grad():
            scores = head.eval()(**batch_of(held_out))
        return float((head.predict(scores) == np.asarray([ex.label for ex in held_out])).mean())

    before = accuracy()
    optimizer = torch.optim.Adam([head.prompt], lr=5e-2)
    batch = batch_of(train)
    for _ in range(60):
        head.train()
        loss = head.loss(head(**batch), batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = accuracy()
    print(f"synthetic P-tuning GPT: frozen LM, one prompt vector: before {before:.3f}, after {after:.3f}")
    assert after >= 0.9 and before <= 0.1, (before, after)
    assert all(not p.requires_grad for p in head.backbone.parameters())


def test_refusals_are_one_line(tiny_model, tiny_decoder, data_dir, tmp_path):
    from clue_runner.errors import ClueRunError, ConfigError

    with pytest.raises(ConfigError, match="head.before 8: at most prompt_length - 1"):
        _cfg(tiny_decoder("gpt2"), data_dir, tmp_path, task="fewclue_bustm", head={"before": 8})
    with pytest.raises(ClueRunError) as err:  # an encoder: no pretrained LM head to score a word with
        build(_cfg(tiny_model, data_dir, tmp_path), device="cpu")
    assert "\n" not in str(err.value)
