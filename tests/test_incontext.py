"""In-context scoring (`icl` head): the shared-prefix log-likelihoods against a brute-force forward of
every (context + continuation), invariance to batch size and padding side, demonstrations,
calibration, and a run that reloads with its score."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clue_runner import api
from clue_runner.config import build_config
from clue_runner.data.splits import Example, load_split
from clue_runner.features import collate
from clue_runner.features.incontext import CONTENT_FREE, Renderer, draw_demonstrations, fit_context
from clue_runner.heads.incontext import IclHead, IclParams
from clue_runner.models import load_tokenizer
from clue_runner.models.backbone import load_backbone
from clue_runner.tasks import get_task
from clue_runner.tasks.spec import LmTemplate


def _head(path, task_name, data_dir, **options):
    task = get_task(task_name)
    head = IclHead(load_backbone(str(path), "causal_lm"), task, IclParams(**options)).eval()
    head.bind_data(SimpleNamespace(dir=str(data_dir), variant=None, on_bad_row="error", source="local"))
    return head, task


def _encoded(head, task, path, data_dir, n=12, max_length=160):
    tokenizer = load_tokenizer(str(path))
    examples = load_split(task, "dev", data_dir=data_dir, limit=n).examples
    return head.featurize(examples, tokenizer, max_length), tokenizer


def _scores(head, enc, pad_id, batch_size):
    totals = []
    for start in range(0, len(enc), batch_size):
        batch = collate(enc, np.arange(start, min(start + batch_size, len(enc))), pad_id, targets=False)
        with torch.no_grad():
            totals.append(head.loglikelihoods(batch["input_ids"], batch["attention_mask"], batch["continuation_ids"])[0])
    return torch.cat(totals)


def _brute_force(backbone, enc) -> torch.Tensor:
    """Σ log p(continuation) from one full forward of each (context + continuation), unpadded."""
    seg, conts = enc.segments[""], enc.item_arrays["continuation_ids"]
    out = torch.zeros(conts.shape[:2])
    for i in range(len(enc)):
        ctx = seg.ids[seg.offsets[i]: seg.offsets[i + 1]].tolist()
        for j, cont in enumerate(conts[i]):
            cont = [t for t in cont.tolist() if t >= 0]
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = backbone.model(input_ids=ids).logits[0].float().log_softmax(-1)
            out[i, j] = sum(logp[len(ctx) - 1 + t, tok] for t, tok in enumerate(cont))
    return out


@pytest.mark.parametrize("arch", ["gpt2", "qwen2", "llama", "mistral"])
def test_shared_prefix_equals_brute_force(arch, tiny_decoder, data_dir):
    path = tiny_decoder(arch)
    head, task = _head(path, "fewclue_tnews", data_dir, k=2)
    enc, tokenizer = _encoded(head, task, path, data_dir, n=4)
    assert enc.item_arrays["continuation_ids"].shape[1] == 15  # the full label set
    fast = _scores(head, enc, tokenizer.pad_token_id, 4)
    assert torch.allclose(fast, _brute_force(head.backbone, enc), atol=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_batch_size_and_padding_side_change_nothing(arch, tiny_decoder, data_dir):
    path = tiny_decoder(arch)
    results = {}
    for side in ("left", "right"):
        head, task = _head(path, "fewclue_tnews", data_dir, k=2, padding_side=side)
        enc, tokenizer = _encoded(head, task, path, data_dir, n=32)
        lengths = enc.segments[""].lengths
        assert lengths.min() < lengths.max()  # the batches really are padded
        for batch_size in (1, 32):
            results[side, batch_size] = _scores(head, enc, tokenizer.pad_token_id, batch_size)
    reference = results["left", 1]
    for scores in results.values():
        assert torch.allclose(scores, reference, atol=1e-4)
        assert torch.equal(scores.argmax(-1), reference.argmax(-1))


def _ex(i, text, label):
    return Example(id=i, text_a=text, text_b=None, label=label)


def test_demonstrations_deterministic_exclude_the_query_and_balance():
    pool = [_ex(i, f"文本{i}", i % 3) for i in range(30)]
    query = _ex("q", "文本7", 1)  # the query's text is in the pool
    first = draw_demonstrations(pool, 8, seed=1, index=5, query=query)
    assert first == draw_demonstrations(pool, 8, seed=1, index=5, query=query)
    assert first != draw_demonstrations(pool, 8, seed=2, index=5, query=query)
    assert first != draw_demonstrations(pool, 8, seed=1, index=6, query=query)
    for seed in range(50):
        assert 7 not in draw_demonstrations(pool, 29, seed=seed, index=0, query=query)
    balanced = draw_demonstrations(pool, 6, seed=3, index=0, query=query, balanced=True)
    assert sorted(pool[i].label for i in balanced) == [0, 0, 1, 1, 2, 2]


class _CharTokenizer:
    def __call__(self, text):
        return {"input_ids": [ord(c) for c in text]}


def test_too_long_drops_demonstrations_from_the_left_never_the_query():
    demos = ["甲甲甲甲", "乙乙乙乙", "丙丙丙丙"]
    query = "问题问题问题"
    ids, kept = fit_context(_CharTokenizer(), demos, query, "\n", room=6 + 2 * 5)
    assert kept == 2 and "".join(map(chr, ids)) == "乙乙乙乙\n丙丙丙丙\n问题问题问题"
    ids, kept = fit_context(_CharTokenizer(), demos, query, "\n", room=3)  # not even the query fits
    assert kept == 0 and "".join(map(chr, ids)) == query
    renderer = Renderer(LmTemplate(prompt="{text_a}：", answer="{label}"), ["好", "坏"], "\n", k=3, seed=0)
    pool = [_ex(i, "长" * 20, i % 2) for i in range(5)]
    request = renderer.request(_CharTokenizer(), _ex("q", "短句", None), 0, pool, max_length=40)
    assert len(request.demonstrations) == 1 and "".join(map(chr, request.context)).endswith("\n短句：")


def test_calibration_subtracts_the_content_free_scores(tiny_decoder, data_dir, monkeypatch):
    path = tiny_decoder("gpt2")
    head, task = _head(path, "fewclue_eprstmt", data_dir, k=1, calibrate=True)
    enc, tokenizer = _encoded(head, task, path, data_dir, n=2)
    cf = enc.segments["cf_"]
    text = tokenizer.decode(cf.ids[cf.offsets[0]: cf.offsets[1]])
    assert text.endswith(head.template.prompt.replace("{text_a}", CONTENT_FREE))
    # Hand-computed: raw [-1, -2] (label 0 wins), content-free [-0.5, -3] → calibrated [-0.5, 1] (label 1 wins).
    calls = iter([[-1.0, -2.0], [-0.5, -3.0]])  # forward scores the query's context, then the content-free one

    def fake(ids, mask, conts):
        return torch.tensor([next(calls)] * len(ids)), torch.ones(len(ids), 2, dtype=torch.long)

    batch = collate(enc, np.arange(2), tokenizer.pad_token_id, targets=False)
    monkeypatch.setattr(head, "loglikelihoods", fake)
    scores = head(**batch)
    assert scores.tolist() == [[-0.5, 1.0], [-0.5, 1.0]]
    assert head.predict(scores).tolist() == [1, 1]


@pytest.mark.parametrize("normalize", ["mean", "char"])
def test_normalisation_divides_by_tokens_or_characters(normalize, tiny_decoder, data_dir):
    path = tiny_decoder("gpt2")
    head, task = _head(path, "fewclue_tnews", data_dir, normalize=normalize)
    enc, tokenizer = _encoded(head, task, path, data_dir, n=3)
    batch = collate(enc, np.arange(3), tokenizer.pad_token_id, targets=False)
    with torch.no_grad():
        total, tokens = head.loglikelihoods(batch["input_ids"], batch["attention_mask"], batch["continuation_ids"])
        scores = head(**batch)
    divisor = tokens if normalize == "mean" else batch["continuation_chars"]
    assert torch.allclose(scores, total / divisor, atol=1e-6)


def test_incontext_run_reloads_with_its_score(tiny_decoder, data_dir, tmp_path):
    cfg = build_config({
        "task": "fewclue_eprstmt", "model": {"name": str(tiny_decoder("qwen2"))},
        "head": {"name": "icl", "k": 2, "calibrate": True},
        "data": {"dir": str(data_dir), "max_length": 384, "variant": "0"},
        "train": {"max_steps": 0, "eval_batch_size": 8}, "output_dir": str(tmp_path)})
    run_dir = api.train(cfg, log=lambda _: None)
    result = api.read_run(run_dir)
    assert result.method.startswith("icl(k=2, calibrated, tpl ")
    assert result.head["hash"] in result.method and "{text_a}" in result.head["prompt"]
    shown = result.head["demonstrations"]  # every scored example's demonstrations, by id
    assert len(shown) == result.data.eval.examples and all(len(ids) <= 2 for ids in shown.values())
    assert sum(len(ids) == 2 for ids in shown.values()) > len(shown) / 2  # the rest dropped theirs to fit 384 tokens
    again = api.evaluate(run_dir, "dev", data_dir=str(data_dir))
    assert again["metrics"] == pytest.approx(result.best.metrics, abs=1e-6)


def test_span_and_ner_tasks_are_refused_at_config_load():
    from clue_runner.errors import ConfigError

    for task in ("cmrc2018", "cluener"):
        with pytest.raises(ConfigError, match="icl|in-context|lm"):
            build_config({"task": task, "model": {"name": "x"}, "head": {"name": "icl", "prompt": "{text_a}"},
                          "train": {"max_steps": 0}})


@pytest.mark.parametrize("change,message", [
    ({"templates": {"t": {"prompt": "{text_a}", "answer": " {label}"}}}, "starts with a space"),
    ({"templates": {"t": {"prompt": "{text_a}", "answer": "好"}}}, "needs {label} exactly once"),
    ({"templates": {"t": "{text_c}"}}, "unknown slot {text_c}"),
    ({"templates": {"t": "{text_a}"}, "default": "u"}, "lm.default 'u' is not a template"),
    ({"templates": {"t": "{text_a}"}, "label_words": {"Neutral": "中"}}, "'Neutral' is not a label value"),
    ({"templates": {"t": "{text_a}"}, "label_words": {"Negative": "好", "Positive": "好"}}, "same word"),
])
def test_lm_block_errors_are_one_line(change, message):
    from pydantic import ValidationError

    from clue_runner.tasks.spec import TaskSpec

    spec = get_task("fewclue_eprstmt").model_dump()
    spec["lm"] = change
    with pytest.raises(ValidationError, match=message) as err:
        TaskSpec.model_validate(spec)
    assert len([e for e in err.value.errors()]) == 1


def test_every_lm_task_renders_the_full_label_set_or_its_choices(tiny_decoder, data_dir):
    """Every task with an lm: block renders, the class tasks with every label; C3 scores each choice;
    CHID each candidate-filled passage (the candidate, then the passage after the blank)."""
    from clue_runner.errors import DataError
    from clue_runner.tasks import builtin_task_names

    tokenizer = load_tokenizer(str(tiny_decoder("gpt2")))
    for name in builtin_task_names():
        task = get_task(name)
        if task.lm is None:
            continue
        template, separator = IclHead.template_for(task, IclParams())
        words = list(task.lm_words().values()) if task.label.kind == "categorical" else None
        try:
            examples = load_split(task, "dev", data_dir=data_dir, limit=3).examples
        except DataError:  # a split the shared data lacks (CLUE CHID's dev)
            continue
        for ex in examples:
            request = Renderer(template, words, separator).request(tokenizer, ex, 0, [], 512)
            if words is not None:
                assert len(request.answers) == len(task.label.values), name
            else:
                assert request.answers[: len(ex.extra["choices"])] == [
                    a + (ex.text_a[ex.extra["blank"][1]:] if "blank" in ex.extra else "") for a in ex.extra["choices"]]
                if "blank" in ex.extra:
                    assert request.text.endswith(ex.text_a[: ex.extra["blank"][0]].rstrip())
