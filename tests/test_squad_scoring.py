"""The scorers on hand-made cases, one per rule of the official SQuAD v1.1 / v2.0 / MRQA scripts."""

import pytest

from blockbert.eval.squad import best_threshold, f1_v1, f1_v2, normalize_answer, score_v1, score_v2


def test_normalisation_rules():
    assert normalize_answer("The  Cat, an apple!") == "cat apple"
    assert normalize_answer("theater") == "theater"  # articles only as whole words
    assert normalize_answer("A") == ""
    assert normalize_answer("Ünïcödé “quotes”") == "ünïcödé “quotes”"  # only ASCII punctuation is removed
    assert normalize_answer("rock-n-roll") == "rocknroll"


def test_f1_token_overlap_and_empty_cases():
    assert f1_v1("the big red dog", "red dog") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert f1_v1("red red", "red") == pytest.approx(2 * 0.5 * 1 / 1.5)  # multiset overlap
    assert f1_v1("", "") == 0.0  # v1.1: no common tokens scores 0 even when both are empty
    assert f1_v2("", "") == 1.0 and f1_v2("the", "") == 1.0  # v2.0: both empty after normalisation agree
    assert f1_v2("cat", "") == 0.0 and f1_v2("", "cat") == 0.0


def test_v1_max_over_gold_missing_counts_zero_extra_ignored():
    gold = {"q1": ["Denver Broncos", "The Broncos"], "q2": ["1990"], "q3": ["blue"]}
    preds = {"q1": "broncos", "q2": "in 1990", "extra": "ignored"}
    result = score_v1(gold, preds)
    assert result["exact_match"] == pytest.approx(100 / 3)  # q1 exact via "The Broncos"; q3 missing -> 0 of 3
    assert result["f1"] == pytest.approx(100 * (1 + 2 * 0.5 * 1 / 1.5) / 3)
    assert set(result) == {"exact_match", "f1"}


def test_v2_rules_no_answer_missing_and_breakdown():
    gold = {"h1": ["Paris"], "h2": ["a", "the tower"], "n1": [], "n2": []}
    preds = {"h1": "Paris", "h2": "tower", "n1": "", "n2": "something"}
    r = score_v2(gold, preds)
    assert r["exact"] == pytest.approx(75.0) and r["total"] == 4
    assert r["HasAns_exact"] == 100.0 and r["HasAns_total"] == 2
    assert r["NoAns_exact"] == 50.0 and r["NoAns_total"] == 2
    assert "best_f1" not in r
    # a missing prediction is left out of the overall numbers, as the official script does
    r = score_v2(gold, {"h1": "Paris", "n1": "", "n2": ""})
    assert r["total"] == 3 and r["exact"] == 100.0
    # gold answers normalising to "" are dropped: "a" alone means no answer
    assert score_v2({"q": ["a"]}, {"q": ""})["exact"] == 100.0


def test_v2_no_answer_probabilities_threshold_and_best_search():
    gold = {"h1": ["x"], "h2": ["y"], "n1": []}
    preds = {"h1": "x", "h2": "wrong", "n1": "z"}
    na = {"h1": 0.1, "h2": 0.6, "n1": 0.9}
    r = score_v2(gold, preds, na_probs=na, na_prob_thresh=0.5)
    # above 0.5: h2 -> no answer (wrong, has answer) = 0, n1 -> no answer = 1; h1 stays 1
    assert r["exact"] == pytest.approx(200 / 3)
    # official search: start at 1 (one no-answer question); h1 +1 -> 2 (thresh 0.1); h2 +0; n1 -1
    assert r["best_exact"] == pytest.approx(200 / 3) and r["best_exact_thresh"] == 0.1
    assert best_threshold(preds, {"h1": 1.0, "h2": 0.0, "n1": 0.0}, na, {"h1": True, "h2": True, "n1": False}) == (
        pytest.approx(200 / 3),
        0.1,
    )


def test_v2_missing_predictions_are_left_out_of_the_breakdown_too():
    """5 answerable and 2 unanswerable questions, 2 answerable ones unpredicted: the breakdown counted them as 0 of
    HasAns_total 5, so HasAns_total + NoAns_total (7) was not total (5) and the parts did not average to the whole."""
    gold = {f"h{i}": ["abc"] for i in range(5)} | {"n0": [], "n1": []}
    preds = {"h0": "abc", "h1": "abc", "h2": "def", "n0": "", "n1": ""}
    r = score_v2(gold, preds)
    assert r["total"] == 5 and r["exact"] == 80.0
    assert (r["HasAns_total"], r["NoAns_total"]) == (3, 2)
    assert r["HasAns_exact"] == pytest.approx(200 / 3) and r["NoAns_exact"] == 100.0
    for key in ("exact", "f1"):
        parts = r[f"HasAns_{key}"] * r["HasAns_total"] + r[f"NoAns_{key}"] * r["NoAns_total"]
        assert parts == pytest.approx(r[key] * r["total"])
    # a part with no predicted question is not reported, as a part without questions is not
    assert "NoAns_total" not in score_v2(gold, {"h0": "abc"})
    # the official threshold search is kept: the unpredicted no-answer question n1 is counted right, over 2 predicted
    r = score_v2({"h0": ["abc"], "n0": [], "n1": []}, {"h0": "abc", "n0": ""}, na_probs={"h0": 0.1, "n0": 0.9})
    assert (r["total"], r["HasAns_total"], r["NoAns_total"]) == (2, 1, 1)
    assert r["best_exact"] == 150.0 and r["exact"] == 100.0
