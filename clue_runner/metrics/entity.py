"""Entity-level scores (CLUENER): micro P/R/F1 on exact (type, first char, last char) matches, as the
CLUENER baseline scorer; and the leaderboard's `score.py` macro F1 over entity surface texts."""

from __future__ import annotations


class EntitySpan(tuple):
    """(type, first char, last char) that also carries its surface text; it compares and hashes as
    the plain tuple, so exact-span metrics are unchanged."""

    def __new__(cls, kind, start: int, end: int, text: str):
        span = super().__new__(cls, (kind, start, end))
        span.text = text
        return span

    def __reduce__(self):
        return EntitySpan, (*self, self.text)


def entity_prf(gold: list[set[tuple]], pred: list[set[tuple]]) -> dict[str, float]:
    """Micro precision, recall and F1 of exact tuple matches (e.g. (type, start, end)) summed over examples.

    A ratio with a zero denominator is 0.0, so empty gold and predictions give all zeros.
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold examples but {len(pred)} predicted")
    hits = sum(len(set(g) & set(p)) for g, p in zip(gold, pred))
    n_gold = sum(len(set(g)) for g in gold)
    n_pred = sum(len(set(p)) for p in pred)
    precision = hits / n_pred if n_pred else 0.0
    recall = hits / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _entity(key: str):
    def metric(gold: list, pred: list, num_labels: int) -> float:
        return entity_prf([set(g) for g in gold], [set(p) for p in pred])[key]

    metric.__name__ = f"entity_{key}"
    return metric


entity_precision = _entity("precision")
entity_recall = _entity("recall")
entity_f1 = _entity("f1")


def surface_macro_f1(gold: list, pred: list, num_labels: int = 0) -> float:
    """The CLUENER2020 leaderboard `score.py`: per entity type, TP/FP/FN over the *surface texts* of each
    example (positions ignored, a text counted once per example), F1 per type, then the mean over types.
    Where score.py divides by zero (a type without predictions), the type scores 0. Types: those in the
    gold or the predictions (on the full dev set, all ten)."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold examples but {len(pred)} predicted")

    def surfaces(spans, kind):
        texts = set()
        for span in spans or ():
            if not hasattr(span, "text"):
                raise ValueError("surface_macro_f1 needs entity spans with their text (EntitySpan)")
            if span[0] == kind:
                texts.add(span.text)
        return texts

    kinds = sorted({s[0] for spans in (*gold, *pred) for s in spans or ()}, key=str)
    if not kinds:
        return 0.0
    total = 0.0
    for kind in kinds:
        tp = fp = fn = 0
        for g, p in zip(gold, pred):
            g_texts, p_texts = surfaces(g, kind), surfaces(p, kind)
            tp += len(p_texts & g_texts)
            fp += len(p_texts - g_texts)
            fn += len(g_texts - p_texts)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        total += 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return total / len(kinds)
