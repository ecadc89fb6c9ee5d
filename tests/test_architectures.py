"""Architecture × head matrix: tiny random checkpoints of each encoder family a user brings, each with a
tokenizer that really tokenizes Chinese, trained a few steps under every head and reloaded with the
same score (what `clue-run eval` does).

The default run trains each architecture under one head (the heads rotate, so every head meets
several architectures); `CLUE_RUN_SLOW=1` runs the full matrix.
"""

from __future__ import annotations

import gzip
import math
import os
from collections import Counter
from pathlib import Path

import pytest

from clue_runner import api
from clue_runner.config import build_config
from clue_runner.engine.build import load_task_split
from clue_runner.engine.evaluate import score

from conftest import DATA_DIR, _fixture_chars
from decoders import PADDED, byte_bpe

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def _char_counts() -> Counter:
    counts = Counter(_fixture_chars())
    for path in sorted(DATA_DIR.glob("*/*/*.json.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if i >= 300:
                    break
                counts.update(c for c in line if not c.isspace())
    return counts


def _wordpiece(directory: Path):
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_fixture_chars()]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return BertTokenizerFast(vocab=str(directory / "vocab.txt"), do_lower_case=True, tokenize_chinese_chars=True)


def _unigram(directory: Path, cls_name: str):
    """A SentencePiece-style Unigram over the data's characters (XLM-R, ALBERT, DeBERTa-v2)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    counts = _char_counts()
    total = sum(counts.values())
    vocab = [(s, 0.0) for s in SPECIALS] + [("\u2581", -2.0)] + [(c, math.log(n / total)) for c, n in counts.most_common()]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizers.NFKC(), pre_tokenizers.Metaspace(), decoders.Metaspace()
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"}
    if cls_name != "XLMRobertaTokenizerFast":  # ALBERT / DeBERTa-v2 use [CLS] … [SEP] names for the same roles
        specials.update(cls_token="<s>", sep_token="</s>")
    return getattr(transformers, cls_name)(tokenizer_object=tok, **specials)


def _byte_bpe(directory: Path):
    """A byte-level BPE whose merges make each data character one token (GPT-2/RoBERTa style)."""
    from transformers import RobertaTokenizerFast

    return RobertaTokenizerFast(tokenizer_object=byte_bpe([c for c, _ in _char_counts().most_common()], SPECIALS))


SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
# name: (config class, model class, tokenizer kind, extra config)
ARCHS = {
    "bert": ("BertConfig", "BertModel", "wordpiece", {}),
    "roberta": ("RobertaConfig", "RobertaModel", "bpe", {"max_position_embeddings": 514, "pad_token_id": 1,
                                                         "bos_token_id": 0, "eos_token_id": 2}),
    "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaModel", "XLMRobertaTokenizerFast",
                    {"max_position_embeddings": 514, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}),
    "albert": ("AlbertConfig", "AlbertModel", "AlbertTokenizerFast", {"embedding_size": 16, "pad_token_id": 1}),
    "electra": ("ElectraConfig", "ElectraModel", "wordpiece", {"embedding_size": 16}),
    "roformer": ("RoFormerConfig", "RoFormerModel", "wordpiece", {"embedding_size": 32}),  # RoFormerTokenizer needs rjieba
    "deberta-v2": ("DebertaV2Config", "DebertaV2Model", "DebertaV2TokenizerFast", {"pad_token_id": 1}),
    "ernie": ("ErnieConfig", "ErnieModel", "wordpiece", {}),
    "megatron-bert": ("MegatronBertConfig", "MegatronBertModel", "wordpiece", {}),
    "modernbert": ("ModernBertConfig", "ModernBertModel", "wordpiece",
                   {"global_attn_every_n_layers": 2, "local_attention": 16, "pad_token_id": 0, "cls_token_id": 2,
                    "sep_token_id": 3, "bos_token_id": 2, "eos_token_id": 3}),
    "distilbert": ("DistilBertConfig", "DistilBertModel", "wordpiece", {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64}),
    "bert-mlm": ("BertConfig", "BertForMaskedLM", "wordpiece", {}),
    "roberta-seqcls": ("RobertaConfig", "RobertaForSequenceClassification", "bpe",
                       {"max_position_embeddings": 514, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "num_labels": 3}),
}

# head: (task, head options, data options)
HEADS = {
    "cls_pair": ("fewclue_bustm", {}, {}),
    "embedding": ("stsb", {}, {}),
    "multiple_choice": ("c3", {}, {}),
    "span": ("cmrc2018", {"stride": 16}, {"train_split": "trial"}),  # the shared data has no CMRC train file
    "global_pointer": ("cluener", {}, {}),
    "cls_regression": ("stsb", {"name": "cls"}, {}),
}


def make_checkpoint(arch: str, directory: Path) -> Path:
    import torch
    import transformers

    config_cls, model_cls, tok_kind, extra = ARCHS[arch]
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = {"wordpiece": _wordpiece, "bpe": _byte_bpe}.get(tok_kind, lambda d: _unigram(d, tok_kind))(directory)
    tokenizer.save_pretrained(directory)
    small = {} if arch == "distilbert" else dict(SMALL)
    config = getattr(transformers, config_cls)(vocab_size=len(tokenizer), **small, **extra)
    torch.manual_seed(0)
    getattr(transformers, model_cls)(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    made = {}

    def get(arch):
        if arch not in made:
            made[arch] = make_checkpoint(arch, tmp_path_factory.mktemp(arch))
        return made[arch]

    return get


def _cfg(model_dir, task, head, data, data_dir, out):
    return build_config({
        "task": task, "model": {"name": str(model_dir)}, "head": head,
        "data": {"dir": str(data_dir), "max_length": 64, "max_train_examples": 16, "max_eval_examples": 16, **data},
        "train": {"batch_size": 8, "max_steps": 2, "lr": 1e-3, "eval_batch_size": 8, "seed": 1},
        "output_dir": str(out),
    })


def _pairs(full: bool):
    archs, heads = list(ARCHS), list(HEADS)
    if full:
        return [(a, h) for a in archs for h in heads]
    return [(a, heads[i % len(heads)]) for i, a in enumerate(archs)]


FULL = os.environ.get("CLUE_RUN_SLOW") == "1"


@pytest.mark.parametrize("arch", list(ARCHS))
def test_tokenizer_really_tokenizes_chinese(arch, checkpoints, data_dir):
    from transformers import AutoTokenizer

    from clue_runner.data.splits import load_split
    from clue_runner.tasks import get_task

    tokenizer = AutoTokenizer.from_pretrained(checkpoints(arch))
    examples = load_split(get_task("fewclue_eprstmt"), "dev", data_dir=data_dir).examples[:50]
    ids = [i for ex in examples for i in tokenizer(ex.text_a, add_special_tokens=False)["input_ids"]]
    assert len(ids) >= sum(len(ex.text_a) for ex in examples) * 0.5  # about a token per character
    assert ids.count(tokenizer.unk_token_id) / len(ids) < 0.02


@pytest.mark.parametrize("arch,head", _pairs(FULL))
def test_train_and_reload_same_score(arch, head, checkpoints, data_dir, tmp_path):
    task, options, data = HEADS[head]
    cfg = _cfg(checkpoints(arch), task, options, data, data_dir, tmp_path)
    run_dir = api.train(cfg, log=lambda _: None)
    result = api.read_run(run_dir)
    assert result.steps == 2
    # What `clue-run eval` does (api.evaluate), on the run's 16 dev examples rather than the whole split.
    run = api.load_run(run_dir, "cpu")
    enc = run.featurize_split(load_task_split(run.cfg, run.task, "dev", limit=16))
    logits, _ = run.logits(enc)
    again = score(run.task, run.predict, logits, enc, None)
    assert again == pytest.approx(result.best.metrics, abs=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "qwen2", "llama", "mistral"])
def test_causal_lm_backbone_pads_for_the_user(arch, tiny_decoder, data_dir):
    """A decoder loads as `causal_lm` with its LM head; a tokenizer without a pad token pads with EOS;
    left and right padding give the same next-token logits at every real token."""
    import torch

    from clue_runner.models import load_tokenizer
    from clue_runner.models.backbone import decoder_tokenizer, load_backbone

    path = str(tiny_decoder(arch))
    backbone = load_backbone(path, "causal_lm")
    assert backbone.load_report.new_head == [] and backbone.load_report.missing_encoder == []
    tokenizer = load_tokenizer(path)
    assert (tokenizer.pad_token is not None) == (arch in PADDED)  # as GPT-2, Llama and Qwen2.5 ship
    ids = tokenizer("这部电影很好看，值得一看", add_special_tokens=False)["input_ids"]
    assert len(ids) == 12 and tokenizer.unk_token_id not in ids  # one token per character, none unknown
    texts = ["这部电影很好看", "差评"]
    logits = {}
    for side in ("left", "right"):
        decoder_tokenizer(tokenizer, side)
        assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.padding_side == side
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = backbone.causal(batch["input_ids"], batch["attention_mask"]).logits
        mask = batch["attention_mask"].bool()
        logits[side] = [out[i][mask[i]] for i in range(len(texts))]
    for left, right in zip(logits["left"], logits["right"]):
        assert torch.allclose(left, right, atol=1e-4)
    with pytest.raises(ValueError):
        decoder_tokenizer(tokenizer, "middle")
