"""Decoder fine-tuning with the `cls` head: tiny random GPT-2, Qwen2 and Llama checkpoints whose
configs name no pad token (as those models ship; tests/decoders.py) train a few steps, reload through `clue-run eval`
with the run.json score, and `best/` loads in plain `AutoModelForSequenceClassification` (with its
tokenizer) with the logits clue-run computes; with full fine-tuning and with LoRA (merged weights).
"""

from __future__ import annotations

import pytest
import torch

from clue_runner import api
from clue_runner.config import build_config
from clue_runner.api import load_task_split

ARCHS = ["gpt2", "qwen2", "llama"]
# peft's default LoRA targets (peft.utils.constants), which `target_modules: auto` picks
LORA_TARGETS = {"gpt2": {"c_attn"}, "qwen2": {"q_proj", "v_proj"}, "llama": {"q_proj", "v_proj"}}


def _train(model_dir, data_dir, out, methods=(), task="fewclue_eprstmt", lr=1e-3):
    cfg = build_config({
        "task": task, "model": {"name": str(model_dir)}, "methods": list(methods),
        "data": {"dir": str(data_dir), "variant": "0", "max_length": 64,
                 "max_train_examples": 16},
        "train": {"batch_size": 8, "max_steps": 3, "lr": lr, "eval_batch_size": 8, "seed": 1},
        "output_dir": str(out),
    })
    return api.train(cfg, log=lambda _: None)


def _plain_logits(best, texts, pairs=None, batch_size=8, side="right"):
    """Logits of best/ in plain transformers: its own tokenizer, padded batches."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(best)
    tokenizer.padding_side = side
    model = AutoModelForSequenceClassification.from_pretrained(best).eval()
    out = []
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(texts[i:i + batch_size], pairs[i:i + batch_size] if pairs else None, padding=True,
                          truncation=True, max_length=64, return_tensors="pt")
        kwargs = {}
        if side == "left":  # positions follow the mask, so the real tokens sit where right padding puts them
            kwargs["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            out.append(model(**batch, **kwargs).logits)
    return torch.cat(out), tokenizer, model


def _check_best_in_plain_transformers(run_dir):
    run = api.load_run(run_dir, "cpu")
    data = load_task_split(run.cfg, run.task, "dev")
    ours, _ = run.logits(run.featurize_split(data))
    texts = [ex.text_a for ex in data.examples]
    plain, tokenizer, model = _plain_logits(run_dir / "best", texts)
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "right"
    assert model.config.pad_token_id == tokenizer.pad_token_id  # the last-non-pad pooling reads this id
    assert torch.allclose(plain, torch.from_numpy(ours).float(), atol=1e-5)
    return plain, texts


@pytest.mark.parametrize("arch", ARCHS)
def test_decoder_cls_reloads_and_loads_in_plain_transformers(arch, tiny_decoder, data_dir, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    model_dir = tiny_decoder(arch)
    # As they ship: no pad id in the config; GPT-2 and Llama tokenizers have no pad token, Qwen2's pads with EOS
    assert AutoConfig.from_pretrained(model_dir).pad_token_id is None
    assert (AutoTokenizer.from_pretrained(model_dir).pad_token is None) == (arch != "qwen2")
    run_dir = _train(model_dir, data_dir, tmp_path)
    result = api.read_run(run_dir)
    assert result.steps == 3
    assert result.model.load_report.new_head == ["score.weight"]  # only the classifier is new
    again = api.evaluate(run_dir, device="cpu")  # what `clue-run eval` runs
    assert again["metrics"] == pytest.approx(result.best.metrics, abs=1e-9)
    plain, texts = _check_best_in_plain_transformers(run_dir)
    # Padding does not change a prediction: one example at a time, batched with right padding, and
    # batched with left padding (positions from the mask) agree.
    alone, _, _ = _plain_logits(run_dir / "best", texts, batch_size=1)
    left, _, _ = _plain_logits(run_dir / "best", texts, side="left")
    assert torch.allclose(alone, plain, atol=1e-5) and torch.allclose(left, plain, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_decoder_cls_with_lora_exports_merged_weights(arch, tiny_decoder, data_dir, tmp_path):
    from safetensors.torch import load_file

    model_dir = tiny_decoder(arch)
    run_dir = _train(model_dir, data_dir, tmp_path, methods=[{"name": "lora", "r": 4}], lr=1e-2)
    result = api.read_run(run_dir)
    assert result.method == "finetune+lora(r=4)"  # the report row, beside encoder rows on the decoder's slug
    run = api.load_run(run_dir, "cpu")
    adapted = {name.rsplit(".", 1)[-1] for name, module in run.head.named_modules() if hasattr(module, "lora_A")}
    assert adapted == LORA_TARGETS[arch]
    assert result.model.trainable_parameters < result.model.parameters / 10  # adapters + classifier
    again = api.evaluate(run_dir, device="cpu")
    assert again["metrics"] == pytest.approx(result.best.metrics, abs=1e-9)
    _check_best_in_plain_transformers(run_dir)  # merged weights give the unmerged model's logits
    before, after = load_file(str(model_dir / "model.safetensors")), load_file(str(run_dir / "best" / "model.safetensors"))
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    assert changed and all(any(t in k for t in LORA_TARGETS[arch]) for k in changed)  # the adapters were merged in


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_heads_on_a_bare_decoder_read_its_last_real_token(arch, tiny_decoder, e5_dir):
    """On a `base` backbone (multi-task runs, the choice head, `cls` pooling) a decoder's sequence vector is its
    last real token, whatever the padding; an encoder's stays the first ([CLS]). The first token of a decoder has
    seen nothing else, so a head reading it could not tell texts that share their first character apart."""
    from transformers import AutoTokenizer

    from clue_runner.heads import resolve_head
    from clue_runner.models.backbone import load_backbone
    from clue_runner.tasks import get_task

    path = tiny_decoder(arch)
    backbone = load_backbone(str(path), "base").eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = ["好的很好", "好的", "好的很坏"]  # the same first characters
    ids = [tokenizer(t)["input_ids"] for t in texts]
    width = max(map(len, ids))
    batch = {"input_ids": torch.tensor([x + [1] * (width - len(x)) for x in ids]),
             "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])}
    with torch.no_grad():
        pooled = backbone.summary(backbone(batch).last_hidden_state, batch["attention_mask"])
        for row, x in enumerate(ids):  # brute force: each text alone, its last position
            alone = backbone({"input_ids": torch.tensor([x]), "attention_mask": torch.ones(1, len(x), dtype=torch.long)})
            assert torch.allclose(pooled[row], alone.last_hidden_state[0, -1], atol=1e-5)
        head_cls, params = resolve_head(get_task("fewclue_eprstmt"), None)
        torch.manual_seed(0)
        logits = head_cls(backbone, get_task("fewclue_eprstmt"), params, 0.0).eval()(**batch)
    assert not torch.allclose(logits[0], logits[2], atol=1e-4)  # texts differing only at the end
    hidden = torch.arange(2 * 4 * 1.0).view(2, 4, 1)
    left = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    assert backbone.summary(hidden, left)[:, 0].tolist() == [3.0, 7.0]  # left padding: the last position
    encoder = load_backbone(str(e5_dir), "base")
    assert not encoder.decoder and encoder.summary(hidden, left)[:, 0].tolist() == [0.0, 4.0]
