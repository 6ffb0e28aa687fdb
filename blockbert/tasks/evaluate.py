"""`blockbert evaluate`: official-equivalent scoring of a predictions file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from blockbert.data.qa import QADataError, read_qa_file
from blockbert.evaluation.squad import score_v1, score_v2


def load_predictions(path: str, name: str = "predictions") -> dict:
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{name} file {path!r} does not exist")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise QADataError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(data, dict):
        raise QADataError(f"{path}: expected a JSON object {{question id: value}}, not a {type(data).__name__}")
    return data


def evaluate_files(data_file: str, predictions_file: str, na_prob_file: str | None = None,
                   fmt: str | None = None) -> dict:
    gold = read_qa_file(data_file, fmt)
    predictions = load_predictions(predictions_file)
    unknown = [qid for qid in predictions if qid not in gold.gold]
    if unknown:
        print(f"{predictions_file}: {len(unknown)} prediction id(s) not in {data_file}, ignored as the official "
              f"scripts do (first: {unknown[0]!r})", file=sys.stderr)
    missing = [qid for qid in gold.gold if qid not in predictions]
    if missing:
        print(f"{predictions_file}: {len(missing)} question(s) without a prediction (first: {missing[0]!r})",
              file=sys.stderr)
    if gold.format != "squad2":
        return score_v1(gold.gold, predictions)
    na_probs = load_predictions(na_prob_file, "no-answer probability") if na_prob_file else None
    return score_v2(gold.gold, predictions, na_probs)


def run_evaluate(data_file, predictions_file, na_prob_file, fmt, debug: bool) -> int:
    try:
        result = evaluate_files(data_file, predictions_file, na_prob_file, fmt)
    except (OSError, ValueError) as err:
        if debug:
            raise
        print(f"blockbert evaluate: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0
