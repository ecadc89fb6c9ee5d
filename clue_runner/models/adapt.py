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
from ..features.prompts import random_mask
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
    tokenizer = load_tokenizer(model_path)
    nsp = documents is not None
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
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))

    def mlm_batch(batch_texts, generator=None):
        enc = tokenizer(batch_texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        maskable = (enc["attention_mask"] > 0) & ~torch.isin(enc["input_ids"], special)
        inputs, targets = random_mask(enc["input_ids"], maskable, tokenizer.mask_token_id, len(tokenizer), 0.15, generator)
        return {**enc, "input_ids": inputs}, targets

    def mlm_logits(out):
        return out.prediction_logits if nsp else out.logits

    t0 = time.process_time()
    model.train()
    for step in range(steps):
        inputs, targets = mlm_batch(rng.sample(train_texts, min(batch_size, len(train_texts))))
        loss = torch.nn.functional.cross_entropy(mlm_logits(model(**inputs)).flatten(0, 1), targets.flatten())
        if nsp:
            pairs = nsp_pairs(train_docs, rng, batch_size)
            enc = tokenizer([p[0] for p in pairs], [p[1] for p in pairs], truncation=True, max_length=max_length,
                            padding=True, return_tensors="pt")
            loss = loss + torch.nn.functional.cross_entropy(model(**enc).seq_relationship_logits,
                                                            torch.tensor([p[2] for p in pairs]))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % 50 == 0:
            log(f"adapt-mlm step {step + 1}/{steps} loss {loss.item():.3f}")
    model.eval()
    result = {"sentences": len(train_texts), "steps": steps, "batch_size": batch_size, "max_length": max_length,
              "source": model_path, "cpu_seconds": round(time.process_time() - t0, 1)}
    with torch.no_grad():
        right = total = 0
        generator = torch.Generator().manual_seed(1234)
        for i in range(0, len(test_texts), 32):
            inputs, targets = mlm_batch(test_texts[i:i + 32], generator)
            pred = mlm_logits(model(**inputs)).argmax(-1)
            chosen = targets >= 0
            right += int((pred[chosen] == targets[chosen]).sum())
            total += int(chosen.sum())
        result["masked_token_accuracy"] = round(right / max(total, 1), 4)
        result["masked_tokens_held_out"] = total
        if nsp:
            pairs = nsp_pairs(test_docs, random.Random(99), 400)
            enc = tokenizer([p[0] for p in pairs], [p[1] for p in pairs], truncation=True, max_length=max_length,
                            padding=True, return_tensors="pt")
            pred = model(**enc).seq_relationship_logits.argmax(-1)
            result["next_sentence_accuracy"] = round(float((pred == torch.tensor([p[2] for p in pairs])).float().mean()), 4)
            result["documents"] = len(train_docs)
    model.config.clue_run_adapted = result
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return result


def adapted_label(config) -> Optional[str]:
    info = getattr(config, "clue_run_adapted", None)
    return f"adapted on {info['sentences']:,} sentences" if isinstance(info, dict) and "sentences" in info else None
