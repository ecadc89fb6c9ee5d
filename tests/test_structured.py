"""Reading comprehension, multiple choice, idiom cloze and NER: featurization round trips,
decoding, and bad input named by file, location and field."""

import json

import numpy as np
import pytest
import torch

from clue_runner.data.splits import load_split
from clue_runner.errors import DataError
from clue_runner.features import collate
from clue_runner.engine.build import model_for
from clue_runner.heads.choice import assign_candidates
from clue_runner.heads.span import best_span
from clue_runner.metrics import compute_metrics
from clue_runner.models import load_tokenizer
from clue_runner.tasks import get_task

from conftest import write_jsonl


def _head(task_name, model_dir, **options):
    from clue_runner.config import HeadConfig

    task = get_task(task_name)
    head = model_for(task, str(model_dir), HeadConfig(**options) if options else None)
    return task, head.eval(), load_tokenizer(str(model_dir))


# -- multiple choice / CHID ------------------------------------------------------------------


def test_hungarian_assignment_differs_from_argmax_where_blanks_compete():
    probs = np.array([
        [0.6, 0.3, 0.1],  # blank 0 of passage A
        [0.5, 0.1, 0.4],  # blank 1 of passage A: also prefers candidate 0
        [0.7, 0.2, 0.1],  # the only blank of passage B
    ])
    groups = np.array([0, 0, 1])
    assert probs.argmax(-1).tolist() == [0, 0, 0]
    # A: (0, 2) has log .6 + log .4 = -1.43, better than (1, 0) = -1.90 and every other pair; B keeps its argmax.
    assert assign_candidates(np.log(probs), groups).tolist() == [0, 2, 0]


def test_chid_decode_option_switches_between_argmax_and_assignment(tiny_model):
    task, head, _ = _head("chid", tiny_model)
    assert head.params.decode == "hungarian"  # the task's default for the official layout
    _, argmax_head, _ = _head("chid", tiny_model, decode="argmax")
    scores = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.1, 0.4]]))

    class Enc:
        meta = {"groups": np.array([7, 7])}

    assert head.predict(scores, Enc()).tolist() == [0, 2]
    assert argmax_head.predict(scores, Enc()).tolist() == [0, 0]


def test_multiple_choice_masks_missing_choices(data_dir, tiny_model):
    task, head, tok = _head("c3", tiny_model)
    examples = load_split(task, "dev", str(data_dir)).examples
    few = next(ex for ex in examples if len(ex.extra["choices"]) == 2)
    four = next(ex for ex in examples if len(ex.extra["choices"]) == 4)
    enc = head.featurize([four, few], tok, 64)
    assert enc.choices == 4 and enc.item_arrays["choice_mask"].tolist() == [[True] * 4, [True, True, False, False]]
    batch = collate(enc, [0, 1], tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 8  # 2 questions × 4 sequences
    with torch.no_grad():
        head.scorer.bias.fill_(0)
        scores = head(**batch)
    assert (scores[1, 2:] < -1e3).all()  # fillers can never win
    assert head.predict(scores).tolist()[1] in (0, 1)
    loss = head.loss(scores, batch)
    assert torch.isfinite(loss)


# -- span extraction -------------------------------------------------------------------------


def test_best_span_respects_order_length_and_context():
    start = np.array([0.0, 5.0, 1.0, 0.0, 9.0])
    end = np.array([0.0, 0.0, 4.0, 3.0, -1.0])
    allowed = np.array([False, True, True, True, True])
    # (4, 2) would score 13, but an end must not precede its start: (1, 2) = 9 beats (4, 4) = 8.
    assert best_span(start, end, allowed, max_tokens=5, top_k=5)[1:] == (1, 2)
    assert best_span(start, end, allowed, max_tokens=1, top_k=5)[1:] == (4, 4)  # one token: (4, 4) = 8 > 5
    assert best_span(start, end, np.zeros(5, dtype=bool), 5, 5) is None


@pytest.mark.parametrize("model", ["tiny", "e5"])
def test_cmrc_windows_map_answers_back_to_the_exact_characters(model, data_dir, tiny_model, request):
    """A character tokenizer gives every answer back exactly; the embedded model's pieces can join
    an answer's last character with the next (「…」。), which the official EM forgives for punctuation."""
    from clue_runner.metrics.cmrc import em_score

    model_dir = tiny_model if model == "tiny" else request.getfixturevalue("e5_dir")
    task, head, tok = _head("cmrc2018", model_dir, stride=32)
    examples = load_split(task, "dev", str(data_dir), limit=60).examples
    enc = head.featurize(examples, tok, 128)
    assert len(enc) > len(examples)  # long contexts became several windows
    offsets = enc.segments[""].offsets
    # Logits that point at each window's training label: decoding must give back the answer text.
    width = int(np.diff(offsets).max())
    logits = torch.full((len(enc), width, 2), -10.0)
    located, exact = 0, 0
    for w, (s, e) in enumerate(enc.labels):
        if s > 0:
            ex = examples[enc.item_example[w]]
            a = offsets[w]
            text = ex.text_b[enc.meta["char_start"][a + s] : enc.meta["char_end"][a + e]]
            assert ex.label[0] in text and len(text) - len(ex.label[0]) <= 2
            exact += text == ex.label[0]
            logits[w, s, 0] = logits[w, e, 1] = 10.0
            located += 1
    assert located >= len(examples) * 0.9
    if model == "tiny":
        assert exact == located
    preds = head.predict(logits, enc)
    answered = {int(enc.item_example[w]) for w, (s, _) in enumerate(enc.labels) if s > 0}
    assert np.mean([em_score(examples[i].label, preds[i]) for i in answered]) >= 0.95
    metrics = compute_metrics(task.metrics, enc.targets, preds, 0)
    assert metrics["cmrc_em"] >= (0.95 if model == "e5" else 1.0) * len(answered) / len(examples) - 1e-9


def test_cmrc_max_windows_keeps_each_contexts_first_windows(data_dir, tiny_model):
    """max_windows: 1 is plain truncation: every question keeps its first window only, the same window
    as without the cap, and an answer past it becomes the no-answer label (0, 0)."""
    task, head, tok = _head("cmrc2018", tiny_model, stride=32)
    _, capped_head, _ = _head("cmrc2018", tiny_model, stride=32, max_windows=1)
    _, two_head, _ = _head("cmrc2018", tiny_model, stride=32, max_windows=2)
    examples = load_split(task, "dev", str(data_dir), limit=60).examples
    full = head.featurize(examples, tok, 128, use_cache=False)
    capped = capped_head.featurize(examples, tok, 128, use_cache=False)
    two = two_head.featurize(examples, tok, 128, use_cache=False)
    assert capped.item_example.tolist() == list(range(len(examples)))
    counts = np.bincount(full.item_example, minlength=len(examples))
    assert (counts > 2).any()  # some contexts really are longer than two windows
    assert np.bincount(two.item_example).tolist() == np.minimum(counts, 2).tolist()
    first = [int(np.flatnonzero(full.item_example == i)[0]) for i in range(len(examples))]
    full_ids, full_offsets = full.segments[""].ids, full.segments[""].offsets
    cap_ids, cap_offsets = capped.segments[""].ids, capped.segments[""].offsets
    for i, w in enumerate(first):
        assert cap_ids[cap_offsets[i]:cap_offsets[i + 1]].tolist() == full_ids[full_offsets[w]:full_offsets[w + 1]].tolist()
        assert capped.labels[i].tolist() == full.labels[w].tolist()
    lost = [i for i, w in enumerate(first) if full.labels[w].tolist() == [0, 0]]
    assert lost and all(capped.labels[i].tolist() == [0, 0] for i in lost)  # answers past the first window
    preds = capped_head.predict(torch.zeros(len(capped), int(np.diff(cap_offsets).max()), 2), capped)
    assert len(preds) == len(examples)


def test_cmrc_answer_not_in_context_is_an_error_for_training_only(tmp_path, tiny_model):
    task = get_task("cmrc2018")
    doc = {"data": [{"title": "t", "paragraphs": [{"id": "P", "context": "北京是中国的首都。", "qas": [
        {"id": "Q0", "question": "首都是哪里？", "answers": [{"text": "北京", "answer_start": 0}]},
        {"id": "Q1", "question": "哪个国家？", "answers": [{"text": "中国", "answer_start": 5}]}]},
        {"id": "P2", "context": "上海在东边。", "qas": [
            {"id": "Q2", "question": "哪里在东边？", "answers": [{"text": "上海", "answer_start": 0}]}]}]}]}
    folder = tmp_path / "clue" / "cmrc2018_public"
    folder.mkdir(parents=True)
    (folder / "cmrc2018_dev.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    dev = load_split(task, "dev", str(tmp_path))  # scoring reads answer texts only, like the official script
    assert [ex.label for ex in dev.examples] == [["北京"], ["中国"], ["上海"]]
    with pytest.raises(DataError, match=r"cmrc2018_dev\.json:data\[0\]\.paragraphs\[0\]: field 'qas\[1\]\.answers\[0\]\.answer_start'"):
        load_split(task, "dev", str(tmp_path), training=True)
    skipped = load_split(get_task("cmrc2018"), "dev", str(tmp_path), training=True, on_bad_row="skip")
    assert len(skipped.skipped) == 1 and [ex.id for ex in skipped.examples] == ["Q2"]  # the paragraph is the row


# -- NER -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny", "e5"])
def test_cluener_gold_spans_survive_the_tokenizer(model, data_dir, tiny_model, request):
    """Gold entities → token targets → scores → decoded entities: exactly the gold, for a character
    tokenizer and for the embedded model's piece tokenizer."""
    model_dir = tiny_model if model == "tiny" else request.getfixturevalue("e5_dir")
    task, head, tok = _head("cluener", model_dir)
    examples = load_split(task, "dev", str(data_dir), limit=200).examples
    enc = head.featurize(examples, tok, 128)
    assert len(enc.spans.rows) == sum(len(ex.label) for ex in examples)  # every entity representable
    width = int(enc.lengths.max())
    scores = torch.full((len(enc), len(task.label.values), width, width), -5.0)
    for i in range(len(enc)):
        for kind, s, e in enc.spans.rows[enc.spans.offsets[i] : enc.spans.offsets[i + 1]]:
            scores[i, kind, s, e] = 5.0
    preds = head.predict(scores, enc)
    assert preds == [set(ex.label) for ex in examples]
    assert compute_metrics(task.metrics, enc.targets, preds, 0)["entity_f1"] == 1.0


def test_cluener_bad_offsets_name_file_line_and_field(tmp_path):
    rows = [{"text": "温格的球队", "label": {"name": {"温格": [[0, 1]]}}},
            {"text": "曼联", "label": {"organization": {"曼联": [[0, 5]]}}}]
    write_jsonl(tmp_path / "clue" / "cluener_public" / "dev.json", rows)
    with pytest.raises(DataError, match=r"dev\.json:2: field 'label\.organization\.曼联': offsets \[0, 5\] outside"):
        load_split(get_task("cluener"), "dev", str(tmp_path))
    rows[1] = {"text": "曼联", "label": {"team": {"曼联": [[0, 1]]}}}
    write_jsonl(tmp_path / "clue" / "cluener_public" / "dev.json", rows)
    with pytest.raises(DataError, match="unknown entity type"):
        load_split(get_task("cluener"), "dev", str(tmp_path))


def test_chid_blank_without_candidates_is_reported(tmp_path):
    rows = [{"id": 1, "candidates": ["一心一意"], "content": "他#idiom#地工作", "answer": 0},
            {"id": 2, "candidates": [], "content": "他#idiom#地工作", "answer": 0}]
    write_jsonl(tmp_path / "fewclue" / "chid" / "dev_few_all.json", rows)
    with pytest.raises(DataError, match=r"dev_few_all\.json:2: field 'candidates': no candidates"):
        load_split(get_task("fewclue_chid"), "dev", str(tmp_path))
    data = load_split(get_task("fewclue_chid"), "dev", str(tmp_path), on_bad_row="skip")
    assert len(data.examples) == 1 and len(data.skipped) == 1


def test_cluener_train_then_eval_agree_and_predictions_validate(data_dir, tiny_model, tmp_path):
    """The run's recorded dev scores are what `clue-run eval` recomputes from the saved checkpoint."""
    from clue_runner import api
    from clue_runner.config import build_config
    from clue_runner.runs.result import read_result

    cfg = build_config({
        "task": "cluener", "model": {"name": str(tiny_model)},
        "data": {"dir": str(data_dir), "train_split": "dev", "max_train_examples": 32, "max_length": 64},
        "train": {"batch_size": 16, "max_steps": 2, "lr": 1e-3},
        "output_dir": str(tmp_path / "results"),
    })
    run_dir = api.train(cfg, log=lambda _: None)
    recorded = read_result(run_dir).best.metrics
    again = api.evaluate(run_dir)["metrics"]
    assert again == pytest.approx(recorded, abs=1e-6)
    assert set(recorded) == {"entity_f1", "entity_precision", "entity_recall", "cluener_macro_f1"}
