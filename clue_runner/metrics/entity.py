"""Entity-level micro scores on exact (type, first char, last char) matches (CLUENER)."""

from __future__ import annotations


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
