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
    """BERT's n-best search over all windows of each question: the ``n_best`` best starts and ends of each window,
    every valid pair (inside the paragraph, the start where its window gives it most context, end >= start,
    at most ``max_answer_length`` tokens), best first, distinct texts. The pairs are scored with numpy; a text
    is cut from the paragraph only for the candidates that make the n-best list."""
    by_example: dict[int, list[int]] = {}
    for i, window in enumerate(windows):
        by_example.setdefault(window.example_index, []).append(i)
    predictions = {}
    for e, example in enumerate(examples):
        pairs, null_score = [], math.inf
        for i in by_example.get(e, []):
            window = windows[i]
            start = np.asarray(start_logits[i])[: len(window.input_ids)]
            end = np.asarray(end_logits[i])[: len(window.input_ids)]
            null_score = min(null_score, float(start[0] + end[0]))
            pairs.append(_window_pairs(window, start, end, n_best, max_answer_length))
        nbest = _nbest(example, windows, pairs, n_best)
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


def _window_pairs(window: QAWindow, start, end, n_best: int, max_answer_length: int):
    """(window, start tokens, end tokens, start logits, end logits) of the window's valid pairs, in the order of
    the n-best starts, then the n-best ends (``np.nonzero`` is row-major)."""
    starts = np.argsort(-start, kind="stable")[:n_best]
    ends = np.argsort(-end, kind="stable")[:n_best]
    in_paragraph = np.array([o is not None for o in window.offsets])
    usable_start = in_paragraph[starts] & np.asarray(window.max_context, dtype=bool)[starts]
    length = ends[None, :] - starts[:, None] + 1  # [n_best, n_best]
    valid = usable_start[:, None] & in_paragraph[ends][None, :] & (length >= 1) & (length <= max_answer_length)
    rows, cols = np.nonzero(valid)
    s, t = starts[rows], ends[cols]
    return window, s, t, start[s], end[t]


def _nbest(example: QAExample, windows, pairs: list, n_best: int) -> list[dict]:
    """The ``n_best`` best candidates with distinct texts, best first (ties keep the windows' order)."""
    if not pairs:
        return []
    scores = np.concatenate([ls + le for _, _, _, ls, le in pairs])
    owner = np.concatenate([np.full(len(s), k) for k, (_, s, _, _, _) in enumerate(pairs)])
    index = np.concatenate([np.arange(len(s)) for _, s, _, _, _ in pairs])
    seen, nbest = set(), []
    for j in np.argsort(-scores, kind="stable"):
        window, s, t, ls, le = pairs[owner[j]]
        k = index[j]
        text = example.context[window.offsets[s[k]][0] : window.offsets[t[k]][1]]
        if text not in seen:
            seen.add(text)
            nbest.append(dict(text=text, score=float(ls[k] + le[k]), start_logit=float(ls[k]), end_logit=float(le[k])))
            if len(nbest) == n_best:
                break
    return nbest


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
