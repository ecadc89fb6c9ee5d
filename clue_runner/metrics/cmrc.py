"""CMRC 2018 span-extraction scores (EM and F1), computed as the official `cmrc2018_evaluate.py` does.

Re-implemented from the official script (ymcui/cmrc2018, also used by CLUE) so that our numbers are
comparable with published ones (nltk's word tokenizer for non-Chinese text, as there). Scores are fractions in [0, 1]; the
official script reports them x100.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache

# The official `sp_char` list. It also lists "……", but compares it with single characters, so it never
# matches: a lone "…" is kept there, and here too. ASCII "." "," "!" "?" "(" ")" are not in it either.
PUNCTUATION = frozenset("-:_*^/\\~`+=，。：？！“”；’《》·、「」（）－～『』")

# The official test for "Chinese character": this exact range, nothing beyond (no extension blocks).
_CJK_CHAR = re.compile("([\u4e00-\u9fa5])")

# The official script runs nltk.word_tokenize on each stretch of non-Chinese text. Its word tokenizer
# (NLTKWordTokenizer, the Treebank rules: "john's" -> john 's, "don't" -> do n't, quotes -> `` '') needs
# no downloaded data; word_tokenize's sentence splitting (punkt) does, and only moves a sentence-final
# "." inside a stretch, so it is left out.
@lru_cache(maxsize=1)
def _word_tokenizer():
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def _normalize(text: str) -> str:
    """Lowercase, strip outer whitespace, drop PUNCTUATION: the official `remove_punctuation`.

    Stripping happens before punctuation removal, as there: "《 北京》" keeps its inner space.
    """
    return "".join(ch for ch in text.lower().strip() if ch not in PUNCTUATION)


def _tokens(text: str) -> list[str]:
    """The official `mixed_segmentation(text, rm_punc=True)`: every Chinese character is a token, other
    stretches are word-tokenized. Punctuation is dropped first without ending a stretch, so "ω-force" is
    the single token "ωforce"."""
    out: list[str] = []
    # With a capturing group, re.split puts the Chinese characters at the odd positions.
    for i, piece in enumerate(_CJK_CHAR.split(_normalize(text))):
        if i % 2:
            out.append(piece)
        else:
            out.extend(_word_tokenizer().tokenize(piece) if piece.strip() else ())
    return out


def _longest_common_run(a: list[str], b: list[str]) -> int:
    """Length of the longest common *contiguous* token run (the official `find_lcs`: a substring, not a
    subsequence)."""
    best = 0
    prev = [0] * (len(b) + 1)  # prev[j + 1]: run length ending at the previous a token and b[j]
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else 0)
        best = max(best, *cur)
        prev = cur
    return best


def _check_golds(golds: Sequence[str]) -> None:
    # A bare string would be read as one answer per character; no answers has no defined score
    # (the official F1 crashes on max([])).
    if isinstance(golds, str):
        raise TypeError("golds must be a list of answer strings, not one string")
    if len(golds) == 0:
        raise ValueError("a question needs at least one gold answer")


def em_score(golds: Sequence[str], prediction: str) -> float:
    """1.0 if the prediction equals any gold answer after `_normalize`, else 0.0."""
    _check_golds(golds)
    pred = _normalize(prediction)
    return float(any(_normalize(gold) == pred for gold in golds))


def f1_score(golds: Sequence[str], prediction: str) -> float:
    """Best F1 over the gold answers, with the longest common token run as the overlap."""
    _check_golds(golds)
    pred = _tokens(prediction)
    best = 0.0
    for gold in golds:
        gold_tokens = _tokens(gold)
        common = _longest_common_run(gold_tokens, pred)
        if common:  # also guards the divisions: common > 0 implies both token lists are non-empty
            precision, recall = common / len(pred), common / len(gold_tokens)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def _mean(
    score: Callable[[Sequence[str], str], float], golds: Sequence[Sequence[str]], predictions: Sequence[str]
) -> float:
    """Per-question mean, each question weighing the same (the official averaging, without the x100)."""
    if len(golds) != len(predictions):
        raise ValueError(f"{len(golds)} questions but {len(predictions)} predictions")
    if len(golds) == 0:
        raise ValueError("no questions to score")
    return sum(score(g, p) for g, p in zip(golds, predictions)) / len(golds)


def cmrc_scores(golds: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
    """{"em": mean EM, "f1": mean F1} over questions; golds[i] holds question i's answer strings."""
    return {"em": _mean(em_score, golds, predictions), "f1": _mean(f1_score, golds, predictions)}


def _answer_lists(gold) -> list[list[str]]:
    # compute_metrics hands over np.asarray(gold): a 2-D string array when every question has the same
    # number of answers, or a 1-D one of bare strings (one answer each), which must not become characters.
    return [[answers] if isinstance(answers, str) else list(answers) for answers in gold]


def cmrc_em(gold, pred, num_labels: int | None = None) -> float:
    """Mean CMRC 2018 exact match. gold: per question, its answer strings. num_labels: unused."""
    return _mean(em_score, _answer_lists(gold), list(pred))


def cmrc_f1(gold, pred, num_labels: int | None = None) -> float:
    """Mean CMRC 2018 F1. gold: per question, its answer strings. num_labels: unused."""
    return _mean(f1_score, _answer_lists(gold), list(pred))
