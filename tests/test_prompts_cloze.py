"""PET on a cloze task with per-example label words (FewCLUE CHID: `prompt.label_words: candidates`).

A tiny BERT is pretrained here on a generated language in which a 2-character cue word is always
followed by its own idiom: the blank of a generated CHID row is predictable from the cue right
before it, but only if rendering keeps the blank's neighbourhood when the passage is cut. Zero-shot
PET then scores far above chance (1/7); the same architecture untrained does not."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from clue_runner import api
from clue_runner.config import build_config
from clue_runner.data.parsers import RowContext, parse_idiom_cloze
from clue_runner.errors import ClueRunError
from clue_runner.features.prompts import render_prompts
from clue_runner.heads import MASKED
from clue_runner.heads.prompt import label_scores
from clue_runner.tasks import get_task
from clue_runner.tasks.spec import TaskSpec

from conftest import write_jsonl

CHID = get_task("fewclue_chid")
IDIOMS = ["画蛇添足", "守株待兔", "亡羊补牢", "对牛弹琴", "井底之蛙", "掩耳盗铃", "叶公好龙",
          "狐假虎威", "刻舟求剑", "杯弓蛇影", "望梅止渴", "愚公移山", "卧薪尝胆", "一心一意"]
CUE_CHARS = "甲乙丙丁戊己庚辛壬癸子丑寅卯辰巳午未申酉戌亥金木水火土日"
CUES = [CUE_CHARS[2 * i:2 * i + 2] for i in range(len(IDIOMS))]
FILLER = list("的是在了和有人这中大为上个我以要他时来们到作地于出就分对成会可主发年动同工也能下过说产种面而方后多定行学法所民得经")
RARE = "鬻"  # never in the generated vocabulary


def sentence(rng, idiom: int, before: int, after: int, blank: str | None = None) -> str:
    """Filler, the idiom's cue, the idiom (or `blank` in its place), filler."""
    return ("".join(rng.choices(FILLER, k=before)) + CUES[idiom] + (IDIOMS[idiom] if blank is None else blank)
            + "".join(rng.choices(FILLER, k=after)))


def cloze_row(rng, i: int, before_max: int = 100, after_max: int = 100, labelled: bool = True) -> dict:
    """A FewCLUE CHID row: one #idiom# blank right after its cue; 7 candidates, the gold among them."""
    gold = rng.randrange(len(IDIOMS))
    candidates = rng.sample([k for k in range(len(IDIOMS)) if k != gold], 6) + [gold]
    rng.shuffle(candidates)
    row = {"id": i, "candidates": [IDIOMS[k] for k in candidates],
           "content": sentence(rng, gold, rng.randrange(0, before_max), rng.randrange(0, after_max), "#idiom#")}
    if labelled:
        row["answer"] = candidates.index(gold)
    return row


def _vocab() -> list[str]:
    chars = set("".join(IDIOMS) + "".join(CUES) + "".join(FILLER))
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(chars)]


def _mlm_model(directory: Path, steps: int, seed: int = 0) -> Path:
    """A tiny BertForMaskedLM trained `steps` steps on generated sentences (0 = untrained); the
    idiom's 4 characters are masked together in most rows, as PET's masks will be."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab=str(directory / "vocab.txt"), do_lower_case=False, tokenize_chinese_chars=True)
    tok.save_pretrained(directory)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64)
    model = BertForMaskedLM(config)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(steps):
        rows = [(rng.randrange(len(IDIOMS)), rng.randrange(0, 20)) for _ in range(32)]  # (idiom, filler before)
        texts = [sentence(rng, idiom, before, rng.randrange(0, 12)) for idiom, before in rows]
        enc = tok(texts, padding=True, return_tensors="pt")
        ids = enc["input_ids"].clone()
        special = (ids == tok.cls_token_id) | (ids == tok.sep_token_id) | (ids == tok.pad_token_id)
        chosen = (torch.rand(ids.shape) < 0.15) & ~special
        for r, (_, before) in enumerate(rows):
            if rng.random() < 0.8:
                start = 1 + before + 2  # [CLS], filler, the cue
                chosen[r, start:start + 4] = True
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        ids[chosen] = tok.mask_token_id
        loss = model(input_ids=ids, attention_mask=enc["attention_mask"], labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def cloze(tmp_path_factory):
    """Pretrained and untrained tiny masked LMs, and FewCLUE-CHID-shaped generated splits."""
    root = tmp_path_factory.mktemp("cloze")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add contention
    trained = _mlm_model(root / "trained", steps=500)
    untrained = _mlm_model(root / "untrained", steps=0)
    rng = random.Random(7)
    data = root / "data"
    for split, n in (("train_few_all", 16), ("dev_few_all", 120)):
        write_jsonl(data / "fewclue/chid" / f"{split}.json", [cloze_row(rng, i) for i in range(n)])
    write_jsonl(data / "fewclue/chid/test.json", [cloze_row(rng, 3000 + i, labelled=False) for i in range(30)])
    yield SimpleNamespace(trained=trained, untrained=untrained, data=data)
    torch.set_num_threads(threads)


def quiet(message: str) -> None:
    pass


def _cfg(model, data, out, head=None, steps=0, max_length=32):
    return build_config({
        "task": "fewclue_chid", "model": {"name": str(model)}, "head": head or {"name": "pet"},
        "data": {"dir": str(data), "max_length": max_length},
        "train": {"max_steps": steps, "batch_size": 8, "lr": 1e-3, "eval_batch_size": 64, "seed": 1},
        "output_dir": str(out)})


def _items(rows) -> list:
    """Rows parsed as the task reads them (the idiom_cloze window), in the shape heads see."""
    return [SimpleNamespace(text_a=it.text_a, text_b=it.text_b, label=it.label, id=it.id if it.id is not None else r["id"],
                            extra=it.extra)
            for r in rows for it in parse_idiom_cloze(r, CHID.inputs, RowContext())]


def _tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


# -- rendering ---------------------------------------------------------------------------------

def test_cloze_render_keeps_the_masks_and_the_blank_neighbourhood(cloze):
    tok = _tokenizer(cloze.trained)
    rng = random.Random(0)
    rows = [cloze_row(rng, i, before_max=100) for i in range(20)]
    rows.append({"id": 99, "candidates": IDIOMS[:7], "content": "的是" + CUES[0] + "#idiom#在了", "answer": 0})
    items = _items(rows)
    template = CHID.prompt.template(None)
    max_length = 24
    enc = render_prompts(items, tok, template, max_length, mask_length=4)
    seg = enc.segments[""]
    for i, ex in enumerate(items):
        ids = seg.ids[seg.offsets[i]:seg.offsets[i + 1]].tolist()
        start, end = ex.extra["blank"]
        before = tok(ex.text_b[:start], add_special_tokens=False)["input_ids"]
        after = tok(ex.text_b[end:], add_special_tokens=False)["input_ids"]
        masks = enc.item_arrays["mask_positions"][i].tolist()
        assert [ids[p] for p in masks] == [tok.mask_token_id] * 4 and masks == list(range(masks[0], masks[0] + 4))
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        assert len(ids) == min(max_length, 2 + len(before) + 4 + len(after))
        kept_before, kept_after = ids[1:masks[0]], ids[masks[-1] + 1:-1]
        # the text next to the blank is what survives: the end of the part before, the start of the part after
        assert kept_before == before[len(before) - len(kept_before):] and kept_after == after[:len(kept_after)]
        assert kept_before[-2:] == tok(CUES[IDIOMS.index(ex.extra["choices"][ex.label])],
                                       add_special_tokens=False)["input_ids"]
        if len(before) + len(after) > max_length - 6:  # cut: longest first, so both sides keep what they can
            assert min(len(kept_before), len(kept_after)) >= min(len(before), len(after), (max_length - 6) // 2)
    short = seg.ids[seg.offsets[-2]:seg.offsets[-1]].tolist()
    assert short == tok("的是" + CUES[0] + "[MASK]" * 4 + "在了")["input_ids"]  # nothing cut: the plain cloze


# -- scoring -------------------------------------------------------------------------------------

def test_per_example_scores_equal_a_brute_force_over_each_examples_candidates():
    torch.manual_seed(0)
    b, c, k, v = 5, 7, 4, 13
    logits = torch.randn(b, k, v)
    ids = torch.randint(v, (b, c, k))
    got = label_scores(logits, ids)
    logp = logits.log_softmax(-1)
    for row, cand in itertools.product(range(b), range(c)):
        want = sum(float(logp[row, j, ids[row, cand, j]]) for j in range(k))
        assert got[row, cand].item() == pytest.approx(want, abs=1e-5)
    shared = torch.randint(v, (c, k))  # the task-wide label words are the same for every row
    assert torch.equal(label_scores(logits, shared), label_scores(logits, shared.expand(b, -1, -1)))


def test_pet_head_scores_each_example_by_its_own_candidates_like_the_masked_lm(cloze, tmp_path):
    """The head's scores equal, candidate by candidate, the joint log-probability the plain masked LM
    gives its characters at the 4 masks of `text before + [MASK]x4 + text after`."""
    from transformers import BertForMaskedLM

    from clue_runner.engine.build import build
    from clue_runner.features import collate

    built = build(_cfg(cloze.trained, cloze.data, tmp_path, max_length=64))
    rng = random.Random(3)
    rows = [cloze_row(rng, i, before_max=20, after_max=20) for i in range(5)]  # nothing cut
    rows[1]["candidates"] = rows[1]["candidates"][:5]  # fewer candidates: the rest are fillers
    rows[1]["answer"] = min(rows[1]["answer"], 4)
    rows[2]["candidates"][(rows[2]["answer"] + 1) % 7] = RARE + "公好龙"  # a character outside the vocabulary
    items = _items(rows)
    enc = built.featurize(items, built.tokenizer, 64)
    model = built.head.eval()
    with torch.no_grad():
        scores = model(**collate(enc, list(range(len(items))), built.tokenizer.pad_token_id, targets=False))
    assert scores.shape == (5, 7)
    tok = _tokenizer(cloze.trained)
    mlm = BertForMaskedLM.from_pretrained(cloze.trained).eval()
    for i, ex in enumerate(items):
        start, end = ex.extra["blank"]
        text = tok(ex.text_b[:start] + "[MASK]" * 4 + ex.text_b[end:], return_tensors="pt")
        with torch.no_grad():
            logp = mlm(**text).logits[0].log_softmax(-1)
        at = (text["input_ids"][0] == tok.mask_token_id).nonzero()[:, 0]
        for c in range(7):
            if c >= len(ex.extra["choices"]) or RARE in ex.extra["choices"][c]:
                assert scores[i, c].item() == MASKED  # a filler or an unknown character never wins
                continue
            chars = tok.convert_tokens_to_ids(list(ex.extra["choices"][c]))
            want = sum(float(logp[at[j], chars[j]]) for j in range(4))
            assert scores[i, c].item() == pytest.approx(want, abs=1e-4)


# -- zero-shot, few-shot, reload, predict --------------------------------------------------------

def test_zero_shot_pet_on_the_generated_cloze_beats_chance_only_when_pretrained(cloze, tmp_path):
    accuracy = {}
    for name in ("trained", "untrained"):
        run = api.train(_cfg(getattr(cloze, name), cloze.data, tmp_path / name), log=quiet)
        accuracy[name] = api.read_run(run).best.metrics["accuracy"]
    assert accuracy["trained"] >= 0.9 and accuracy["untrained"] < 0.35, accuracy  # chance: 1/7


def test_pet_on_cloze_trains_reloads_and_writes_the_chid_submission(cloze, tmp_path):
    from clue_runner.submit import validate_prediction_file

    run = api.train(_cfg(cloze.untrained, cloze.data, tmp_path, steps=6), log=quiet)
    result = api.read_run(run)
    again = api.evaluate(run, split="dev", data_dir=str(cloze.data))
    assert again["metrics"]["accuracy"] == pytest.approx(result.best.metrics["accuracy"])
    path = api.predict(run, split="test", data_dir=str(cloze.data))
    assert path.name == "chidf_predict.json"
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [set(r) for r in lines] == [{"id", "answer"}] * 30  # the multiple_choice head's format
    assert [r["id"] for r in lines] == [3000 + i for i in range(30)]
    assert all(isinstance(r["answer"], int) and 0 <= r["answer"] < 7 for r in lines)
    assert validate_prediction_file(CHID, path, cloze.data, "chidf_predict.json") == []


# -- the task's prompt section ---------------------------------------------------------------------

def test_tasks_show_prints_the_cloze_template():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "clue_runner", "tasks", "show", "fewclue_chid"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "{before_blank}[MASK]{after_blank}" in proc.stdout and "label_words: candidates" in proc.stdout


@pytest.mark.parametrize("change,message", [
    ({"word_length": None}, "word_length is required"),
    ({"templates": {"t": "{before_blank}[MASK]"}}, "cloze template has"),
    ({"templates": {"t": "{after_blank}[MASK]{before_blank}"}}, "cloze template has"),
    ({"templates": {"t": "{text_a}[MASK]"}}, "unknown slot {text_a}"),
])
def test_a_bad_cloze_prompt_is_refused_when_the_task_loads(change, message):
    spec = CHID.model_dump(mode="json")
    spec["prompt"] = {k: v for k, v in {**spec["prompt"], **change}.items() if v is not None}
    with pytest.raises(ValueError, match=message):
        TaskSpec.model_validate(spec)
    other = get_task("fewclue_eprstmt").model_dump(mode="json")  # candidates on a task without them
    other["prompt"] = {"templates": {"t": "{before_blank}[MASK]{after_blank}"}, "label_words": "candidates",
                       "word_length": 1}
    with pytest.raises(ValueError, match="needs a cloze row parser"):
        TaskSpec.model_validate(other)


def test_a_candidate_of_the_wrong_length_is_refused_in_one_line(cloze, tmp_path):
    from clue_runner.engine.build import build

    built = build(_cfg(cloze.trained, cloze.data, tmp_path))
    row = cloze_row(random.Random(1), 41)
    row["candidates"][0] = "画蛇添足了"
    with pytest.raises(ClueRunError) as err:
        built.featurize(_items([row]), built.tokenizer, 32)
    assert "example 41" in str(err.value) and "'画蛇添足了'" in str(err.value) and "\n" not in str(err.value)


def test_an_example_whose_gold_candidate_cannot_be_scored_adds_no_loss():
    import torch.nn.functional as F

    from clue_runner.heads.prompt import PetHead

    torch.manual_seed(0)
    scores = torch.randn(3, 7)
    possible = torch.ones(3, 7, dtype=torch.bool)
    possible[1, 2] = False  # row 1's gold
    scores = scores.masked_fill(~possible, MASKED)
    batch = {"labels": torch.tensor([0, 2, 5]), "choice_mask": possible}
    got = PetHead.loss(SimpleNamespace(_aux_loss=None), scores, batch)
    want = F.cross_entropy(scores[[0, 2]], torch.tensor([0, 5]))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
