"""Tiny random decoder checkpoints (GPT-2, Qwen2, Llama, Mistral) for tests: built from a config, saved with a
byte-level BPE tokenizer whose merges make each given character one token. Like real GPT-2/Llama/Qwen
tokenizers GPT-2's, Llama's and Mistral's have no pad token (Llama's and Mistral's prepend <s> as theirs do); the
Qwen2 one names `<|endoftext|>` as EOS and pad, as Qwen2.5's does.

Import from tests: `from decoders import make_decoder, DECODERS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
QWEN_EOS = "<|endoftext|>"
# name: (config class, extra config, whether the tokenizer prepends BOS)
DECODERS = {
    "gpt2": ("GPT2Config", {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 512}, False),
    "qwen2": ("Qwen2Config", {**SMALL, "num_key_value_heads": 1, "max_position_embeddings": 512}, False),
    "llama": ("LlamaConfig", {**SMALL, "num_key_value_heads": 2, "max_position_embeddings": 512}, True),
    "mistral": ("MistralConfig", {**SMALL, "num_key_value_heads": 1, "max_position_embeddings": 512,
                                  "sliding_window": None}, True),
}
PADDED = {"qwen2"}  # tokenizers that ship a pad token


def byte_bpe(chars: Iterable[str], specials: list[str]):
    """A `tokenizers` byte-level BPE in which every character of `chars` is one token (the others
    fall back to their bytes, so nothing is unknown)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    vocab = {s: i for i, s in enumerate(specials)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(symbol, len(vocab))
    merges = []
    for char in chars:
        pieces = byte_level.pre_tokenize_str(char)
        if len(pieces) != 1 or len(pieces[0][0]) < 2:
            continue
        current = pieces[0][0][0]
        for symbol in pieces[0][0][1:]:
            if current + symbol not in vocab:
                vocab[current + symbol] = len(vocab)
                merges.append((current, symbol))
            current += symbol
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer, tok.decoder = byte_level, decoders.ByteLevel()
    return tok


def decoder_tokenizer(chars: Iterable[str], prepend_bos: bool = False, qwen: bool = False):
    """A transformers tokenizer over `byte_bpe(chars)`: bos/eos/unk and no pad token (GPT-2, Llama),
    or Qwen's `<|endoftext|>` as both EOS and pad."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    eos = QWEN_EOS if qwen else EOS
    tok = byte_bpe(chars, [BOS, eos, UNK])
    if prepend_bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                           special_tokens=[(BOS, 0)])
    pad = {"pad_token": eos} if qwen else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=eos, unk_token=UNK, **pad)


def make_decoder(arch: str, directory: Path, chars: Iterable[str], seed: int = 0, **overrides) -> Path:
    """A random `arch` causal LM (see DECODERS) with its tokenizer, saved in `directory`."""
    import torch
    import transformers

    config_cls, extra, prepend_bos = DECODERS[arch]
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = decoder_tokenizer(chars, prepend_bos, qwen=arch == "qwen2")
    tokenizer.save_pretrained(directory)
    config = getattr(transformers, config_cls)(vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=1,
                                               **{**extra, **overrides})
    torch.manual_seed(seed)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    return directory
