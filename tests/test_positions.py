"""Inputs past 512 tokens: hierarchical position embeddings, the max_length check, rotary models."""

from __future__ import annotations

import json

import pytest
import torch

from clue_runner import api
from clue_runner.config import build_config
from clue_runner.errors import ConfigError
from clue_runner.models.positions import copy, extend_positions, hierarchical, interpolate


def quiet(_):
    pass


def test_hierarchical_keeps_the_first_n_rows_and_follows_the_formula():
    torch.manual_seed(0)
    table = torch.randn(16, 8, dtype=torch.float64)
    alpha = 0.4
    out = hierarchical(table, 100, alpha)
    assert out.shape == (100, 8)
    torch.testing.assert_close(out[:16], table)
    u = (table - alpha * table[0]) / (1 - alpha)
    for k in (16, 17, 37, 99):
        torch.testing.assert_close(out[k], alpha * u[k // 16] + (1 - alpha) * u[k % 16])
    assert len({tuple(row.tolist()) for row in out}) == 100  # every position distinct
    with pytest.raises(ConfigError, match="n² = 256"):
        hierarchical(table, 257)


def test_copy_and_interpolate():
    table = torch.arange(8, dtype=torch.float32).view(4, 2)
    torch.testing.assert_close(copy(table, 6), table[[0, 1, 2, 3, 0, 1]])
    stretched = interpolate(table, 7)
    torch.testing.assert_close(stretched[0], table[0]) and torch.testing.assert_close(stretched[-1], table[-1])
    torch.testing.assert_close(stretched[1], (table[0] + table[1]) / 2)


def test_extended_bert_matches_the_original_below_its_length(tiny_model):
    from transformers import AutoModel

    original = AutoModel.from_pretrained(tiny_model).eval()
    extended = AutoModel.from_pretrained(tiny_model).eval()
    note = extend_positions(extended, 1024)
    assert "512 → 1024" in note and extended.config.max_position_embeddings == 1024
    ids = torch.randint(5, 100, (2, 300))
    with torch.no_grad():
        torch.testing.assert_close(extended(input_ids=ids).last_hidden_state, original(input_ids=ids).last_hidden_state)
        long = extended(input_ids=torch.randint(5, 100, (1, 1000))).last_hidden_state
    assert long.shape == (1, 1000, 32) and torch.isfinite(long).all()


def test_roberta_tables_keep_their_reserved_rows():
    from transformers import XLMRobertaConfig, XLMRobertaModel

    model = XLMRobertaModel(XLMRobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=32, max_position_embeddings=66)).eval()
    before = model.embeddings.position_embeddings.weight.detach().clone()
    extend_positions(model, 200)
    after = model.embeddings.position_embeddings.weight
    assert after.shape[0] == 202 and model.config.max_position_embeddings == 202
    torch.testing.assert_close(after[:66], before)  # reserved rows 0-1 and the 64 trained positions


def _long_task(tmp_path, n_rows: int = 24) -> str:
    """A sentiment task whose texts are ~1,000 characters: the label words sit at the end."""
    data = tmp_path / "data" / "long"
    data.mkdir(parents=True)
    filler = "今天天气很好我们去公园散步" * 80
    for split in ("train", "dev"):
        rows = [{"id": i, "sentence": filler + ("很满意" if i % 2 else "不喜欢"), "label": str(i % 2)} for i in range(n_rows)]
        (data / f"{split}.json").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    task = tmp_path / "long.yaml"
    task.write_text(
        "name: long_sentiment\nversion: 1\ndata: {dir: long, splits: {train: train.json, dev: dev.json}}\n"
        "inputs: {text_a: sentence}\nlabel: {values: ['0', '1']}\nmetrics: [accuracy]\nmain_metric: accuracy\n",
        encoding="utf-8")
    return str(task)


def _cfg(task, tiny_model, tmp_path, methods=(), length=1024):
    return build_config({"task": task, "model": {"name": str(tiny_model)},
                         "data": {"dir": str(tmp_path / "data"), "max_length": length},
                         "train": {"batch_size": 4, "max_steps": 3, "eval_every": 3, "lr": 1e-3},
                         "methods": list(methods), "output_dir": str(tmp_path / "results")})


def test_max_length_past_the_positions_is_refused_before_anything_is_written(tiny_model, tmp_path):
    task = _long_task(tmp_path)
    with pytest.raises(ConfigError, match=r"data.max_length 1024 exceeds the 512 positions .* long_positions"):
        api.train(_cfg(task, tiny_model, tmp_path), log=quiet)
    assert not (tmp_path / "results").exists()


def test_a_model_extended_to_1024_trains_on_long_inputs_and_reloads(tiny_model, tmp_path):
    from transformers import AutoModel

    task = _long_task(tmp_path)
    cfg = _cfg(task, tiny_model, tmp_path, [{"name": "long_positions", "max_positions": 1024}])
    run_dir = api.train(cfg, log=quiet)
    result = api.read_run(run_dir)
    run = api.load_run(run_dir)
    enc = run.featurize_split(api.load_task_split(run.cfg, run.task, "dev", data_dir=str(tmp_path / "data")))
    assert int(enc.lengths.max()) > 1000  # the whole text went in, not 512 tokens of it
    assert api.evaluate(run_dir, "dev", str(tmp_path / "data"))["metrics"] == result.best.metrics
    assert AutoModel.from_pretrained(run_dir / "best").config.max_position_embeddings == 1024


def test_roformer_runs_past_its_table_unextended(tmp_path):
    from transformers import BertTokenizerFast, RoFormerConfig, RoFormerModel

    d = tmp_path / "roformer"
    chars = sorted(set("今天天气很好我们去公园散步满意不喜欢"))
    RoFormerModel(RoFormerConfig(vocab_size=5 + len(chars), hidden_size=32, embedding_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)).save_pretrained(d)
    BertTokenizerFast(vocab={t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars])}).save_pretrained(d)
    task = _long_task(tmp_path)
    lines = []
    run_dir = api.train(_cfg(task, d, tmp_path), log=lines.append)
    assert any("rotary positions" in line for line in lines)
    assert api.read_run(run_dir).steps == 3
