"""Prompts: rendering and truncation, joint multi-mask scoring, and the proof that zero-shot PET and
NSP-BERT work: a tiny BERT pretrained here (MLM + NSP) on a generated language in which the
template's mask word and the next sentence are predictable scores >= 0.9 zero-shot on held-out
generated examples, while the same architecture untrained scores about chance."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clue_runner import api
from clue_runner.config import build_config
from clue_runner.errors import ModelError
from clue_runner.features.prompts import render_prompts, word_ids
from clue_runner.heads.prompt import label_scores
from clue_runner.tasks import get_task

from conftest import write_jsonl

EPR, TNEWS = get_task("fewclue_eprstmt"), get_task("fewclue_tnews")
GOOD, BAD = ["好吃", "漂亮", "结实", "舒服"], ["难吃", "破损", "粗糙", "难用"]
# Three topic keywords per TNEWS label; characters disjoint from everything else generated.
KEYWORD_CHARS = list("甲乙丙丁戊己庚辛壬癸子丑寅卯辰巳午未申酉戌亥金木水火土日月星山川江河湖海风雨雷电花草树林鸟兽虫鱼")
FILLER = list("的一是在了和有人这中大为上个我以要他时来们到作地于出就分对成会可主发年动同工也能下过说产种面而方后多定行学法所民得经")


def _keywords() -> dict[str, list[str]]:
    chars = iter(KEYWORD_CHARS + KEYWORD_CHARS[::-1])
    return {v: [next(chars) + next(chars) for _ in range(3)] for v in TNEWS.label.values}


def review(rng, label: int, length: int) -> str:
    """A product review whose sentiment word comes early (so truncation keeps it), then filler."""
    word = rng.choice(GOOD if label == 1 else BAD)
    return "".join(rng.choices(FILLER, k=2)) + word + "".join(rng.choices(FILLER, k=length))


def headline(rng, label: int, keywords, length: int) -> str:
    word = rng.choice(keywords[TNEWS.label.values[label]])
    return "".join(rng.choices(FILLER, k=2)) + word + "".join(rng.choices(FILLER, k=length))


def _word(task, label: int) -> str:
    return task.prompt.label_words[task.label.values[label]]


def corpus(rng, n: int):
    """(first, second, is_next) pairs whose first/second concatenation is MLM text: the PET
    templates' prefixes ("很满意。", "下面报导一则体育新闻。") before matching texts; NSP pairs
    (label prompt, text) that are "next" exactly when the prompt matches the text."""
    keywords = _keywords()
    nsp_epr = EPR.prompt.nsp.template(None)
    nsp_tn = TNEWS.prompt.nsp.template(None)
    out = []
    for i in range(n):
        if i % 2 == 0:
            label = rng.randrange(2)
            text = review(rng, label, rng.randrange(4, 20))
            mlm = EPR.prompt.template(None).replace("[MASK]", _word(EPR, label)).replace("{text_a}", text)
            word = lambda lab: nsp_epr.words[EPR.label.values[lab]]
            pattern, n_labels = nsp_epr.pattern, 2
        else:
            label = rng.randrange(15)
            text = headline(rng, label, keywords, rng.randrange(4, 20))
            mlm = TNEWS.prompt.template(None).replace("[MASK]", _word(TNEWS, label)).replace("{text_a}", text)
            word = lambda lab: TNEWS.label.names[TNEWS.label.values[lab]]
            pattern, n_labels = nsp_tn.pattern, 15
        shown = label if rng.random() < 0.5 else rng.choice([x for x in range(n_labels) if x != label])
        out.append((mlm, pattern.replace("{label}", word(shown)), text, shown == label))
    return out


def _vocab() -> list[str]:
    chars = set(KEYWORD_CHARS + FILLER + list("".join(GOOD + BAD)))
    for task in (EPR, TNEWS):
        chars.update("".join(task.prompt.templates.values()).replace("[MASK]", "").replace("{text_a}", ""))
        chars.update("".join(task.prompt.label_words.values()))
        for t in task.prompt.nsp.templates.values():
            chars.update(t if isinstance(t, str) else t.pattern + "".join(t.words.values()))
        chars.update("".join(task.label.names.values()))
    bustm = get_task("fewclue_bustm").prompt  # the P-tuning pair test's label words and template
    chars.update("".join(bustm.templates.values()) + "".join(bustm.label_words.values()))
    chars -= set("{}[]_abtxeMASK")
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(chars)]


def _pretraining_model(directory: Path, steps: int, seed: int = 0) -> Path:
    """A tiny BertForPreTraining, trained `steps` steps on the generated corpus (0 = untrained)."""
    from transformers import BertConfig, BertForPreTraining, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab=str(directory / "vocab.txt"), do_lower_case=False, tokenize_chinese_chars=True)
    tok.save_pretrained(directory)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64)
    model = BertForPreTraining(config)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(steps):
        rows = corpus(rng, 32)
        mlm = tok([r[0] for r in rows], padding=True, return_tensors="pt")
        ids = mlm["input_ids"].clone()
        labels = torch.full_like(ids, -100)
        special = (ids == tok.cls_token_id) | (ids == tok.sep_token_id) | (ids == tok.pad_token_id)
        chosen = (torch.rand(ids.shape) < 0.15) & ~special
        # the label word (first characters after [CLS] / after the fixed prefix) is masked more often
        for r, row in enumerate(rows):
            start = 1 if r % 2 == 0 else 7
            width = 1 if r % 2 == 0 else 2
            if rng.random() < 0.7:
                chosen[r, start:start + width] = True
        labels[chosen] = ids[chosen]
        ids[chosen] = tok.mask_token_id
        out = model(input_ids=ids, attention_mask=mlm["attention_mask"], token_type_ids=mlm["token_type_ids"])
        mlm_loss = torch.nn.functional.cross_entropy(out.prediction_logits.flatten(0, 1), labels.flatten())
        pairs = tok([r[1] for r in rows], [r[2] for r in rows], padding=True, return_tensors="pt")
        nsp = model(**pairs).seq_relationship_logits
        target = torch.tensor([0 if r[3] else 1 for r in rows])  # 0 = is next
        loss = mlm_loss + torch.nn.functional.cross_entropy(nsp, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Pretrained and untrained tiny models, and a data dir of held-out generated FewCLUE-shaped splits."""
    root = tmp_path_factory.mktemp("synthetic")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add contention
    trained = _pretraining_model(root / "trained", steps=900)
    untrained = _pretraining_model(root / "untrained", steps=0)
    rng = random.Random(123)
    keywords = _keywords()
    data = root / "data"
    for split, n in (("train_few_all", 32), ("dev_few_all", 120), ("test", 40)):
        # long texts (up to 60 characters) so max_length 32 cuts them
        write_jsonl(data / "fewclue/eprstmt" / f"{split}.json",
                    [{"id": i, "sentence": review(rng, lab, rng.randrange(10, 60)), "label": EPR.label.values[lab]}
                     for i, lab in enumerate(rng.randrange(2) for _ in range(n))])
        write_jsonl(data / "fewclue/tnews" / f"{split}.json",
                    [{"id": i, "sentence": headline(rng, lab, keywords, rng.randrange(10, 60)),
                      "label": TNEWS.label.values[lab]}
                     for i, lab in enumerate(rng.randrange(15) for _ in range(n))])
    write_jsonl(data / "fewclue/eprstmt/unlabeled.json",
                [{"id": i, "sentence": review(rng, rng.randrange(2), 20)} for i in range(64)])
    yield SimpleNamespace(trained=trained, untrained=untrained, data=data)
    torch.set_num_threads(threads)


def quiet(message: str) -> None:
    pass


def _cfg(model, data, out, task, head, steps=0, methods=(), max_length=32, lr=1e-3):
    return build_config({
        "task": task, "model": {"name": str(model)}, "head": head, "methods": list(methods),
        "data": {"dir": str(data), "max_length": max_length},
        "train": {"max_steps": steps, "batch_size": 8, "lr": lr, "eval_batch_size": 64, "seed": 1},
        "output_dir": str(out)})


def _accuracy(model, data, out, task, head, **kw) -> tuple[float, Path]:
    run = api.train(_cfg(model, data, out, task, head, **kw), log=quiet)
    return api.read_run(run).best.metrics["accuracy"], run


# -- the proof ---------------------------------------------------------------------------------

@pytest.mark.parametrize("task,head,chance_below", [
    ("fewclue_eprstmt", {"name": "pet"}, 0.75),
    ("fewclue_tnews", {"name": "pet"}, 0.3),  # 2-character label words: joint over 2 masks
    ("fewclue_eprstmt", {"name": "nsp"}, 0.75),
    # 15-way NSP-BERT on tnews is not asserted: this tiny model's NSP head reached only 0.4-0.57 argmax
    # accuracy there within 700-1000 pretraining steps (see the report), too slow for the suite.
])
def test_zero_shot_on_a_pretrained_synthetic_language(synthetic, tmp_path, task, head, chance_below):
    trained, _ = _accuracy(synthetic.trained, synthetic.data, tmp_path / "t", task, head)
    untrained, _ = _accuracy(synthetic.untrained, synthetic.data, tmp_path / "u", task, head)
    assert trained >= 0.9, (task, head, trained)
    assert untrained < chance_below, (task, head, untrained)


# -- rendering and scoring ---------------------------------------------------------------------

def test_render_truncates_the_text_never_the_template(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    template = "下面报导一则[MASK]新闻。{text_a}"
    ex = [SimpleNamespace(text_a="的" * n, text_b=None, label=0) for n in (3, 40, 200)]
    enc = render_prompts(ex, tok, template, max_length=24, mask_length=2)
    seg = enc.segments[""]
    literal = tok("下面报导一则", add_special_tokens=False)["input_ids"]
    for i, n in enumerate((3, 40, 200)):
        ids = seg.ids[seg.offsets[i]:seg.offsets[i + 1]].tolist()
        assert len(ids) == min(24, 2 + 6 + 2 + 3 + n)
        assert ids[1:7] == literal and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        assert [ids[p] for p in enc.item_arrays["mask_positions"][i]] == [tok.mask_token_id] * 2
        assert enc.item_arrays["mask_positions"][i].tolist() == [7, 8]
    # a pair template: both texts cut (longest first), the second segment's type ids are 1
    pair = [SimpleNamespace(text_a="的" * 30, text_b="是" * 5, label=1)]
    enc = render_prompts(pair, tok, "{text_a}[SEP]{text_b}？[MASK]", max_length=16, mask_length=2)
    ids = enc.segments[""].ids.tolist()
    types = enc.segments[""].type_ids.tolist()
    assert len(ids) == 16 and ids.count(tok.convert_tokens_to_ids("是")) == 5
    assert [ids[p] for p in enc.item_arrays["mask_positions"][0]] == [tok.mask_token_id] * 2
    assert types[: ids.index(tok.sep_token_id) + 1] == [0] * (ids.index(tok.sep_token_id) + 1)
    assert set(types[ids.index(tok.sep_token_id) + 1:]) == {1}


def test_joint_scoring_equals_brute_force_over_label_words():
    torch.manual_seed(0)
    b, k, v, c = 4, 3, 11, 5
    logits = torch.randn(b, k, v)
    label_ids = torch.randint(v, (c, k))
    got = label_scores(logits, label_ids)
    logp = logits.log_softmax(-1)
    for row, label in itertools.product(range(b), range(c)):
        want = sum(float(logp[row, j, label_ids[label, j]]) for j in range(k))
        assert got[row, label].item() == pytest.approx(want, abs=1e-5)
    # the argmax is the label word with the highest joint probability among the label words only
    joint = torch.stack([logp[:, range(k), label_ids[c_]].sum(1) for c_ in range(c)], 1)
    assert torch.equal(got.argmax(1), joint.argmax(1))


def test_label_words_must_be_in_the_vocabulary(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert word_ids(tok, ["体育", "财经"]).shape == (2, 2)
    with pytest.raises(Exception, match="not in the model's vocabulary"):
        word_ids(tok, ["\u2603\u2603"])


# -- training, reload, refusal -----------------------------------------------------------------

def test_pet_few_shot_and_semi_supervised_train_and_reload(synthetic, tmp_path):
    for name, head in (("few", {"name": "pet"}), ("semi", {"name": "pet", "unlabeled_split": "unlabeled"})):
        acc, run = _accuracy(synthetic.untrained, synthetic.data, tmp_path / name, "fewclue_eprstmt", head,
                             steps=6)
        result = api.read_run(run)
        if name == "semi":
            assert "64 unlabelled" in result.data.train.source
        again = api.evaluate(run, split="dev", data_dir=str(synthetic.data))
        assert again["metrics"]["accuracy"] == pytest.approx(acc)


def test_a_model_without_the_needed_head_is_refused_in_one_line(tiny_model, synthetic, tmp_path):
    cfg = _cfg(tiny_model, synthetic.data, tmp_path, "fewclue_eprstmt", {"name": "pet"})
    with pytest.raises(ModelError) as err:
        api.train(cfg, log=quiet)
    assert "masked-LM head" in str(err.value) and "\n" not in str(err.value)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "clue_runner", "train", "--config", str(_write(cfg, tmp_path))],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert [l for l in proc.stderr.splitlines() if l.startswith("error:")] and len(proc.stderr.strip().splitlines()) == 1


def _write(cfg, tmp_path) -> Path:
    import yaml

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True), encoding="utf-8")
    return path


def test_tasks_show_lists_the_templates():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "clue_runner", "tasks", "show", "fewclue_tnews"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "下面报导一则[MASK]新闻。{text_a}" in proc.stdout and "这是一则{label}新闻" in proc.stdout


def test_a_config_picks_a_template_by_name_or_gives_its_own(synthetic, tmp_path):
    acc_named, _ = _accuracy(synthetic.trained, synthetic.data, tmp_path / "a", "fewclue_eprstmt",
                             {"name": "pet", "template": "manyi"})
    acc_own, _ = _accuracy(synthetic.trained, synthetic.data, tmp_path / "b", "fewclue_eprstmt",
                           {"name": "pet", "pattern": "[MASK]满意。{text_a}"})
    assert acc_named == acc_own >= 0.9
    with pytest.raises(Exception, match="no prompt template 'manyl'"):
        api.train(_cfg(synthetic.trained, synthetic.data, tmp_path / "c", "fewclue_eprstmt",
                       {"name": "pet", "template": "manyl"}), log=quiet)


# -- P-tuning ----------------------------------------------------------------------------------

def test_ptuning_embeddings_trains_only_the_prompt_vectors(synthetic, tmp_path):
    from clue_runner.engine.build import build

    cfg = _cfg(synthetic.untrained, synthetic.data, tmp_path, "fewclue_eprstmt", {"name": "pet"}, steps=4,
               methods=[{"name": "ptuning", "variant": "embeddings", "lr": 0.05}])
    built = build(cfg)
    before = {k: v.detach().clone() for k, v in built.head.state_dict().items()}
    trainable = [n for n, p in built.head.named_parameters() if p.requires_grad]
    assert trainable == ["backbone.prompt"]
    run = api.train(cfg, log=quiet)
    from clue_runner.engine.checkpoint import STATE_FILE
    from safetensors.torch import load_file

    after = load_file(str(run / "best" / STATE_FILE))
    assert "backbone.prompt" in after
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]  # tied copies saved once
    assert set(changed) <= {"backbone.prompt"}
    again = api.evaluate(run, split="dev", data_dir=str(synthetic.data))
    assert again["metrics"]["accuracy"] == pytest.approx(api.read_run(run).best.metrics["accuracy"])


def test_ptuning_steps_change_only_the_prompt_and_keep_token_type_ids(synthetic, tmp_path):
    from clue_runner.engine.build import build
    from clue_runner.features import collate

    cfg = _cfg(synthetic.untrained, synthetic.data, tmp_path, "fewclue_bustm", {"name": "pet"}, steps=1,
               methods=[{"name": "ptuning"}])
    built = build(cfg)
    ex = [SimpleNamespace(text_a="好吃", text_b="漂亮", label=1), SimpleNamespace(text_a="难吃的", text_b="破损", label=0)]
    enc = built.featurize(ex, built.tokenizer, 32)
    batch = collate(enc, [0, 1], built.tokenizer.pad_token_id)
    tokens = built.tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    n = 8
    assert tokens[0] == "[CLS]" and tokens[1 + 4:1 + 5] == ["[MASK]"]  # 4 vectors, the mask, 4 vectors
    assert batch["prompt_positions"][0].tolist() == [1, 2, 3, 4, 6, 7, 8, 9][:n]
    real = batch["attention_mask"][0].bool()
    assert batch["token_type_ids"][0][real].tolist() == [0] * (1 + n + 1 + 2 + 1) + [1] * 3
    seen = {}
    inner = built.head.backbone.inner.model
    original = inner.forward
    inner.forward = lambda *a, **kw: (seen.update(kw), original(*a, **kw))[1]
    before = {k: v.detach().clone() for k, v in built.head.state_dict().items()}
    model = built.head
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        loss = model.loss(model(**batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(seen["token_type_ids"], batch["token_type_ids"]) and "inputs_embeds" in seen
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"backbone.prompt"}


def test_ptuning_encoder_trains_the_whole_model_and_reloads(synthetic, tmp_path):
    acc, run = _accuracy(synthetic.untrained, synthetic.data, tmp_path, "fewclue_eprstmt", {"name": "pet"}, steps=4,
                         methods=[{"name": "ptuning", "variant": "encoder"}])
    result = api.read_run(run)
    assert result.model.trainable_parameters == result.model.parameters
    again = api.evaluate(run, split="dev", data_dir=str(synthetic.data))
    assert again["metrics"]["accuracy"] == pytest.approx(acc)


# -- adapt-mlm ---------------------------------------------------------------------------------

def test_adapt_mlm_gives_a_model_with_heads_that_runs_are_labelled_with(tiny_model, synthetic, tmp_path):
    from clue_runner.models.adapt import adapt_mlm, adapted_label
    from clue_runner.models.backbone import load_backbone

    rng = random.Random(0)
    texts = [review(rng, rng.randrange(2), 12) for _ in range(260)]
    documents = ["。".join(review(rng, rng.randrange(2), 6) for _ in range(4)) + "。" for _ in range(40)]
    with pytest.raises(ModelError, match="next-sentence"):
        load_backbone(str(tiny_model), "pretraining")
    out = tmp_path / "adapted"
    result = adapt_mlm(str(tiny_model), texts, out, steps=30, batch_size=8, max_length=32, lr=1e-3,
                       documents=documents, held_out=60, log=quiet)
    assert result["sentences"] == 200 and 0 <= result["masked_token_accuracy"] <= 1
    assert result["masked_tokens_held_out"] > 50 and 0 <= result["next_sentence_accuracy"] <= 1
    backbone = load_backbone(str(out), "pretraining")  # both heads now exist: no refusal
    assert adapted_label(backbone.config) == "adapted on 200 sentences"
    run = api.train(_cfg(out, synthetic.data, tmp_path / "runs", "fewclue_eprstmt", {"name": "pet"}), log=quiet)
    assert api.read_run(run).model.adapted["sentences"] == 200
    from clue_runner.report import filter_runs, load_runs

    [row] = load_runs([tmp_path / "runs"])
    assert row.model.endswith("(adapted on 200 sentences)")  # every report row of it says what it is
    assert filter_runs([row], models=[row.model_slug]) == filter_runs([row], models=[row.model]) == [row]


def test_char_level_mask_splits_multi_character_pieces_into_character_targets(e5_dir):
    """A chosen Unigram piece of k characters becomes k targets, one per character (as PET scores label
    words); unchosen tokens and special tokens are never targets; the result fits max_length."""
    from clue_runner.models import load_tokenizer
    from clue_runner.models.adapt import char_level_mask, piece_characters

    tok = load_tokenizer(str(e5_dir))
    pieces = piece_characters(tok)
    ids = tok("这个产品很满意，质量不错")["input_ids"]
    multi = [t for t in ids if t in pieces]
    assert multi, "the fixture text must contain multi-character pieces"
    special = set(tok.all_special_ids)
    inputs, targets = char_level_mask(ids, pieces, special, tok.mask_token_id, len(tok), 1.0, random.Random(0), 64)
    expected = [c for t in ids if t not in special for c in pieces.get(t, [t])]
    assert [t for t in targets if t != -100] == expected  # probability 1: every non-special piece, split
    assert len(inputs) == len(targets) == len(ids) + sum(len(pieces[t]) - 1 for t in multi)
    assert all(tok.convert_ids_to_tokens(c) in "这个产品很满意，质量不错,▁" for c in expected)
    cut, _ = char_level_mask(ids, pieces, special, tok.mask_token_id, len(tok), 1.0, random.Random(0), len(ids))
    assert len(cut) == len(ids) and cut[-1] == ids[-1]  # no room to split: pieces stay whole, [SEP] kept


def test_electra_encoder_converts_to_bert_with_identical_hidden_states(e5_dir, tmp_path):
    """The embedded model is stored as ELECTRA, which has no next-sentence head: adapt-mlm --nsp re-saves
    its encoder as BERT. The converted encoder must compute exactly the same hidden states."""
    import transformers

    from clue_runner.models import load_tokenizer
    from clue_runner.models.adapt import electra_as_bert, electra_encoder_as_bert_possible

    tok = load_tokenizer(str(e5_dir))
    src = tmp_path / "electra"
    torch.manual_seed(0)
    cfg = transformers.ElectraConfig(vocab_size=len(tok), embedding_size=32, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, pad_token_id=tok.pad_token_id)
    transformers.ElectraModel(cfg).save_pretrained(src)
    tok.save_pretrained(src)
    assert electra_encoder_as_bert_possible(str(src))
    out = electra_as_bert(str(src), tmp_path / "bert")
    batch = tok(["这个产品很满意", "质量不错"], padding=True, return_tensors="pt")
    with torch.no_grad():
        a = transformers.ElectraModel.from_pretrained(src).eval()(**batch).last_hidden_state
        b = transformers.AutoModel.from_pretrained(out).eval()(**batch).last_hidden_state
    assert transformers.AutoConfig.from_pretrained(out).model_type == "bert"
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert transformers.AutoModelForPreTraining.from_pretrained(out).cls.seq_relationship is not None
