"""Examples → tokenized items (`Encoded`) → padded batches."""

from .batching import collate, eval_batches, to_device, train_batches
from .encoded import Encoded, Segment, SpanTargets
from .tokenize import cache_key, cached_arrays, cached_segment, encode_examples, pack, tokenizer_fingerprint

__all__ = ["Encoded", "Segment", "SpanTargets", "cache_key", "cached_arrays", "cached_segment", "collate",
           "encode_examples", "eval_batches", "pack", "to_device", "tokenizer_fingerprint", "train_batches"]
