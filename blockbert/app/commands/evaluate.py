"""`blockbert evaluate`: official-equivalent scoring of a predictions file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from blockbert.data.qa import FORMATS, QADataError, load_json, read_qa_file, short
from blockbert.display import counted
from blockbert.errors import json_kind, one_line_errors
from blockbert.eval.squad import score_v1, score_v2

# what each file `blockbert evaluate` reads besides the data holds, and the file a finetune run writes it to
MAPPINGS = {
    "predictions": ("a JSON object {question id: answer text}", "predictions.json"),
    "no-answer probability": ("a JSON object {question id: no-answer probability}", "null_odds.json"),
}
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")


def load_mapping(path: str, name: str, kind: type | tuple) -> dict:
    """A JSON object {question id: value of ``kind``}; a bad file or value is one line naming it."""
    file = Path(path).expanduser()
    expected, written = MAPPINGS[name]
    if file.is_dir():  # said "does not exist"
        inside = next((f for f in (file / "dev" / written, file / written) if f.is_file()), None)
        hint = f": give a file in it, such as {inside}" if inside else f": give a file holding {expected}"
        raise IsADirectoryError(f"{name} file {path!r} is a directory, not a file{hint}")
    if not file.is_file():
        raise FileNotFoundError(f"{name} file {path!r} does not exist")
    try:
        data = load_json(file, expected)
    except QADataError:
        if is_checkpoint(file):  # said "is not UTF-8 text (byte 0x80): QA files are UTF-8 JSON or JSON lines"
            raise QADataError(
                f"{path} is a model checkpoint, not a {name} file: evaluate scores {expected}, such as a finetune "
                f"run's dev/{written}"
            ) from None
        raise
    if not isinstance(data, dict):
        raise QADataError(f"{path}: expected a JSON object {{question id: value}}, not {json_kind(data)}")
    if isinstance(data.get("data"), list):
        raise QADataError(
            f"{path} looks like a QA dataset (SQuAD JSON with 'data'), not a {name} file: expected "
            "a JSON object {question id: value}, such as a finetune run's dev/predictions.json"
        )
    bad = next((qid for qid, value in data.items() if not isinstance(value, kind) or isinstance(value, bool)), None)
    if bad is not None:
        raise QADataError(
            f"{path}: the value for {short(bad)} is {short(data[bad])}, expected "
            f"{'a string' if kind is str else 'a number'}"
        )
    return data


FORMAT_OPTION = {fmt: f"--format {fmt}" for fmt in FORMATS}  # a file read in the wrong format names the fix


def evaluate_files(
    data_file: str, predictions_file: str, na_prob_file: str | None = None, fmt: str | None = None
) -> dict:
    dataset = read_qa_file(data_file, fmt, FORMAT_OPTION)
    if na_prob_file and dataset.format != "squad2":  # silently unused, the user would read scores as thresholded
        raise QADataError(
            f"--na-prob {na_prob_file}: no-answer probabilities are read only for SQuAD 2.0, and {data_file} is "
            f"read as {dataset.format} (give --format squad2 if it is SQuAD 2.0)"
        )
    gold = dataset.gold  # {question id: answers}, built once
    predictions = load_mapping(predictions_file, "predictions", str)
    if not any(qid in gold for qid in predictions):  # nothing to score (2.0 divided by zero): likely another set's
        raise QADataError(
            f"{predictions_file}: no prediction id matches a question of {data_file} ({first_ids(predictions, gold)})"
        )
    unknown = [qid for qid in predictions if qid not in gold]
    if unknown:
        print(
            f"{predictions_file}: {counted(len(unknown), 'prediction id')} not in {data_file}, ignored as the official "
            f"scripts do (first: {short(unknown[0])})",
            file=sys.stderr,
        )
    missing = [qid for qid in gold if qid not in predictions]
    if missing:
        print(
            f"{predictions_file}: {counted(len(missing), 'question')} without a prediction (first: {short(missing[0])})"
            f"{missing_rule(dataset.format, bool(na_prob_file), any(not gold[qid] for qid in missing))}",
            file=sys.stderr,
        )
    if dataset.format != "squad2":
        return score_v1(gold, predictions)
    na_probs = load_mapping(na_prob_file, "no-answer probability", (int, float)) if na_prob_file else None
    if na_probs is not None:
        missing_probs = [qid for qid in predictions if qid in gold and qid not in na_probs]
        if missing_probs:
            raise QADataError(
                f"{na_prob_file}: no no-answer probability for {counted(len(missing_probs), 'predicted question')} "
                f"(first: {short(missing_probs[0])})"
            )
    return score_v2(gold, predictions, na_probs)


def missing_rule(fmt: str, na_prob: bool, no_answer_missing: bool) -> str:
    """How the scores treat missing predictions, so that totals that do not reconcile say why: 0 in 1.1/MRQA; left
    out in 2.0 (HasAns/NoAns too), except by the official threshold search, which counts the data's no-answer
    questions as right."""
    if fmt != "squad2":
        return "; each scores 0, as the official scripts do"
    if na_prob and no_answer_missing:
        return (
            "; best_exact and best_f1 count their no-answer questions as right, as the official script does; "
            "the other scores leave them out"
        )
    return (
        "; left out of every score, HasAns_total and NoAns_total included (the official script leaves them out of "
        "total and stops with a KeyError in HasAns/NoAns)"
    )


def first_ids(predictions: dict, gold: dict) -> str:
    """The first prediction id beside the first question id: predictions of another data set or SQuAD version show
    at a glance."""
    if not predictions:
        return "the file has no predictions"
    return f"first prediction id {short(next(iter(predictions)))}, first question id {short(next(iter(gold)))}"


def is_checkpoint(file: Path) -> bool:
    """A model file by its name or its start (a zip, torch.save's format, or a pickle)."""
    with open(file, "rb") as opened:
        start = opened.read(4)
    return file.suffix in CHECKPOINT_SUFFIXES or start == b"PK\x03\x04" or start[:1] == b"\x80"


@one_line_errors("evaluate")
def run_evaluate(data_file, predictions_file, na_prob_file, fmt) -> int:
    """Print the scores (flushed here: a reader that closed stdout, `| head -4`, ends the command quietly with exit
    code 141 in :func:`one_line_errors`)."""
    scores = evaluate_files(data_file, predictions_file, na_prob_file, fmt)
    print(json.dumps(scores, indent=2))
    sys.stdout.flush()
    return 0
