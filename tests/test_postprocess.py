"""The vectorised n-best search gives exactly what BERT's loop over start and end candidates gives."""

import math
import random

import numpy as np
import pytest

from blockbert.data.qa import QAExample
from blockbert.data.qa_windows import QAWindow
from blockbert.eval.postprocess import predict_answers


def loop_reference(examples, windows, start_logits, end_logits, n_best, max_answer_length):
    """BERT's run_squad.py search, written as its loops: the oracle."""
    out = {}
    for e, example in enumerate(examples):
        candidates, null_score = [], math.inf
        for i, window in enumerate(windows):
            if window.example_index != e:
                continue
            start = np.asarray(start_logits[i])[: len(window.input_ids)]
            end = np.asarray(end_logits[i])[: len(window.input_ids)]
            null_score = min(null_score, float(start[0] + end[0]))
            for s in np.argsort(-start, kind="stable")[:n_best]:
                for t in np.argsort(-end, kind="stable")[:n_best]:
                    if window.offsets[s] is None or window.offsets[t] is None or not window.max_context[s]:
                        continue
                    if t < s or t - s + 1 > max_answer_length:
                        continue
                    text = example.context[window.offsets[s][0] : window.offsets[t][1]]
                    candidates.append((float(start[s] + end[t]), text, float(start[s]), float(end[t])))
        candidates.sort(key=lambda c: c[0], reverse=True)
        seen, nbest = set(), []
        for c in candidates:
            if c[1] not in seen:
                seen.add(c[1])
                nbest.append(c)
            if len(nbest) == n_best:
                break
        out[example.qid] = (nbest, null_score)
    return out


def random_task(rng: random.Random, questions: int):
    examples, windows, starts, ends = [], [], [], []
    for e in range(questions):
        words = [rng.choice(["alpha", "beta", "gamma", "delta", "eps"]) for _ in range(rng.randint(5, 60))]
        context = " ".join(words)
        spans, position = [], 0
        for word in words:
            spans.append((position, position + len(word)))
            position += len(word) + 1
        examples.append(QAExample(qid=f"q{e}", question="?", context=context, answers=[]))
        for _ in range(rng.randint(1, 3)):  # windows of this question
            question_tokens = rng.randint(2, 6)
            offsets = [None] * (question_tokens + 2) + spans + [None]
            length = len(offsets) + rng.randint(0, 5)  # padded windows: logits longer than the window
            max_context = [rng.random() < 0.8 for _ in offsets]
            windows.append(QAWindow(e, [0] * len(offsets), [0] * len(offsets), offsets, max_context))
            starts.append(np.asarray([rng.gauss(0, 2) for _ in range(length)], dtype=np.float32))
            ends.append(np.asarray([rng.gauss(0, 2) for _ in range(length)], dtype=np.float32))
    return examples, windows, starts, ends


@pytest.mark.parametrize("n_best, max_answer_length", [(20, 30), (5, 3), (1, 1)])
def test_vectorised_search_equals_the_loops(n_best, max_answer_length):
    examples, windows, starts, ends = random_task(random.Random(n_best), 150)
    got = predict_answers(examples, windows, starts, ends, n_best, max_answer_length)
    want = loop_reference(examples, windows, starts, ends, n_best, max_answer_length)
    for qid, (nbest, null_score) in want.items():
        prediction = got[qid]
        texts = [c["text"] for c in prediction.nbest if c["start_logit"] is not None]
        assert texts == [c[1] for c in nbest]
        assert [c["start_logit"] for c in prediction.nbest if c["start_logit"] is not None] == [c[2] for c in nbest]
        assert prediction.text == (nbest[0][1] if nbest else "")
        assert prediction.null_odds == (null_score - nbest[0][0] if nbest else math.inf)
