"""Examples → tokenized items (`Encoded`) → padded batches."""

from .batching import collate, eval_batches, to_device, train_batches
from .encoded import Encoded, Segment, SpanTargets
from .tokenize import cache_key, cached_arrays, cached_segment, pack, tokenize_examples, tokenizer_fingerprint

__all__ = ["Encoded", "Segment", "SpanTargets", "cache_key", "cached_arrays", "cached_segment", "collate",
           "eval_batches", "pack", "to_device", "tokenize_examples", "tokenizer_fingerprint", "train_batches"]
