"""CMRC 2018 EM/F1: hand-worked examples, and the quirks of the official cmrc2018_evaluate.py."""

import numpy as np
import pytest

from clue_runner.metrics.cmrc import cmrc_scores, em_score, f1_score
from clue_runner.metrics import METRICS, compute_metrics


def test_exact_match_ignores_chinese_punctuation():
    # 《 and 》 are in the punctuation list: both sides normalize to "战国无双3".
    assert em_score(["《战国无双3》"], "战国无双3") == 1.0
    # Tokens on both sides: 战 国 无 双 3.
    assert f1_score(["《战国无双3》"], "战国无双3") == 1.0


def test_multiple_golds_take_the_best():
    # EM: "北京" != "北京市", but "北京市" == "北京市".
    assert em_score(["北京", "北京市"], "北京市") == 1.0
    # F1: vs 上海 no overlap → 0; vs 北京市 run 北京 = 2, P = 2/2, R = 2/3 → 2·(2/3)/(5/3) = 0.8.
    assert em_score(["上海", "北京市"], "北京") == 0.0
    assert f1_score(["上海", "北京市"], "北京") == pytest.approx(0.8)
    # Order of the golds does not matter.
    assert f1_score(["北京市", "上海"], "北京") == pytest.approx(0.8)


def test_partial_overlap_on_chinese_characters():
    # "-" is dropped without ending the non-Chinese stretch, so the gold is 光 荣 和 ωforce (4 tokens).
    # "光荣": run 光荣 = 2, P = 2/2, R = 2/4 → 2·0.5/1.5 = 2/3.
    assert f1_score(["光荣和ω-force"], "光荣") == pytest.approx(2 / 3)
    # "ω-force" is the one token ωforce: P = 1/1, R = 1/4 → 2·0.25/1.25 = 0.4.
    assert f1_score(["光荣和ω-force"], "ω-force") == pytest.approx(0.4)
    # "force" alone is not the token ωforce.
    assert f1_score(["光荣和ω-force"], "force") == 0.0
    assert em_score(["光荣和ω-force"], "光荣") == 0.0


def test_latin_and_digit_runs_are_word_tokens():
    # Gold 苹 果 iphone 12 pro 手 机 (7), prediction iphone 12 pro (3): P = 1, R = 3/7 → (6/7)/(10/7) = 0.6.
    assert f1_score(["苹果iPhone 12 Pro手机"], "iPhone 12 Pro") == pytest.approx(0.6)
    # iphone 12 vs iphone 13: 1 of 2 words each → 0.5 (per character it would be 7/8).
    assert f1_score(["iPhone 12"], "iPhone 13") == pytest.approx(0.5)
    # A decimal stays one word, as nltk keeps it: gold 1.5 亿 元, prediction 1.5 亿 → P = 1, R = 2/3 → 0.8.
    assert f1_score(["1.5亿元"], "1.5亿") == pytest.approx(0.8)


def test_empty_prediction_scores_zero():
    assert em_score(["北京"], "") == 0.0
    assert f1_score(["北京"], "") == 0.0
    assert f1_score(["北京"], "   ") == 0.0


def test_case_insensitive():
    assert em_score(["NBA总决赛"], "nba总决赛") == 1.0
    assert f1_score(["NBA总决赛"], "nba总决赛") == 1.0
    # Tokens nba 总 决 赛 vs nba: P = 1, R = 1/4 → 0.4.
    assert f1_score(["NBA总决赛"], "Nba") == pytest.approx(0.4)


def test_cmrc_scores_averages_per_question():
    golds = [["北京"], ["上海", "上海市"], ["光荣和ω-force"]]
    preds = ["北京", "上海市", "光荣"]
    # EM 1, 1, 0 → 2/3.  F1 1, 1, 2/3 (see above) → (8/3)/3 = 8/9.
    assert cmrc_scores(golds, preds) == pytest.approx({"em": 2 / 3, "f1": 8 / 9})


@pytest.mark.parametrize(
    "golds, pred, em, f1",
    [
        # "……" in the official list never matches one character, so "…" stays: EM "等等…" != "等等";
        # F1 tokens 等 等 … vs 等 等 → P = 1, R = 2/3 → 0.8.
        (["等等…"], "等等", 0.0, 0.8),
        # Whitespace is stripped before punctuation goes: "《 北京》" → " 北京" != "北京";
        # F1 drops the space (no token), so 北 京 vs 北 京 → 1.
        (["北京"], "《 北京》", 0.0, 1.0),
        (["《北京》"], " 北京 ", 1.0, 1.0),
        # ASCII "." is not in the list: EM fails; F1 tokens 北 京 . vs 北 京 → P = 2/3, R = 1 → 0.8.
        (["北京"], "北京.", 0.0, 0.8),
        # Full-width "，" is in the list, so these match exactly.
        (["北京，上海"], "北京上海", 1.0, 1.0),
        # The dropped "-" joins ω and force (ωforce), the space separates them (ω, force).
        (["ω-force"], "ω force", 0.0, 0.0),
        # Overlap is the longest *contiguous* run: 丙丁 = 2, not the subsequence 甲丙丁 = 3.
        # P = 2/3, R = 2/4 → (2/3)/(7/6) = 4/7 (a subsequence would give 6/7).
        (["甲乙丙丁"], "甲丙丁", 0.0, 4 / 7),
        # Only U+4E00..U+9FA5 count as Chinese: extension-A 㐀㐁 is one word, so 㐀 does not overlap it.
        (["㐀㐁"], "㐀", 0.0, 0.0),
    ],
)
def test_official_script_behaviour(golds, pred, em, f1):
    assert em_score(golds, pred) == em
    assert f1_score(golds, pred) == pytest.approx(f1)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        f1_score([], "北京")
    with pytest.raises(TypeError):
        em_score("北京", "北京")  # one string, not a list of answers
    with pytest.raises(ValueError):
        cmrc_scores([["北京"]], ["北京", "上海"])


def test_registered_metrics():
    # EM 1, 0 → 0.5; F1 1 and 上 vs 上海 (P = 1, R = 1/2 → 2/3) → 5/6.
    em, f1 = METRICS.get("cmrc_em"), METRICS.get("cmrc_f1")
    assert em([["北京", "北京市"], ["上海"]], ["北京", "上"], 0) == pytest.approx(0.5)
    assert f1([["北京", "北京市"], ["上海"]], ["北京", "上"], 0) == pytest.approx(5 / 6)
    # A 1-D array of bare strings is one answer per question, not one per character
    # (as characters, the golds would be ["北", "京"] and ["上", "海"] and EM would be 0).
    assert em(np.asarray(["北京", "上海"]), np.asarray(["北京", "上海"]), 0) == 1.0
    # Through compute_metrics, which turns equal-length answer lists into a 2-D string array.
    m = compute_metrics(["cmrc_em", "cmrc_f1"], [["北京"], ["上海"]], ["北京", "上"], 0)
    assert m == pytest.approx({"cmrc_em": 0.5, "cmrc_f1": 5 / 6})


# The official cmrc2018_evaluate.py F1, verbatim but for nltk.word_tokenize -> NLTKWordTokenizer().tokenize
# (word_tokenize needs the downloaded punkt data): the reference our F1 must equal.
def _official_mixed_segmentation(in_str, rm_punc=False):
    import re

    from nltk.tokenize import NLTKWordTokenizer

    word_tokenize = NLTKWordTokenizer().tokenize
    in_str = str(in_str).lower().strip()
    segs_out = []
    temp_str = ""
    sp_char = ['-', ':', '_', '*', '^', '/', '\\', '~', '`', '+', '=', '，', '。', '：', '？', '！', '“', '”', '；', '’',
               '《', '》', '……', '·', '、', '「', '」', '（', '）', '－', '～', '『', '』']
    for char in in_str:
        if rm_punc and char in sp_char:
            continue
        if re.search(r'[\u4e00-\u9fa5]', char) or char in sp_char:
            if temp_str != "":
                segs_out.extend(word_tokenize(temp_str))
                temp_str = ""
            segs_out.append(char)
        else:
            temp_str += char
    if temp_str != "":
        segs_out.extend(word_tokenize(temp_str))
    return segs_out


def _official_f1(answers, prediction):
    def find_lcs(s1, s2):
        m = [[0 for i in range(len(s2) + 1)] for j in range(len(s1) + 1)]
        mmax = 0
        for i in range(len(s1)):
            for j in range(len(s2)):
                if s1[i] == s2[j]:
                    m[i + 1][j + 1] = m[i][j] + 1
                    mmax = max(mmax, m[i + 1][j + 1])
        return mmax

    f1_scores = []
    for ans in answers:
        ans_segs = _official_mixed_segmentation(ans, rm_punc=True)
        prediction_segs = _official_mixed_segmentation(prediction, rm_punc=True)
        lcs_len = find_lcs(ans_segs, prediction_segs)
        if lcs_len == 0:
            f1_scores.append(0)
            continue
        precision = 1.0 * lcs_len / len(prediction_segs)
        recall = 1.0 * lcs_len / len(ans_segs)
        f1_scores.append((2 * precision * recall) / (precision + recall))
    return max(f1_scores)


@pytest.mark.parametrize("golds,pred", [
    (["John's book"], "john 's book"),
    (["don't stop"], "do n't"),
    (['"Hello" world'], "hello"),
    (["U.S. army"], "U.S. army."),
    (["1.5米"], "1.5"),
    (["«Le Monde» 报"], "Le Monde"),
    (["‘Tom’ and Jerry…"], "Tom and Jerry"),
    (["A–B road"], "A B road"),
    (["wait... what"], "wait what"),
])
def test_f1_equals_the_official_script_on_non_chinese_text(golds, pred):
    assert f1_score(golds, pred) == pytest.approx(_official_f1(golds, pred))


def test_f1_equals_the_official_script_on_perturbed_dev_predictions(data_dir):
    import random

    from clue_runner.data.splits import load_split
    from clue_runner.tasks import get_task

    rng = random.Random(0)
    examples = load_split(get_task("cmrc2018"), "dev", data_dir=data_dir).examples[:400]
    marks = ["'s", " n't", "...", ".", "‘", "«", "»", "–", '"', " ", "a", "1"]
    checked = 0
    for ex in examples:
        golds = ex.label
        text = golds[0]
        cut = rng.randrange(len(text) + 1)
        pred = text[:cut] + rng.choice(marks) + text[cut:]
        assert f1_score(golds, pred) == pytest.approx(_official_f1(golds, pred)), (golds, pred)
        checked += 1
    assert checked > 100
