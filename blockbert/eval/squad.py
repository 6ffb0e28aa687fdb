"""EM/F1 exactly as the official scripts compute them (SQuAD v1.1, SQuAD v2.0, MRQA 2019).

Rules kept from the official scripts:
* normalisation: lower-case, drop ASCII punctuation (``string.punctuation``), drop the articles
  a/an/the as whole words, collapse whitespace -- in that order;
* v1.1 and MRQA: the best score over the gold answers; a missing prediction scores 0 and still
  counts in the total; predictions for unknown ids are ignored; F1 of an empty prediction is 0;
* v2.0: gold answers that normalise to "" are dropped and a question without answers has the
  single gold answer ""; F1 is 1 when both prediction and gold are empty, 0 when only one is;
  a missing prediction is left out of ``exact``/``f1``/``total`` (the official script skips it);
  with no-answer probabilities, ``best_*`` and the thresholds come from the official search.
  Where the official script would crash (a missing prediction inside HasAns/NoAns: KeyError), the
  breakdown here leaves it out too, so that ``HasAns_total + NoAns_total == total`` and each part
  averages over its predicted questions (a part with none predicted is not reported, as a part with
  no questions is not). The official search is kept as it is: it counts every no-answer question
  of the data as right before searching, predicted or not, and divides by the predicted ones, so
  missing no-answer predictions raise ``best_*`` (past 100 at worst; `blockbert evaluate` says so).
  With every question predicted all of this is the official script's output.
"""

from __future__ import annotations

import collections
import re
import string

ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(gold)


def f1_v1(prediction: str, gold: str) -> float:
    pred, truth = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((collections.Counter(pred) & collections.Counter(truth)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(truth)
    return 2 * precision * recall / (precision + recall)


def f1_v2(prediction: str, gold: str) -> float:
    pred = normalize_answer(prediction).split() if prediction else []
    truth = normalize_answer(gold).split() if gold else []
    if not pred or not truth:
        return float(pred == truth)
    return f1_v1(prediction, gold)


def score_v1(answers: dict[str, list[str]], predictions: dict[str, str]) -> dict:
    """SQuAD v1.1 (and MRQA): ``answers`` maps every question id to its gold answer texts."""
    em = f1 = 0.0
    for qid, golds in answers.items():
        if qid not in predictions:
            continue  # scores 0, counted in the total
        prediction = predictions[qid]
        em += max(float(exact_match(prediction, g)) for g in golds)
        f1 += max(f1_v1(prediction, g) for g in golds)
    total = len(answers)
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}


def score_v2(
    answers: dict[str, list[str]],
    predictions: dict[str, str],
    na_probs: dict[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict:
    """SQuAD v2.0: an empty ``answers[qid]`` list means the question has no answer."""
    has_answer = {qid: bool(golds) for qid, golds in answers.items()}
    exact_raw, f1_raw = {}, {}
    for qid, golds in answers.items():
        if qid not in predictions:
            continue
        golds = [g for g in golds if normalize_answer(g)] or [""]
        exact_raw[qid] = max(float(normalize_answer(g) == normalize_answer(predictions[qid])) for g in golds)
        f1_raw[qid] = max(f1_v2(predictions[qid], g) for g in golds)
    probs = na_probs if na_probs is not None else {qid: 0.0 for qid in predictions}
    exact = _apply_threshold(exact_raw, probs, has_answer, na_prob_thresh)
    f1 = _apply_threshold(f1_raw, probs, has_answer, na_prob_thresh)
    result = _summary(exact, f1, list(exact))
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [qid for qid in exact if has_answer[qid] == wanted]  # the predicted ones: the parts sum to the total
        if qids:
            result.update({f"{prefix}_{k}": v for k, v in _summary(exact, f1, qids).items()})
    if na_probs is not None:
        result["best_exact"], result["best_exact_thresh"] = best_threshold(predictions, exact_raw, na_probs, has_answer)
        result["best_f1"], result["best_f1_thresh"] = best_threshold(predictions, f1_raw, na_probs, has_answer)
    return result


def _apply_threshold(scores, na_probs, has_answer, thresh):
    return {qid: float(not has_answer[qid]) if na_probs[qid] > thresh else s for qid, s in scores.items()}


def _summary(exact, f1, qids):
    """The official make_eval_dict: ``qids`` are predicted questions, in the data's order (the sums' order)."""
    total = len(qids)
    return {
        "exact": 100.0 * sum(exact[q] for q in qids) / total,
        "f1": 100.0 * sum(f1[q] for q in qids) / total,
        "total": total,
    }


def best_threshold(predictions, scores, na_probs, has_answer) -> tuple[float, float]:
    """The official search: answer "no answer" above the threshold that maximises the score. As in the official
    script, it starts from every no-answer question of the data counted right but divides by the predicted ones, so
    with predictions missing ``best_*`` can pass 100 (`blockbert evaluate` says when predictions are missing)."""
    current = best = sum(1 for has in has_answer.values() if not has)
    threshold = 0.0
    for qid in sorted(na_probs, key=lambda q: na_probs[q]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            current += scores[qid]
        elif predictions[qid]:
            current -= 1
        if current > best:
            best, threshold = current, na_probs[qid]
    return 100.0 * best / len(scores), threshold
