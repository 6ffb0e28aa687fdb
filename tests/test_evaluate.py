"""`blockbert evaluate`'s inputs: each bad one ends the command in one line (exit code 2), and a reader that closes
stdout ends it quietly."""

import gzip
import json
import os
import subprocess

import pytest
import torch
from typer.testing import CliRunner

import cli

runner = CliRunner()


def squad(path, qas, version="2.0", compress=False):
    """A SQuAD file of questions on the paragraph "abc def"."""
    paragraphs = [{"context": "abc def", "qas": qas}]
    text = json.dumps({"version": version, "data": [{"title": "t", "paragraphs": paragraphs}]})
    path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())
    return path


def answered(qid, text="abc", start=0, **more):
    return {"id": qid, "question": "?", "answers": [{"text": text, "answer_start": start}], **more}


def evaluate(*args):
    result = runner.invoke(cli.app, ["evaluate", *map(str, args)])
    return result.exit_code, result.output.strip().splitlines()


def test_string_is_impossible_is_refused_not_scored_as_no_answer(tmp_path):
    """ "is_impossible": "false" made the answerable questions unanswerable: exact 25.0 where the official scorer
    (which reads 'answers') says 100.0."""
    qas = [answered(f"h{i}", is_impossible="false") for i in range(3)]
    qas.append({"id": "n", "question": "?", "answers": [], "is_impossible": True})
    data = squad(tmp_path / "dev.json", qas)
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps({"h0": "abc", "h1": "abc", "h2": "abc", "n": ""}))
    code, lines = evaluate(data, predictions)
    assert code == 2 and lines == [
        f"blockbert evaluate: error: {data}: question 'h0': field 'is_impossible' should be a boolean (true or false), "
        "not a string 'false'"
    ]
    squad(data, [{**qa, "is_impossible": qa["id"] == "n"} for qa in qas])  # booleans: scored as the official script
    code, lines = evaluate(data, predictions)
    assert code == 0 and json.loads("\n".join(lines))["exact"] == 100.0


@pytest.mark.parametrize("name", ["dev.json.gz", "dev.json"])
def test_gzipped_squad_gold_is_scored(tmp_path, name):
    """A gzipped SQuAD file said "looks like SQuAD JSON (a dict with 'data') ...: give --format squad1", and with
    --format squad1 "is not UTF-8 text (byte 0x8b)"."""
    data = squad(tmp_path / name, [answered("a")], version="1.1", compress=True)
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps({"a": "abc"}))
    for fmt in ([], ["--format", "squad1"]):
        code, lines = evaluate(data, predictions, *fmt)
        assert code == 0 and json.loads("\n".join(lines)) == {"exact_match": 100.0, "f1": 100.0}


def test_predictions_with_a_byte_order_mark_are_read_and_empty_ones_said_empty(tmp_path):
    data = squad(tmp_path / "dev.json", [answered("a")], version="1.1")
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps({"a": "abc"}), encoding="utf-8-sig")
    assert evaluate(data, predictions)[0] == 0
    predictions.write_text("")
    assert evaluate(data, predictions) == (
        2,
        [f"blockbert evaluate: error: {predictions} is empty: expected a JSON object {{question id: answer text}}"],
    )


def test_a_duplicated_question_id_in_the_gold_file_is_refused(tmp_path):
    """The second question of an id replaced the first: 0.0 where the official script (which counts both) says 50.0."""
    data = squad(tmp_path / "dev.json", [answered("a"), answered("a", "def", 4)], version="1.1")
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps({"a": "abc"}))
    assert evaluate(data, predictions) == (
        2,
        [
            f"blockbert evaluate: error: {data}: question id 'a' is used twice (questions 1 and 2 of the file): each "
            "question of a scored file needs its own id (predictions and scores are keyed by id)"
        ],
    )


@pytest.mark.parametrize("inside", ["dev/predictions.json", "predictions.json", None])
def test_a_directory_as_predictions_is_said_to_be_one(tmp_path, inside):
    """It said "predictions file '...' does not exist"; a run directory holds the file to give."""
    data = squad(tmp_path / "dev.json", [answered("a")], version="1.1")
    run = tmp_path / "run"
    run.mkdir()
    if inside:
        (run / inside).parent.mkdir(exist_ok=True)
        (run / inside).write_text(json.dumps({"a": "abc"}))
    hint = f"give a file in it, such as {run / inside}" if inside else "give a file holding a JSON object"
    code, lines = evaluate(data, run)
    assert code == 2 and len(lines) == 1
    said = f"blockbert evaluate: error: predictions file '{run}' is a directory, not a file: {hint}"
    assert lines[0].startswith(said)
    assert evaluate(run, run / inside if inside else data)[1] == [
        f"blockbert evaluate: error: QA data file '{run}' is a directory, not a file"
    ]


@pytest.mark.parametrize("name", ["last.ckpt", "model"])
def test_a_checkpoint_as_predictions_is_said_to_be_one(tmp_path, name):
    """It said "is not UTF-8 text (byte 0x80): QA files are UTF-8 JSON or JSON lines"."""
    data = squad(tmp_path / "dev.json", [answered("a")], version="1.1")
    torch.save({"state_dict": {"w": torch.zeros(3)}}, tmp_path / name)
    assert evaluate(data, tmp_path / name) == (
        2,
        [
            f"blockbert evaluate: error: {tmp_path / name} is a model checkpoint, not a predictions file: evaluate "
            "scores a JSON object {question id: answer text}, such as a finetune run's dev/predictions.json"
        ],
    )


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_a_closed_stdout_ends_quietly_as_cat_does(tmp_path, unbuffered):
    """`blockbert evaluate ... | head -4` ended with "blockbert evaluate: error: [Errno 32] Broken pipe", exit code 1;
    now exit code 141 (128 + SIGPIPE, the shell's for `cat`) and nothing on stderr."""
    data = squad(tmp_path / "dev.json", [answered("a")])
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps({"a": "abc"}))
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    try:
        env = {**os.environ, "PYTHONUNBUFFERED": unbuffered}
        out = subprocess.run(
            ["blockbert", "evaluate", str(data), str(predictions)], stdout=write, stderr=subprocess.PIPE, env=env
        )
    finally:
        os.close(write)
    assert (out.returncode, out.stderr) == (141, b"")
