"""From start/end logits of every window to one answer per question (BERT's n-best search)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from blockbert.data.qa import QAExample
from blockbert.data.qa_windows import QAWindow


@dataclass
class Prediction:
    text: str  # the best non-empty span ("" when there is none)
    null_odds: float  # null score minus best span score: the larger, the likelier "no answer"
    nbest: list[dict]


def predict_answers(
    examples: list[QAExample],
    windows: list[QAWindow],
    start_logits,
    end_logits,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> dict[str, Prediction]:
    by_example: dict[int, list[int]] = {}
    for i, window in enumerate(windows):
        by_example.setdefault(window.example_index, []).append(i)
    predictions = {}
    for e, example in enumerate(examples):
        candidates, null_score = [], math.inf
        for i in by_example.get(e, []):
            start, end, window = np.asarray(start_logits[i]), np.asarray(end_logits[i]), windows[i]
            start, end = start[: len(window.input_ids)], end[: len(window.input_ids)]
            null_score = min(null_score, float(start[0] + end[0]))
            candidates += _window_candidates(example, window, start, end, n_best, max_answer_length)
        candidates.sort(key=lambda c: c["score"], reverse=True)
        seen, nbest = set(), []
        for c in candidates:
            if c["text"] not in seen:
                seen.add(c["text"])
                nbest.append(c)
            if len(nbest) == n_best:
                break
        best = nbest[0] if nbest else None
        odds = null_score - best["score"] if best else math.inf
        scores = [c["score"] for c in nbest] + ([null_score] if math.isfinite(null_score) else [])
        probs = _softmax(scores)
        entries = [
            dict(text=c["text"], probability=p, start_logit=c["start_logit"], end_logit=c["end_logit"])
            for c, p in zip(nbest, probs)
        ]
        if math.isfinite(null_score):
            entries.append(dict(text="", probability=probs[-1], start_logit=None, end_logit=None))
            entries.sort(key=lambda x: x["probability"], reverse=True)
        predictions[example.qid] = Prediction(best["text"] if best else "", odds, entries)
    return predictions


def _window_candidates(example, window, start, end, n_best, max_answer_length):
    out = []
    for s in np.argsort(-start)[:n_best]:
        for t in np.argsort(-end)[:n_best]:
            if window.offsets[s] is None or window.offsets[t] is None or not window.max_context[s]:
                continue
            if t < s or t - s + 1 > max_answer_length:
                continue
            text = example.context[window.offsets[s][0] : window.offsets[t][1]]
            out.append(
                dict(text=text, score=float(start[s] + end[t]), start_logit=float(start[s]), end_logit=float(end[t]))
            )
    return out


def _softmax(scores):
    if not scores:
        return []
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    return [x / sum(exps) for x in exps]


def final_texts(predictions: dict[str, Prediction], null_threshold: float | None) -> dict[str, str]:
    """{id: answer}; with a threshold (SQuAD 2.0), "" where the null odds exceed it."""
    if null_threshold is None:
        return {qid: p.text for qid, p in predictions.items()}
    return {qid: "" if p.null_odds > null_threshold else p.text for qid, p in predictions.items()}
