"""Issue 26: one huge row must not take the machine. Texts are cut to what the head reads before any
tokenizer sees them (clue_runner.data.limits), with one warning naming file and line; a span context
past its hard limit is a bad row; and the cut changes no encoding of a real row."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clue_runner.config import build_config
from clue_runner.data import limits as text_limits
from clue_runner.data.limits import TextLimits
from clue_runner.data.splits import load_split
from clue_runner.engine.build import build, load_task_split
from clue_runner.errors import DataError
from clue_runner.features.prompts import render_prompts
from clue_runner.heads import resolve_head
from clue_runner.tasks import get_task

from conftest import write_jsonl

ROWS = [{"id": i, "sentence": "这个东西很好用" * 3, "label": "Positive" if i % 2 else "Negative"} for i in range(24)]


def eprstmt_data(root: Path, huge: int = 0) -> Path:
    """FewCLUE eprstmt split 0 with 24 ordinary rows; `huge` > 0 adds one row of that many characters as line 7."""
    rows = list(ROWS)
    if huge:
        rows.insert(6, {"id": 99, "sentence": "很" * huge, "label": "Positive"})
    write_jsonl(root / "fewclue" / "eprstmt" / "train_0.json", rows)
    write_jsonl(root / "fewclue" / "eprstmt" / "dev_0.json", ROWS[:8])
    return root


def eprstmt_config(tiny_model, root: Path, out: Path, **data) -> dict:
    return {"task": "fewclue_eprstmt", "model": {"name": str(tiny_model)},
            "data": {"dir": str(root), "variant": "0", "max_length": 32, **data},
            "train": {"batch_size": 8, "max_steps": 2, "eval_every": 2, "seed": 1}, "output_dir": str(out)}


def test_a_long_text_is_cut_with_one_warning_naming_file_and_line(tiny_model, tmp_path, capsys):
    root = eprstmt_data(tmp_path / "data", huge=200_000)
    cfg = build_config(eprstmt_config(tiny_model, root, tmp_path / "out"))
    data = load_task_split(cfg, get_task("fewclue_eprstmt"), "train", training=True)
    keep = 32 * text_limits.CHARS_PER_TOKEN
    assert [len(ex.text_a) for ex in data.examples] == [21] * 6 + [keep] + [21] * 18  # the row stays, cut
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    path = root / "fewclue" / "eprstmt" / "train_0.json"
    assert warnings == [f"warning: {path}:7: field 'sentence' cut from 200,000 to {keep:,} characters before "
                        f"tokenizing (data.max_length 32 × {text_limits.CHARS_PER_TOKEN} characters per token)"]
    assert data.summary()["cut"] == 1 and data.summary()["cut_first"] == [warnings[0].removeprefix("warning: ")]


def cmrc_file(root: Path, contexts: list[str], questions: list[tuple[str, str, int]] = ()) -> Path:
    """A SQuAD-style CMRC2018 dev file, one paragraph per context with the given (question, answer, start)."""
    data = [{"id": f"D{i}", "title": "", "paragraphs": [{"id": f"P{i}", "context": context, "qas": [
        {"id": f"Q{i}-{k}", "question": q, "answers": [{"text": a, "answer_start": s}]}
        for k, (q, a, s) in enumerate(questions or [("问题是什么", context[:2], 0)])]}]}
        for i, context in enumerate(contexts)]
    path = root / "clue" / "cmrc2018_public" / "cmrc2018_dev.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": "v1.0", "data": data}, ensure_ascii=False), encoding="utf-8")
    return root


def cmrc_config(tiny_model, root: Path, **head) -> object:
    return build_config({"task": "cmrc2018", "model": {"name": str(tiny_model)},
                         "data": {"dir": str(root), "max_length": 64}, "head": {"stride": 16, **head}})


def test_a_span_context_past_its_limit_is_a_bad_row(tiny_model, tmp_path):
    root = cmrc_file(tmp_path / "data", ["短的段落。" * 10, "很长的段落。" * 200, "短的段落。" * 10])
    task, path = get_task("cmrc2018"), root / "clue" / "cmrc2018_public" / "cmrc2018_dev.json"
    cfg = cmrc_config(tiny_model, root, max_context_chars=1000)
    with pytest.raises(DataError, match="cmrc2018_dev.json:.*field 'context': the text has 1,200 characters, more "
                                        "than the 1,000 read whole .head.max_context_chars"):
        load_task_split(cfg, task, "dev")
    data = load_task_split(cfg, task, "dev", on_bad_row="skip")
    assert len(data.examples) == 2 and len(data.skipped) == 1 and str(path) in data.skipped[0]
    # with max_windows, only what those windows hold is read: the context is cut instead
    data = load_task_split(cmrc_config(tiny_model, root, max_context_chars=1000, max_windows=1), task, "dev")
    keep = 64 * text_limits.CHARS_PER_TOKEN  # one window of 64 tokens
    assert [len(ex.text_b) for ex in data.examples] == [50, min(keep, 1200), 50] and len(data.cut) == (keep < 1200)


# -- no encoding of a real row changes ---------------------------------------------------------


def assert_same_encoding(a, b) -> None:
    assert a.segments.keys() == b.segments.keys()
    for key in a.segments:
        for part in ("ids", "offsets", "type_ids"):
            x, y = getattr(a.segments[key], part), getattr(b.segments[key], part)
            assert (x is None and y is None) or np.array_equal(x, y), (key, part)
    assert np.array_equal(a.labels, b.labels, equal_nan=a.labels.dtype.kind == "f") and a.choices == b.choices
    assert a.item_arrays.keys() == b.item_arrays.keys()
    assert all(np.array_equal(a.item_arrays[k], b.item_arrays[k]) for k in a.item_arrays)
    assert (a.item_example is None and b.item_example is None) or np.array_equal(a.item_example, b.item_example)
    assert a.gold == b.gold
    for k in a.meta.keys() - {"contexts", "texts"}:  # the texts themselves are what was cut
        assert np.array_equal(a.meta[k], b.meta[k]), k


def long_cmrc(data_dir: Path, root: Path) -> Path:
    """Real CMRC2018 contexts joined twelve at a time (~8,000 characters), with short real questions."""
    real = load_split(get_task("cmrc2018"), "dev", data_dir=str(data_dir))
    contexts = list(dict.fromkeys(ex.text_b for ex in real.examples))[:48]
    joined = ["".join(contexts[i:i + 12]) for i in range(0, 48, 12)]
    asked = [(ex.text_a, ex.label[0], ex.extra["span"][0]) for ex in real.examples
             if len(ex.text_a) <= 12 and ex.text_b == contexts[0] and ex.extra["span"]]
    return cmrc_file(root, joined, asked[:3])


def cut_rows_and_some_others(whole, cut, n: int = 48):
    """The same ≤ n examples of both loads: mostly ones that were cut (a tokenizer's overflowing pieces of
    long uncut texts at a tiny max_length take a lot of memory, so not all of them)."""
    assert [ex.id for ex in whole.examples] == [ex.id for ex in cut.examples]
    changed = [i for i, (a, b) in enumerate(zip(whole.examples, cut.examples)) if (a.text_a, a.text_b) != (b.text_a, b.text_b)]
    assert len(changed) >= 3  # the comparison is about rows that were cut
    keep = sorted(set(changed[: n - 8]) | set(range(min(8, len(whole.examples)))))
    return ([whole.examples[i] for i in keep], [cut.examples[i] for i in keep])


# (task, variant, max_length, head options): max_length small enough that many real texts are cut
CASES = [("fewclue_iflytek", "0", 8, {}), ("fewclue_csldcp", "0", 8, {}), ("c3", None, 16, {}),
         ("cmrc2018", None, 32, {"stride": 8, "max_windows": 2})]


@pytest.mark.parametrize("task_name,variant,max_length,head", CASES, ids=[c[0] for c in CASES])
def test_cutting_changes_no_encoding_of_real_rows(task_name, variant, max_length, head, tiny_model, data_dir,
                                                  tmp_path):
    root = long_cmrc(data_dir, tmp_path / "data") if task_name == "cmrc2018" else data_dir
    cfg = build_config({"task": task_name, "model": {"name": str(tiny_model)}, "head": head,
                        "data": {"dir": str(root), "variant": variant, "max_length": max_length}})
    task, built = get_task(task_name), build(cfg)
    head_cls, params = resolve_head(task, cfg.head)
    whole = load_split(task, "dev", data_dir=str(root), variant=variant)
    cut = load_split(task, "dev", data_dir=str(root), variant=variant, limits=head_cls.text_limits(params, max_length))
    a, b = cut_rows_and_some_others(whole, cut)
    assert_same_encoding(built.featurize_split(dataclasses.replace(whole, examples=a)),
                         built.featurize_split(dataclasses.replace(cut, examples=b)))


def test_cutting_changes_no_prompt_and_no_sentencepiece_encoding(e5_dir, data_dir):
    """The same for PET prompts (texts tokenized whole, then cut to the budget) and for a SentencePiece
    tokenizer (tokens of several characters): text pairs cut at max_length 8."""
    from transformers import AutoTokenizer

    from clue_runner.features import tokenize_examples

    task = get_task("fewclue_csl")
    whole = load_split(task, "dev", data_dir=str(data_dir), variant="0")
    a, b = cut_rows_and_some_others(whole, load_split(task, "dev", data_dir=str(data_dir), variant="0",
                                                      limits=TextLimits.within(8)))
    tokenizer = AutoTokenizer.from_pretrained(e5_dir)
    assert_same_encoding(tokenize_examples(a, tokenizer, 8, use_cache=False), tokenize_examples(b, tokenizer, 8, use_cache=False))
    template = "[MASK]。{text_a}{text_b}"
    assert_same_encoding(render_prompts(a, tokenizer, template, 8, 2), render_prompts(b, tokenizer, template, 8, 2))


# -- memory --------------------------------------------------------------------------------------

PEAK_CHILD = r"""
import json, sys
from clue_runner import api
from clue_runner.config import build_config
api.train(build_config(json.loads(sys.argv[1])))
status = open("/proc/self/status").read()
print("peak_kib", next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
"""


def peak_train(tiny_model, root: Path, out: Path, cache: Path) -> tuple[float, str]:
    """Peak resident memory (MB) of a training run in its own process, and what it wrote to stderr."""
    cfg = eprstmt_config(tiny_model, root, out)
    env = {**os.environ, "CLUE_RUN_CACHE": str(cache), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", PEAK_CHILD, json.dumps(cfg)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.split("peak_kib")[-1]) / 1024, done.stderr


@pytest.mark.slow
def test_a_twenty_million_character_row_trains_in_bounded_memory(tiny_model, tmp_path):
    """Before the cut: 525 MB without the row, 1,667 MB with 2 million characters (13.4 GB with 20 million);
    after it the row adds a few tens of MB (the row itself, read and parsed)."""
    plain, _ = peak_train(tiny_model, eprstmt_data(tmp_path / "plain"), tmp_path / "out", tmp_path / "cache-a")
    huge, stderr = peak_train(tiny_model, eprstmt_data(tmp_path / "huge", 20_000_000), tmp_path / "out",
                              tmp_path / "cache-b")
    assert huge - plain < 1500, (plain, huge)
    path = tmp_path / "huge" / "fewclue" / "eprstmt" / "train_0.json"
    assert f"{path}:7: field 'sentence' cut from 20,000,000 to" in stderr
