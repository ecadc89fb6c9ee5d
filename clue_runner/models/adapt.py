"""`clue-run model adapt-mlm`: continued masked-LM training of a whole encoder plus a NEW masked-LM
head on unlabelled text (PET's unsupervised step), optionally with the next-sentence objective on
consecutive sentences of documents. For checkpoints without pretrained heads (the embedded e5):
the result is a stand-in, so every run on it is labelled "adapted on N sentences" (the saved
config's `clue_run_adapted`, copied into each run JSON).
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from ..errors import ModelError
from ..runs.result import describe_adaptation
from . import load_tokenizer, quiet_transformers

_SENTENCE_END = re.compile(r"(?<=[。！？!?])")


def sentences_of(document: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(document) if len(s.strip()) >= 4]


def nsp_pairs(documents: list[list[str]], rng: random.Random, n: int) -> list[tuple[str, str, int]]:
    """(first, second, label) with label 0 = the second sentence follows the first in its document,
    1 = a sentence of another document (half each)."""
    docs = [d for d in documents if len(d) >= 2]
    if len(docs) < 2:
        raise ModelError("--nsp needs at least two documents of two or more sentences")
    out = []
    for _ in range(n):
        d = rng.randrange(len(docs))
        i = rng.randrange(len(docs[d]) - 1)
        if rng.random() < 0.5:
            out.append((docs[d][i], docs[d][i + 1], 0))
        else:
            other = docs[(d + rng.randrange(1, len(docs))) % len(docs)]
            out.append((docs[d][i], rng.choice(other), 1))
    return out


def piece_characters(tokenizer) -> dict[int, list[int]]:
    """Token id → the ids of its characters' own single-character pieces, for every piece of two or
    more characters all of which have one (SentencePiece's word-start mark and WordPiece's ## dropped)."""
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_ids)
    out = {}
    for piece, i in vocab.items():
        text = piece.lstrip("\u2581")
        text = text[2:] if text.startswith("##") else text
        if i in special or len(text) < 2:
            continue
        chars = [vocab.get(c) for c in text]
        if all(c is not None and c not in special for c in chars):
            out[i] = chars
    return out


def char_level_mask(ids: list[int], piece_chars: dict[int, list[int]], special: set[int], mask_id: int, vocab: int,
                    probability: float, rng: random.Random, max_length: int) -> tuple[list[int], list[int]]:
    """BERT's 15 % masking, except that a chosen piece of several characters (a Unigram tokenizer's
    "满意") is split into its characters, each a target: 80 % all [MASK], 10 % random tokens, 10 % the
    characters themselves. A PET template puts one [MASK] per label-word character, so the MLM head
    must learn to predict single characters at masks, not the multi-character pieces the tokenizer
    otherwise produces. Returns (inputs, targets with -100 where nothing is predicted)."""
    inputs, targets = [], []
    for position, token in enumerate(ids):
        expand = piece_chars.get(token, [token])
        room = max_length - len(inputs) - (len(ids) - position)  # what splitting may add and still fit
        if token in special or rng.random() >= probability or len(expand) - 1 > room:
            inputs.append(token)
            targets.append(-100)
            continue
        how = rng.random()
        for t in expand:
            inputs.append(mask_id if how < 0.8 else rng.randrange(vocab) if how < 0.9 else t)
            targets.append(t)
    return inputs, targets


def electra_encoder_as_bert_possible(model_path: str) -> bool:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_path)
    return cfg.model_type == "electra" and cfg.embedding_size == cfg.hidden_size


def electra_as_bert(model_path: str, out: Path) -> str:
    """An ELECTRA-layout encoder (the embedded e5) re-saved as a BERT: the same embeddings and layers
    under BERT's names (the two share the architecture when embedding_size == hidden_size), so that
    BertForPreTraining can add the next-sentence head ELECTRA lacks. The pooler starts new."""
    import transformers

    src = transformers.AutoModel.from_pretrained(model_path)
    c = src.config
    cfg = transformers.BertConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size, hidden_act=c.hidden_act,
        hidden_dropout_prob=c.hidden_dropout_prob, attention_probs_dropout_prob=c.attention_probs_dropout_prob,
        max_position_embeddings=c.max_position_embeddings, type_vocab_size=c.type_vocab_size,
        layer_norm_eps=c.layer_norm_eps, pad_token_id=c.pad_token_id)
    bert = transformers.BertModel(cfg)
    missing, unexpected = bert.load_state_dict(src.state_dict(), strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        raise ModelError(f"{model_path}: ELECTRA → BERT conversion left weights unmatched "
                         f"({', '.join((unexpected or missing)[:3])})")
    out.mkdir(parents=True, exist_ok=True)
    bert.save_pretrained(out)
    load_tokenizer(model_path).save_pretrained(out)
    return str(out)


class _Objectives:
    """Batches and logits of the two pretraining objectives on one model: masked characters (MLM)
    and, with a next-sentence head, sentence pairs (NSP)."""

    def __init__(self, model, tokenizer, max_length: int):
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        self.piece_chars = piece_characters(tokenizer)
        self.special = set(tokenizer.all_special_ids)
        self.heads = getattr(model, "cls", None)  # BERT-family: predictions (MLM) and seq_relationship (NSP)

    def mlm_batch(self, batch_texts, seed):
        tok = self.tokenizer
        ids = tok(batch_texts, truncation=True, max_length=self.max_length)["input_ids"]
        masked = [char_level_mask(x, self.piece_chars, self.special, tok.mask_token_id,
                                  len(tok), 0.15, random.Random(seed * 100_003 + i), self.max_length)
                  for i, x in enumerate(ids)]
        width = max(len(x) for x, _ in masked)
        pad = tok.pad_token_id
        inputs = torch.tensor([x + [pad] * (width - len(x)) for x, _ in masked])
        targets = torch.tensor([t + [-100] * (width - len(t)) for _, t in masked])
        batch = {"input_ids": inputs, "attention_mask": (torch.arange(width) < torch.tensor(
            [[len(x)] for x, _ in masked])).long()}
        if "token_type_ids" in tok.model_input_names:
            batch["token_type_ids"] = torch.zeros_like(inputs)
        return batch, targets

    def masked_logits(self, inputs, targets):
        """Logits at the masked positions only (the vocabulary projection of every position would
        cost about a third of the step), and their targets."""
        chosen = targets >= 0
        if hasattr(self.heads, "predictions"):
            hidden = self.model.base_model(**inputs).last_hidden_state
            return self.heads.predictions(hidden[chosen]), targets[chosen]
        return self.model(**inputs).logits[chosen], targets[chosen]

    def next_sentence_logits(self, pairs):
        """Logits of (first, second, is next) pairs, and their targets."""
        enc = self.tokenizer([p[0] for p in pairs], [p[1] for p in pairs], truncation=True,
                             max_length=self.max_length, padding=True, return_tensors="pt")
        logits = self.heads.seq_relationship(self.model.base_model(**enc).pooler_output)
        return logits, torch.tensor([p[2] for p in pairs])


def adapt_mlm(model_path: str, texts: list[str], out: Path, steps: int = 200, batch_size: int = 16,
              max_length: int = 64, lr: float = 5e-5, head_lr: float = 1e-3, documents: Optional[list[str]] = None,
              held_out: int = 200, seed: int = 0, log: Callable[[str], None] = print) -> dict:
    import transformers

    quiet_transformers()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    texts = [t for t in texts if t and t.strip()]
    rng.shuffle(texts)
    if len(texts) <= held_out:
        raise ModelError(f"adapt-mlm: {len(texts)} texts; need more than the {held_out} held out")
    test_texts, train_texts = texts[:held_out], texts[held_out:]
    nsp = documents is not None
    if nsp and electra_encoder_as_bert_possible(model_path):
        # ELECTRA has no next-sentence head; its encoder is BERT's, so it continues as a BERT.
        model_path = electra_as_bert(model_path, Path(out).with_name(Path(out).name + ".bert"))
    tokenizer = load_tokenizer(model_path)
    cls = transformers.AutoModelForPreTraining if nsp else transformers.AutoModelForMaskedLM
    model = cls.from_pretrained(model_path)
    if nsp and not hasattr(getattr(model, "cls", None), "seq_relationship"):
        raise ModelError(f"{model_path}: this architecture has no next-sentence head to train (--nsp)")
    docs = [sentences_of(d) for d in documents] if nsp else []
    test_docs, train_docs = (docs[: max(2, len(docs) // 10)], docs[max(2, len(docs) // 10):]) if nsp else ([], [])
    prefix = model.base_model_prefix + "."
    encoder = [p for n, p in model.named_parameters() if n.startswith(prefix)]
    heads = [p for n, p in model.named_parameters() if not n.startswith(prefix)]
    opt = torch.optim.AdamW([{"params": encoder, "lr": lr}, {"params": heads, "lr": head_lr}], weight_decay=0.01)
    objectives = _Objectives(model, tokenizer, max_length)

    t0 = time.process_time()
    model.train()
    for step in range(steps):
        inputs, targets = objectives.mlm_batch(rng.sample(train_texts, min(batch_size, len(train_texts))), seed=step)
        loss = torch.nn.functional.cross_entropy(*objectives.masked_logits(inputs, targets))
        if nsp:
            loss = loss + torch.nn.functional.cross_entropy(*objectives.next_sentence_logits(
                nsp_pairs(train_docs, rng, batch_size)))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % 50 == 0:
            log(f"adapt-mlm step {step + 1}/{steps} loss {loss.item():.3f}")
    model.eval()
    result = {"sentences": len(train_texts), "steps": steps, "batch_size": batch_size, "max_length": max_length,
              "source": model_path, "cpu_seconds": round(time.process_time() - t0, 1)}
    result.update(_held_out_scores(objectives, test_texts, test_docs if nsp else None))
    if nsp:
        result["documents"] = len(train_docs)
    model.config.clue_run_adapted = result
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return result


def _held_out_scores(objectives: _Objectives, test_texts: list[str], test_docs: Optional[list]) -> dict:
    """Masked-character accuracy on the held-out texts; next-sentence accuracy on held-out documents."""
    scores = {}
    with torch.no_grad():
        right = total = 0
        for i in range(0, len(test_texts), 32):
            inputs, targets = objectives.mlm_batch(test_texts[i:i + 32], seed=10**9 + i)
            logits, chosen = objectives.masked_logits(inputs, targets)
            right += int((logits.argmax(-1) == chosen).sum())
            total += len(chosen)
        scores["masked_token_accuracy"] = round(right / max(total, 1), 4)
        scores["masked_tokens_held_out"] = total
        if test_docs is not None:
            logits, labels = objectives.next_sentence_logits(nsp_pairs(test_docs, random.Random(99), 400))
            scores["next_sentence_accuracy"] = round(float((logits.argmax(-1) == labels).float().mean()), 4)
    return scores


def adapted_label(config) -> Optional[str]:
    return describe_adaptation(getattr(config, "clue_run_adapted", None))

