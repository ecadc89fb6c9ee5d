import numpy as np
import pytest

from clue_runner.data.splits import Example
from clue_runner.features import collate, eval_batches, tokenize_examples, train_batches
from clue_runner.models import load_tokenizer


@pytest.mark.parametrize("group", [True, False])
def test_train_batches_cover_every_example_once(group):
    lengths = np.random.default_rng(0).integers(3, 100, 1003)
    batches = train_batches(lengths, 16, seed=1, epoch=0, group_by_length=group)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1003))
    assert all(len(b) == 16 for b in batches[:-1]) or group  # grouping may put the short batch anywhere
    assert [b.tolist() for b in batches] == [b.tolist() for b in train_batches(lengths, 16, 1, 0, group)]
    assert [b.tolist() for b in batches] != [b.tolist() for b in train_batches(lengths, 16, 1, 1, group)]


def test_length_grouping_reduces_padding():
    lengths = np.random.default_rng(0).integers(3, 128, 4000)
    def padded(batches):
        return sum(len(b) * lengths[b].max() for b in batches)
    assert padded(train_batches(lengths, 32, 0, 0, True)) < 0.75 * padded(train_batches(lengths, 32, 0, 0, False))


def test_eval_batches_sorted_and_complete():
    lengths = np.array([5, 9, 1, 9, 3])
    batches = eval_batches(lengths, 2)
    assert np.concatenate(batches).tolist() == [1, 3, 0, 4, 2]


def test_bi_encoder_segments_tokenize_each_text_alone(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    examples = [Example(0, "花呗提额", "借呗额度很高", 1), Example(1, "你好", "再见", 0)]
    enc = tokenize_examples(examples, tok, 32, separate_pairs=True)
    batch = collate(enc, [1, 0], tok.pad_token_id)
    assert batch["input_ids"][1, : enc.segments[""].lengths[0]].tolist() == tok("花呗提额")["input_ids"]
    assert batch["b_input_ids"][1, : enc.segments["b_"].lengths[0]].tolist() == tok("借呗额度很高")["input_ids"]
    assert enc.lengths.tolist() == (enc.segments[""].lengths + enc.segments["b_"].lengths).tolist()


def test_collate_never_truncates_or_reorders(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    examples = [Example(i, "今天天气很好" * (i + 1), "我们去公园" if i % 2 else "散步", 0) for i in range(6)]
    enc = tokenize_examples(examples, tok, 512)
    idx = [4, 0, 5]
    batch = collate(enc, idx, tok.pad_token_id, pad_multiple=8)
    assert batch["input_ids"].shape[1] % 8 == 0
    for row, i in enumerate(idx):
        n = int(enc.lengths[i])
        want = tok(examples[i].text_a, examples[i].text_b)["input_ids"]
        assert batch["input_ids"][row, :n].tolist() == want
        assert batch["attention_mask"][row].sum() == n
        assert (batch["input_ids"][row, n:] == tok.pad_token_id).all()


def test_tokenization_cache_is_reused_and_keyed(tiny_model, monkeypatch):
    import clue_runner.features.tokenize as features

    tok = load_tokenizer(str(tiny_model))
    examples = [Example(0, "花呗提额", "借呗额度", 1), Example(1, "你好", "再见", 0)]
    first = tokenize_examples(examples, tok, 32)
    calls = []
    monkeypatch.setattr(features, "_tokenize", lambda *a: calls.append(a) or first.segments[""])
    again = tokenize_examples(examples, tok, 32)
    assert calls == [] and again.segments[""].ids.tolist() == first.segments[""].ids.tolist()
    tokenize_examples(examples, tok, 16)  # another max_length is another cache entry
    assert len(calls) == 1


def test_a_freed_tokenizers_fingerprint_is_not_inherited(tiny_model, monkeypatch):
    """id() of a garbage-collected tokenizer is reused; the new tokenizer must get its own fingerprint."""
    from transformers import AutoTokenizer

    from clue_runner.features import tokenize

    first = AutoTokenizer.from_pretrained(tiny_model)
    fingerprint = tokenize.tokenizer_fingerprint(first)
    second = AutoTokenizer.from_pretrained(tiny_model)
    second.backend_tokenizer.normalizer = None  # tokenizes otherwise (no lower-casing)
    monkeypatch.setattr(tokenize, "id", lambda obj: 1, raising=False)  # as if `second` reused first's id
    tokenize.tokenizer_fingerprint(first)
    assert tokenize.tokenizer_fingerprint(second) != fingerprint


def test_cpu_evaluation_batches_are_capped_by_tokens_and_pad_less():
    from clue_runner.features.batching import eval_batches

    rng = np.random.default_rng(0)
    lengths = rng.integers(8, 200, size=160)
    fixed = eval_batches(lengths, 128)
    capped = eval_batches(lengths, 128, max_tokens=4096)
    for batches in (fixed, capped):
        assert sorted(np.concatenate(batches).tolist()) == list(range(160))  # every item once

    def padded(batches):
        return sum(len(b) * lengths[b].max() for b in batches)

    assert all(len(b) * lengths[b].max() <= 4096 or len(b) == 1 for b in capped)
    assert padded(capped) < 0.75 * padded(fixed)
