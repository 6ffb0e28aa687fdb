"""QA evaluation of a fine-tuned model: window logits -> answers (n-best over all windows of a question) -> the
official EM/F1, with the prediction files. Plain functions, no Lightning: the fine-tuning run calls them
(:class:`blockbert.train.callbacks.DevEvaluation` at every validation, then each split once)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from blockbert.data.qa import QADataset, gold_file_name, write_qa_file
from blockbert.eval.postprocess import final_texts, predict_answers
from blockbert.eval.squad import score_v1, score_v2


@dataclass(frozen=True)
class AnswerSettings:
    n_best_size: int  # candidate spans kept per window
    max_answer_length: int  # in tokens


def evaluate_split(
    dataset: QADataset,
    windows: list,
    outputs: list,
    answers: AnswerSettings,
    threshold: float | None = None,
    out_dir: Path | None = None,
    split: str = "dev",
) -> tuple[dict | None, float | None]:
    """Post-process one split's logits (the model's outputs per batch: window ids, start and end logits), score
    them and optionally write the prediction files. SQuAD 2.0: on dev the null threshold is the official
    best_f1_thresh; on test the dev one is used. Returns (metrics, the threshold used); (None, threshold) if
    windows are missing."""
    gathered = gather_logits(outputs, len(windows))
    if gathered is None:
        return None, threshold
    starts, ends = gathered
    predictions = predict_answers(
        dataset.examples, windows, starts, ends, answers.n_best_size, answers.max_answer_length
    )
    odds = {qid: min(p.null_odds, 1e9) + 0.0 for qid, p in predictions.items()}  # + 0.0: -0.0 written as 0.0
    if dataset.format == "squad2":
        search = score_v2(dataset.gold, final_texts(predictions, None), na_probs=odds)
        if threshold is None:
            threshold = search["best_f1_thresh"]
        texts = final_texts(predictions, threshold)
        scores = score_v2(dataset.gold, texts)
        scores.update(
            {k: search[k] for k in ("best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh")},
            null_threshold=threshold,
        )
    else:
        texts = final_texts(predictions, None)
        scores = score_v1(dataset.gold, texts)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "predictions.json").write_text(json.dumps(texts, indent=2, ensure_ascii=False))
        nbest = {qid: p.nbest for qid, p in predictions.items()}
        (out_dir / "nbest_predictions.json").write_text(json.dumps(nbest, indent=2, ensure_ascii=False))
        if dataset.format == "squad2":
            (out_dir / "null_odds.json").write_text(json.dumps(odds, indent=2))
        if split == "test" or dataset.path.endswith("#dev"):  # halves of a split dev set: no user file holds them
            write_qa_file(dataset, out_dir / gold_file_name(dataset.format))  # read by `blockbert evaluate`
    return scores, threshold


def gather_logits(batches, count: int) -> tuple[list, list] | None:
    """Window-ordered start and end logits (1-D arrays, each the window's padded length) for ``count``
    windows; None when some window is missing."""
    starts, ends = [None] * count, [None] * count
    for idx, start, end, *_ in batches:  # (predictions carry their batch's loss too)
        for i, s, e in zip(idx.tolist(), start.float().cpu().numpy(), end.float().cpu().numpy()):
            starts[i], ends[i] = s, e
    if any(s is None for s in starts):
        return None
    return starts, ends
