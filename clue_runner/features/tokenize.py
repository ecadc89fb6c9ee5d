"""Tokenization, cached on disk: an identical earlier tokenization is loaded, not redone."""

from __future__ import annotations

import hashlib
import json
from typing import Callable, Optional, Sequence

import numpy as np

from ..paths import cache_root
from ..storage import atomic_save, kill_point
from .encoded import Encoded, Segment

TOKENIZE_CHUNK = 2048


# id(tokenizer) -> (weak reference, fingerprint). The reference is checked: a freed tokenizer's id is
# reused by the next object, which must not inherit its fingerprint (and its cached token ids).
_fingerprints: dict[int, tuple] = {}


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of everything that decides token ids: the full fast-tokenizer definition."""
    import weakref

    key = id(tokenizer)
    known = _fingerprints.get(key)
    if known is None or known[0]() is not tokenizer:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
        extra = json.dumps([tokenizer.__class__.__name__, tokenizer.model_input_names], sort_keys=True)
        known = (weakref.ref(tokenizer), hashlib.sha1((text + extra).encode()).hexdigest())
        _fingerprints[key] = known
    return known[1]


def cache_key(texts_a: Sequence[str], texts_b: Optional[Sequence[str]], tokenizer, settings: str) -> str:
    """Hash of the tokenizer, the settings that shape the output and every text."""
    h = hashlib.sha1()
    h.update(f"v2|{tokenizer_fingerprint(tokenizer)}|{settings}".encode())
    for i, a in enumerate(texts_a):
        h.update(a.encode())
        h.update(b"\x00" + (texts_b[i].encode() if texts_b is not None else b"\x01") + b"\x00")
    return h.hexdigest()


def cached_arrays(key: str, build: Callable[[], dict[str, np.ndarray]], use_cache: bool = True) -> dict[str, np.ndarray]:
    """`build()` once per key: later runs load the arrays from the on-disk cache."""
    if not use_cache:
        return build()
    path = cache_root() / "tokens" / f"{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    arrays = build()
    kill_point("tokenized")
    atomic_save(path, lambda fh: np.savez(fh, **arrays))
    return arrays


def pack(rows: Sequence[Sequence[int]], dtype=np.int32) -> tuple[np.ndarray, np.ndarray]:
    """Variable-length rows → (flat values, offsets)."""
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    flat = np.concatenate([np.asarray(r, dtype=dtype) for r in rows]) if len(rows) else np.zeros(0, dtype)
    return flat, offsets


def _tokenize(texts_a: Sequence[str], texts_b: Optional[Sequence[str]], tokenizer, max_length: int) -> Segment:
    want_types = "token_type_ids" in tokenizer.model_input_names
    ids, types = [], []
    for start in range(0, len(texts_a), TOKENIZE_CHUNK):
        out = tokenizer(
            list(texts_a[start : start + TOKENIZE_CHUNK]),
            list(texts_b[start : start + TOKENIZE_CHUNK]) if texts_b is not None else None,
            truncation=True,
            max_length=max_length,
            return_token_type_ids=want_types,
            return_attention_mask=False,
        )
        ids += out["input_ids"]
        if want_types:
            types += out["token_type_ids"]
    flat, offsets = pack(ids)
    return Segment(ids=flat, offsets=offsets, type_ids=pack(types, np.int8)[0] if want_types else None)


def cached_segment(texts_a, texts_b, tokenizer, max_length: int, use_cache: bool = True) -> Segment:
    def build():
        seg = _tokenize(texts_a, texts_b, tokenizer, max_length)
        return {"ids": seg.ids, "offsets": seg.offsets, **({"type_ids": seg.type_ids} if seg.type_ids is not None else {})}

    z = cached_arrays(cache_key(texts_a, texts_b, tokenizer, f"{max_length}"), build, use_cache)
    return Segment(z["ids"], z["offsets"], z.get("type_ids"))


def tokenize_examples(examples: Sequence, tokenizer, max_length: int, separate_pairs: bool = False,
                    use_cache: bool = True) -> Encoded:
    """Tokenize (reusing an identical earlier tokenization from the on-disk cache).

    Text pairs become one sequence (`<s> A </s></s> B </s>` or `[CLS] A [SEP] B [SEP]`) unless
    `separate_pairs`, where A and B are tokenized on their own for a bi-encoder.
    """
    texts_a = [ex.text_a for ex in examples]
    texts_b = [ex.text_b for ex in examples] if examples[0].text_b is not None else None
    if separate_pairs and texts_b is not None:
        segments = {"": cached_segment(texts_a, None, tokenizer, max_length, use_cache),
                    "b_": cached_segment(texts_b, None, tokenizer, max_length, use_cache)}
    else:
        segments = {"": cached_segment(texts_a, texts_b, tokenizer, max_length, use_cache)}
    if any(isinstance(ex.label, float) for ex in examples):
        labels = np.array([np.nan if ex.label is None else ex.label for ex in examples], dtype=np.float32)
    else:
        labels = np.array([-100 if ex.label is None else ex.label for ex in examples], dtype=np.int64)
    return Encoded(segments, labels)
