"""QA files, windows and post-processing."""

import gzip
import json
import re

import numpy as np
import pytest

from blockbert.data.qa import QADataError, QAExample, read_qa_file, split_dev_test
from blockbert.data.qa_windows import build_windows, window_starts
from blockbert.errors import ConfigError
from blockbert.eval.postprocess import final_texts, predict_answers


def squad_file(tmp_path, paragraphs, version="1.1", name="squad.json"):
    path = tmp_path / name
    path.write_text(
        json.dumps({"version": version, "data": [{"title": "t", "paragraphs": paragraphs}]}), encoding="utf-8"
    )
    return path


def test_squad_reading_verifies_offsets_and_counts_mismatches(tmp_path):
    context = "Ünïcode  text   with runs. End"
    qas = [
        {"id": "a", "question": "q?", "answers": [{"text": "Ünïcode", "answer_start": 0}]},
        {"id": "b", "question": "q?", "answers": [{"text": "End", "answer_start": len(context) - 3}]},
        {"id": "c", "question": "q?", "answers": [{"text": "wrong", "answer_start": 3}]},
    ]
    data = read_qa_file(squad_file(tmp_path, [{"context": context, "qas": qas}]))
    assert data.format == "squad1" and data.mismatched_answers == 1
    assert [e.spans for e in data.examples] == [[(0, 7)], [(len(context) - 3, len(context))], []]
    assert data.gold["c"] == ["wrong"]  # still evaluated against its gold text


SQUAD_ONE_ANSWER = json.dumps(
    {
        "data": [
            {
                "paragraphs": [
                    {
                        "context": "abc",
                        "qas": [{"id": "x", "question": "q", "answers": [{"text": "abc", "answer_start": 0}]}],
                    }
                ]
            }
        ]
    }
)


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "malformed JSON at line 1"),
        (json.dumps({"data": [{"paragraphs": [{"qas": []}]}]}), "article 0, paragraph 0 has no field 'context'"),
        (
            json.dumps(
                {
                    "data": [
                        {
                            "paragraphs": [
                                {
                                    "context": "abc",
                                    "qas": [
                                        {"id": "x", "question": "q", "answers": [{"text": "abc", "answer_start": 2}]}
                                    ],
                                }
                            ]
                        }
                    ]
                }
            ),
            "answer offset 2 is outside its paragraph",
        ),
        (  # a string offset is the wrong type, not an offset outside the paragraph
            SQUAD_ONE_ANSWER.replace('"answer_start": 0', '"answer_start": "0"'),
            "question 'x': field 'answer_start' should be an integer, not a string '0'",
        ),
        (
            SQUAD_ONE_ANSWER.replace('"answer_start": 0', '"answer_start": true'),
            "field 'answer_start' should be an integer, not a boolean true",  # JSON's word, not Python's
        ),
        (
            json.dumps({"data": {"paragraphs": []}}),
            "the top-level object: field 'data' should be an array, not an object",
        ),
    ],
)
def test_malformed_squad_names_file_and_item(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(QADataError, match=message) as info:
        read_qa_file(path, "squad1")
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "content", "fmt"),
    [("empty.json", '{"data": []}', "squad1"), ("header.jsonl", '{"header": {"dataset": "x"}}\n', "mrqa")],
)
def test_a_file_without_questions_says_what_is_accepted(tmp_path, name, content, fmt):
    """Before: only "no questions found", where an empty file says what it should hold."""
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(QADataError, match=r"no questions found: expected SQuAD JSON .* or MRQA JSON lines"):
        read_qa_file(path, fmt)


@pytest.mark.parametrize("gz", [False, True])
def test_mrqa_reading_with_and_without_gzip_and_even_split(tmp_path, gz):
    lines = [json.dumps({"header": {"dataset": "TriviaQA", "split": "dev"}})]
    for i in range(6):
        context = f"Paragraph {i} mentions Paris."
        lines.append(
            json.dumps(
                {
                    "context": context,
                    "qas": [
                        {
                            "qid": f"q{i}",
                            "question": "Which city?",
                            "answers": ["Paris", "paris"],
                            "detected_answers": [
                                {"text": "Paris", "char_spans": [[len(context) - 6, len(context) - 2]]}
                            ],
                        }
                    ],
                }
            )
        )
    path = tmp_path / ("dev.jsonl.gz" if gz else "dev.jsonl")
    text = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)
    data = read_qa_file(path)
    assert data.format == "mrqa" and len(data.examples) == 6 and data.mismatched_answers == 0
    assert data.examples[0].spans == [(len("Paragraph 0 mentions "), len("Paragraph 0 mentions Paris"))]
    dev, test = split_dev_test(data)
    assert len(dev.examples) == len(test.examples) == 3
    assert split_dev_test(data)[0].gold == dev.gold  # deterministic


def test_windows_round_trip_every_answer(tiny_tokenizer):
    context = ("the model reads a long sequence of words and learns " * 12 + "answer here").strip()
    start = context.index("answer here")
    example = QAExample("x", "what does the model read", context, ["answer here"], [(start, start + 11)])
    windows = build_windows(example, 0, tiny_tokenizer, max_seq_length=40, doc_stride=16, max_query_length=8)
    assert len(windows) > 3 and all(len(w.input_ids) <= 40 for w in windows)
    hits = [w for w in windows if w.start_position]
    assert hits
    for w in hits:
        assert context[w.offsets[w.start_position][0] : w.offsets[w.end_position][1]] == "answer here"
    # each paragraph token has exactly one window where it has maximal context
    covered = {}
    for w in windows:
        for off, best in zip(w.offsets, w.max_context):
            if off is not None and best:
                covered[off] = covered.get(off, 0) + 1
    assert set(covered.values()) == {1}


def test_window_starts_follow_doc_stride():
    assert window_starts(10, 4, 3) == [(0, 4), (3, 4), (6, 4)]
    assert window_starts(3, 4, 3) == [(0, 3)]
    assert window_starts(0, 4, 3) == [(0, 0)]


def test_postprocessing_on_hand_made_logits(tiny_tokenizer):
    context = "the model reads words"
    example = QAExample("x", "what", context, ["reads words"], [(10, 21)])
    (w,) = build_windows(example, 0, tiny_tokenizer, 32, 16, 8)
    n = len(w.input_ids)
    start, end = np.zeros(n), np.zeros(n)
    reads = next(i for i, o in enumerate(w.offsets) if o and context[o[0] : o[1]] == "reads")
    words = max(i for i, o in enumerate(w.offsets) if o)
    start[reads], end[words] = 5.0, 4.0
    start[0], end[0] = 1.0, 1.0  # null score 2
    end[reads - 1] = 9.0  # an end before the start is never chosen
    (pred,) = predict_answers([example], [w], [start], [end], n_best=5, max_answer_length=30).values()
    assert pred.text == "reads words" and pred.null_odds == pytest.approx(2.0 - 9.0)
    assert pred.nbest[0]["text"] == "reads words" and abs(sum(e["probability"] for e in pred.nbest) - 1) < 1e-6
    assert final_texts({"x": pred}, -8.0) == {"x": ""} and final_texts({"x": pred}, 0.0) == {"x": "reads words"}
    short = predict_answers([example], [w], [start], [end], n_best=5, max_answer_length=1)
    assert short["x"].text != "reads words"  # longer than max_answer_length


def test_hub_rows_with_squad_and_mrqa_schemas(tmp_path, monkeypatch):
    import datasets

    from blockbert.data.qa import read_hub_split

    squad = datasets.Dataset.from_dict(
        {
            "id": ["a", "b"],
            "title": ["t", "t"],
            "context": ["Paris is big.", "Oslo is cold."],
            "question": ["Which city?", "Which?"],
            "answers": [{"text": ["Paris"], "answer_start": [0]}, {"text": [], "answer_start": []}],
        }
    )
    mrqa = datasets.Dataset.from_dict(
        {
            "subset": ["TriviaQA", "NewsQA"],
            "context": ["It is Paris.", "x"],
            "qid": ["m1", "m2"],
            "question": ["Which?", "?"],
            "answers": [["Paris", "paris"], ["x"]],
            "detected_answers": [
                {"text": ["Paris"], "char_spans": [{"start": [6], "end": [10]}]},
                {"text": ["x"], "char_spans": [{"start": [0], "end": [0]}]},
            ],
        }
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda name, *a, **k: squad if "squad" in name else mrqa)
    data = read_hub_split("rajpurkar/squad_v2", None, "validation", "squad2", tmp_path)
    assert [(e.qid, e.answers, e.spans) for e in data.examples] == [("a", ["Paris"], [(0, 5)]), ("b", [], [])]
    data = read_hub_split("mrqa-workshop/mrqa", None, "validation", "mrqa", tmp_path, subset="TriviaQA")
    assert [(e.qid, e.answers, e.spans) for e in data.examples] == [("m1", ["Paris", "paris"], [(6, 11)])]

    def unreachable(name, *args, **kwargs):  # datasets' error without a network (a failure with the --debug offer)
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    message = "task.hub_name='rajpurkar/squad': Couldn't reach 'rajpurkar/squad' on the Hub (LocalEntryNotFoundError); "
    with pytest.raises(ConfigError, match=re.escape(message + "give local files instead: task.train_file=...")):
        read_hub_split("rajpurkar/squad", None, "train", "squad1", tmp_path)


@pytest.mark.parametrize("answer_at", ["start", "end", "unicode"])
def test_alignment_with_unicode_whitespace_runs_and_edges(tiny_tokenizer, answer_at):
    context = "Zoë  reads\t\tthe   model’s words,  naïvely and learns the end"
    answer = {"start": "Zoë", "end": "the end", "unicode": "model’s words,  naïvely"}[answer_at]
    start = context.index(answer) if answer_at != "end" else len(context) - len(answer)
    example = QAExample("x", "who reads", context, [answer], [(start, start + len(answer))])
    windows = build_windows(example, 0, tiny_tokenizer, max_seq_length=16, doc_stride=4, max_query_length=4)
    hits = [w for w in windows if w.start_position]
    assert hits
    for w in hits:
        assert context[w.offsets[w.start_position][0] : w.offsets[w.end_position][1]] == answer


def test_official_v2_version_string_is_detected(tmp_path):
    path = squad_file(
        tmp_path,
        [{"context": "abc", "qas": [{"id": "n", "question": "?", "answers": [], "is_impossible": True}]}],
        version="v2.0",
    )
    data = read_qa_file(path)
    assert data.format == "squad2" and data.gold == {"n": []}


def test_doc_stride_must_be_positive(tiny_tokenizer):
    example = QAExample("x", "q", "the model reads", ["model"], [(4, 9)])
    with pytest.raises(Exception, match="data.doc_stride=0 must be a positive number"):
        build_windows(example, 0, tiny_tokenizer, 32, 0, 8)


def test_generated_paragraphs_spread_over_a_range_of_persons(tmp_path):
    """task.generated_people=[1, 14]: paragraphs about 1 to 14 persons (lengths spread, as real QA sets' are); the
    default [3, 3] keeps every paragraph at three persons, and every answer stays at its offset."""
    from blockbert.data.qa import write_generated_squad
    from blockbert.data.qa_datamodule import load_task
    from blockbert.formats.compose import compose

    def persons(path):
        data = read_qa_file(path)
        assert data.mismatched_answers == 0 and len(data.examples) >= 400
        return {len(set(e.context.split(".")) - {""}) // 3 for e in data.examples}  # three facts per person

    assert persons(write_generated_squad(tmp_path / "default.json", 400)) == {3}
    spread = persons(write_generated_squad(tmp_path / "spread.json", 400, people=(1, 14)))
    assert min(spread) == 1 and max(spread) == 14 and len(spread) > 10
    task = compose("finetune", ["task.generated_people=[14,1]", "task.generated_questions=40"], finished=True).task
    files = load_task(task, tmp_path / "cache")
    assert (tmp_path / "cache" / "qa" / "generated-v1.1-40-people1-14").is_dir()  # apart from the default's files
    assert {e.qid for e in files["train"].examples}


def mrqa_file(tmp_path, name="dev.jsonl", paragraphs=4):
    lines = [{"header": {"dataset": "TriviaQA", "split": "dev"}}]
    for i in range(paragraphs):
        context = f"Paragraph {i} mentions Paris."
        start = context.index("Paris")
        detected = [{"text": "Paris", "char_spans": [[start, start + 4]]}]
        qas = [{"qid": f"q{i}-{j}", "question": "Which city?", "answers": ["Paris", "the city"]} for j in range(2)]
        lines.append({"context": context, "qas": [qa | {"detected_answers": detected} for qa in qas]})
    text = "".join(json.dumps(line) + "\n" for line in lines)
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


SQUAD2_QAS = [
    {"id": "h", "question": "?", "answers": [{"text": "abc", "answer_start": 0}]},
    {"id": "n", "question": "?", "answers": [], "is_impossible": True},
]


@pytest.mark.parametrize("name", ["mrqa-train.jsonl", "mrqa-train.jsonl.gz"])
def test_mrqa_lines_under_a_squad_task_name_the_task(tmp_path, name):
    """MRQA JSON lines read as SQuAD said 'malformed JSON at line 2, column 1: Extra data' (gzipped: not UTF-8)."""
    path = mrqa_file(tmp_path, name)
    with pytest.raises(QADataError) as info:
        read_qa_file(path, "squad1")
    assert (
        str(info.value) == f"{path} looks like MRQA JSON lines (a JSON object per line), not SQuAD JSON: give task=mrqa"
    )


def test_one_mrqa_paragraph_under_a_squad_task_names_the_task(tmp_path):
    """One paragraph and no header is one valid JSON value: it said 'the file has no field 'data''."""
    path = tmp_path / "one.jsonl"
    path.write_text(mrqa_file(tmp_path).read_text().splitlines()[1])
    with pytest.raises(QADataError, match=r"one.jsonl looks like MRQA JSON lines .* give task=mrqa$"):
        read_qa_file(path, "squad2")


def test_squad2_file_under_squad11_names_the_task_not_the_format(tmp_path):
    path = squad_file(tmp_path, [{"context": "abc", "qas": SQUAD2_QAS}], version="2.0")
    with pytest.raises(QADataError) as info:
        read_qa_file(path, "squad1")
    assert str(info.value) == (
        f"{path}: question 'n' has no answer, as in SQuAD 2.0 (a SQuAD 1.1 question needs one): give task=squad20"
    )
    from blockbert.app.commands.evaluate import FORMAT_OPTION  # `blockbert evaluate` names its option instead

    with pytest.raises(QADataError, match="give --format squad2$"):
        read_qa_file(path, "squad1", FORMAT_OPTION)


@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("version,task", [("1.1", "task=squad11"), ("2.0", "task=squad20")])
def test_squad_json_under_the_mrqa_task_names_the_task(tmp_path, indent, version, task):
    """SQuAD JSON read as MRQA lines said 'line 1 has no field 'context'' (one line) or 'line 1: malformed JSON'."""
    qas = SQUAD2_QAS if version == "2.0" else SQUAD2_QAS[:1]
    path = tmp_path / "dev.json"
    path.write_text(
        json.dumps({"version": version, "data": [{"paragraphs": [{"context": "abc", "qas": qas}]}]}, indent=indent)
    )
    with pytest.raises(QADataError) as info:
        read_qa_file(path, "mrqa")
    assert str(info.value) == f"{path} looks like SQuAD JSON (a dict with 'data'), not MRQA JSON lines: give {task}"
    broken = mrqa_file(tmp_path, "broken.jsonl")  # a malformed MRQA file keeps its own error
    broken.write_text(broken.read_text().replace('"context"', '"contxt"', 1))
    with pytest.raises(QADataError, match="line 2 has no field 'context'"):
        read_qa_file(broken, "mrqa")


@pytest.mark.parametrize("fmt", ["squad1", "squad2", "mrqa"])
def test_written_split_reads_back_with_the_same_questions_and_answers(tmp_path, fmt):
    """A split dev set's halves are written in their format (evaluate reads them): same ids, gold texts, order."""
    from blockbert.data.qa import gold_file_name, write_qa_file

    if fmt == "mrqa":
        path = mrqa_file(tmp_path, paragraphs=6)
    else:
        qas = SQUAD2_QAS[: 2 if fmt == "squad2" else 1]
        paragraphs = [  # a copy of the questions each (one gets an answer below)
            {"context": f"abc {i} abc", "qas": [q | {"id": f"{q['id']}{i}"} for q in json.loads(json.dumps(qas))]}
            for i in range(6)
        ]
        paragraphs[0]["qas"][0]["answers"].append({"text": "not here", "answer_start": 1})  # mismatch: text kept
        path = squad_file(tmp_path, paragraphs, version="2.0" if fmt == "squad2" else "1.1")
    data = read_qa_file(path)
    assert data.format == fmt
    for half in split_dev_test(data):
        out = tmp_path / half.path.rsplit("#", 1)[1] / gold_file_name(fmt)
        out.parent.mkdir()
        write_qa_file(half, out)
        again = read_qa_file(out)
        assert again.format == fmt and list(again.gold.items()) == list(half.gold.items())
        assert [e.spans for e in again.examples] == [e.spans for e in half.examples]


def test_mrqa_lines_under_another_name_are_detected(tmp_path):
    """With no format given (`blockbert evaluate` without --format), MRQA lines in a .json file said 'malformed JSON
    at line 2, column 1: Extra data'."""
    path = tmp_path / "dev.json"
    path.write_text(mrqa_file(tmp_path).read_text())
    data = read_qa_file(path)
    assert data.format == "mrqa" and len(data.examples) == 8


@pytest.mark.parametrize("content,kind", [("[1, 2]", "an array"), ('"text"', "a string"), ("null", "null")])
@pytest.mark.parametrize("fmt", [None, "squad1", "squad2"])
def test_squad_file_that_is_not_an_object_is_one_line(tmp_path, content, kind, fmt):
    """[1, 2] said "AttributeError: 'list' object has no attribute 'get'" (exit 1) where the format was detected;
    null passed for MRQA lines."""
    path = tmp_path / "dev.json"
    path.write_text(content)
    with pytest.raises(QADataError) as info:
        read_qa_file(path, fmt)
    assert str(info.value) == (
        f"{path}: the file is {kind}, not SQuAD JSON (an object with a 'data' list of articles) "
        "nor MRQA JSON lines (an object per line)"
    )


@pytest.mark.parametrize("line,kind", [("5", "an integer"), ('"header"', "a string"), ("[1]", "an array")])
def test_mrqa_line_that_is_not_an_object_is_one_line(tmp_path, line, kind):
    """5 said "TypeError: argument of type 'int' is not iterable"; "header" was skipped as a header."""
    path = mrqa_file(tmp_path)
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(QADataError) as info:
        read_qa_file(path)
    assert str(info.value) == (
        f"{path}: line 6 is {kind}; MRQA JSON lines are an object each (a header, or a paragraph with 'context' and "
        "'qas')"
    )


@pytest.mark.parametrize("bad", ["data", "predictions", "na_prob"])
@pytest.mark.parametrize("content,kind", [("[1, 2]", "an array"), ("3", "an integer")])
def test_evaluate_refuses_files_that_are_not_objects_in_one_line(tmp_path, capsys, bad, content, kind):
    """Every file `blockbert evaluate` reads ends it with one line naming the file and exit code 2 (bad input)."""
    from blockbert.app.commands.evaluate import run_evaluate

    files = {
        "data": squad_file(tmp_path, [{"context": "abc", "qas": SQUAD2_QAS}], version="2.0"),
        "predictions": tmp_path / "predictions.json",
        "na_prob": tmp_path / "null_odds.json",
    }
    files["predictions"].write_text(json.dumps({"h": "abc", "n": ""}))
    files["na_prob"].write_text(json.dumps({"h": 0.1, "n": 0.9}))
    files[bad].write_text(content)
    assert run_evaluate(str(files["data"]), str(files["predictions"]), str(files["na_prob"]), None) == 2
    err = capsys.readouterr().err.strip().splitlines()
    said = (
        f"the file is {kind}, not SQuAD JSON"
        if bad == "data"
        else f"expected a JSON object {{question id: value}}, not {kind}"
    )
    assert len(err) == 1 and err[0].startswith(f"blockbert evaluate: error: {files[bad]}: {said}")


def test_evaluate_says_what_happens_to_missing_predictions(tmp_path, capsys):
    """SQuAD 2.0 leaves missing predictions out of every score, the HasAns/NoAns totals included; 1.1 scores them 0."""
    from blockbert.app.commands.evaluate import evaluate_files

    qas = [*SQUAD2_QAS, {"id": "h2", "question": "?", "answers": [{"text": "abc", "answer_start": 0}]}]
    data = squad_file(tmp_path, [{"context": "abc", "qas": qas}], version="2.0")
    preds = tmp_path / "predictions.json"
    preds.write_text(json.dumps({"h": "abc", "n": ""}))
    result = evaluate_files(str(data), str(preds))
    assert (result["total"], result["HasAns_total"], result["NoAns_total"]) == (2, 1, 1)
    assert capsys.readouterr().err == (
        f"{preds}: 1 question without a prediction (first: 'h2'); left out of every score, HasAns_total and "
        "NoAns_total included (the official script leaves them out of total and stops with a KeyError in "
        "HasAns/NoAns)\n"
    )


ANSWERED = {"id": "h", "question": "?", "answers": [{"text": "abc", "answer_start": 0}]}
UNANSWERED = {"id": "n", "question": "?", "answers": []}


@pytest.mark.parametrize(
    "qa,said",
    [
        (
            ANSWERED | {"is_impossible": "false"},
            "question 'h': field 'is_impossible' should be a boolean (true or false), not a string 'false'",
        ),
        (UNANSWERED | {"is_impossible": 1}, "question 'n': field 'is_impossible' should be a boolean"),
        (
            UNANSWERED | {"is_impossible": None},
            "question 'n': field 'is_impossible' should be a boolean (true or false), not null",
        ),
        (
            ANSWERED | {"is_impossible": True},
            "question 'h': 'is_impossible' is true (no answer) but 'answers' is not empty: the file contradicts",
        ),
        (UNANSWERED | {"is_impossible": False}, "question 'n': 'is_impossible' is false but 'answers' is empty"),
    ],
)
def test_is_impossible_is_a_boolean_agreeing_with_the_answers(tmp_path, qa, said):
    """The string "false" made answerable questions unanswerable (a non-empty string is true), in training and in
    `blockbert evaluate`; the official v2.0 scorer goes by 'answers' alone."""
    path = squad_file(tmp_path, [{"context": "abc", "qas": [qa]}], version="2.0")
    with pytest.raises(QADataError) as info:
        read_qa_file(path)
    assert str(info.value).startswith(f"{path}: {said}") and "\n" not in str(info.value)


def test_is_impossible_agreeing_or_absent_reads_the_answers(tmp_path):
    qas = [ANSWERED | {"is_impossible": False}, UNANSWERED | {"is_impossible": True}, ANSWERED | {"id": "h2"}]
    data = read_qa_file(squad_file(tmp_path, [{"context": "abc", "qas": qas}], version="2.0"))
    assert data.gold == {"h": ["abc"], "n": [], "h2": ["abc"]} and data.examples[0].spans == [(0, 3)]


def squad_text(version="1.1", qas=(ANSWERED,)) -> str:
    return json.dumps({"version": version, "data": [{"title": "t", "paragraphs": [{"context": "abc", "qas": qas}]}]})


@pytest.mark.parametrize("name", ["train.json.gz", "train.json", "train.gz"])
@pytest.mark.parametrize("fmt", [None, "squad1"])
def test_gzipped_squad_json_is_read(tmp_path, name, fmt):
    """A gzipped SQuAD file said "not UTF-8 text (byte 0x8b)" under task=squad11, and under task=mrqa "looks like SQuAD
    JSON: give task=squad11" (a loop). Gzip is told by its magic bytes (train.json) or its name."""
    path = tmp_path / name
    path.write_bytes(gzip.compress(squad_text().encode()))
    if fmt is None and name == "train.gz":  # a .gz name but .json.gz is taken for MRQA lines: told what to give
        with pytest.raises(QADataError, match="looks like SQuAD JSON .* give task=squad11$"):
            read_qa_file(path, fmt)
        return
    data = read_qa_file(path, fmt)
    assert data.format == "squad1" and data.gold == {"h": ["abc"]} and data.examples[0].spans == [(0, 3)]


def test_gzipped_squad_files_fine_tune(tmp_path):
    """The files of `blockbert finetune task=squad11 task.train_file=train.json.gz ...` are read."""
    from blockbert.data.qa_datamodule import load_task
    from blockbert.formats.compose import compose

    for split in ("train", "dev"):
        (tmp_path / f"{split}.json.gz").write_bytes(gzip.compress(squad_text().encode()))
    overrides = ["task=squad11", f"task.train_file={tmp_path}/train.json.gz", f"task.dev_file={tmp_path}/dev.json.gz"]
    data = load_task(compose("finetune", overrides, finished=True).task, tmp_path / "cache")
    assert {split: d.gold for split, d in data.items()} == {"train": {"h": ["abc"]}, "dev": {"h": ["abc"]}}


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("fmt", [None, "squad1", "mrqa"])
def test_utf8_files_with_a_byte_order_mark_are_read(tmp_path, gz, fmt):
    """A BOM said "malformed JSON at line 1, column 1: Unexpected UTF-8 BOM (decode using utf-8-sig)"."""
    mrqa = fmt == "mrqa"
    text = (mrqa_file(tmp_path, "plain.jsonl").read_text() if mrqa else squad_text()).encode("utf-8-sig")
    path = tmp_path / ("dev.jsonl" if mrqa else "dev.json")
    path.write_bytes(gzip.compress(text) if gz else text)
    data = read_qa_file(path, fmt)
    assert len(data.examples) == (8 if mrqa else 1) and data.mismatched_answers == 0


@pytest.mark.parametrize("content,said", [("", "is empty"), (" \n", "is empty (only whitespace)")])
@pytest.mark.parametrize("fmt", [None, "squad1", "squad2"])
def test_an_empty_file_is_said_to_be_empty(tmp_path, content, said, fmt):
    """It said "malformed JSON at line 1, column 1: Expecting value"."""
    path = tmp_path / "dev.json"
    path.write_text(content)
    with pytest.raises(QADataError) as info:
        read_qa_file(path, fmt)
    assert str(info.value) == (
        f"{path} {said}: expected SQuAD JSON (an object with a 'data' list of articles) or MRQA JSON lines "
        "(an object per line)"
    )


@pytest.mark.parametrize("name", ["bad_latin1.json", "bad_latin1.json.gz", "bad_latin1.jsonl"])
def test_a_file_that_is_not_utf8_says_where_and_how_to_convert_it(tmp_path, name):
    """It said "is not UTF-8 text (byte 0xe9)", with no offset nor hint (the pre-training corpus's says both)."""
    text = (squad_text() if ".jsonl" not in name else mrqa_file(tmp_path).read_text()).replace("abc", "abé")
    text = text.replace("Paris", "Pärïs")
    at = len(text.split("é" if ".jsonl" not in name else "ä")[0].encode())
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode("latin1")) if name.endswith(".gz") else text.encode("latin1"))
    with pytest.raises(QADataError) as info:
        read_qa_file(path)
    decompressed = " of its decompressed bytes" if name.endswith(".gz") else ""
    assert str(info.value) == (
        f"{path} is not UTF-8 text (byte {0xE9 if '.jsonl' not in name else 0xE4:#04x} at offset {at}{decompressed}): "
        "QA files are UTF-8 JSON or JSON lines; convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    )


def test_a_not_utf8_byte_past_the_first_chunk_has_its_file_offset(tmp_path):
    """The reader decodes in chunks (the error's own position is within one): the offset is the file's."""
    text = squad_text().replace("abc", "abc" + "x" * 3_000_000 + "é")
    path = tmp_path / "big.json"
    path.write_bytes(text.encode("latin1"))
    with pytest.raises(QADataError, match=rf"byte 0xe9 at offset {text.index('é')}\)"):
        read_qa_file(path)


@pytest.mark.parametrize("fmt", ["squad2", "mrqa"])
def test_a_question_id_used_twice_is_refused_in_a_scored_file(tmp_path, fmt):
    """The second question of an id replaced the first in the gold answers and the predictions (the run logged 120
    questions, predictions.json held 119) while the official scripts count both: the scores differed."""
    if fmt == "mrqa":
        path = mrqa_file(tmp_path)
        path.write_text(path.read_text().replace('"q2-1"', '"q0-1"'))  # the 6th question takes the 2nd's id
        qid, positions = "q0-1", (2, 6)
    else:
        qas = [ANSWERED, UNANSWERED, ANSWERED | {"question": "again?"}]
        path, qid, positions = squad_file(tmp_path, [{"context": "abc", "qas": qas}], version="2.0"), "h", (1, 3)
    with pytest.raises(QADataError) as info:
        read_qa_file(path)
    assert str(info.value) == (
        f"{path}: question id {qid!r} is used twice (questions {positions[0]} and {positions[1]} of the file): each "
        "question of a scored file needs its own id (predictions and scores are keyed by id)"
    )
    training = read_qa_file(path, unique_ids=False)  # ours: a training file may repeat ids (nothing keys on them)
    assert len(training.examples) == (8 if fmt == "mrqa" else 3)


def test_task_files_show_an_unset_file_as_null():
    """It said "got train_file='data/train11.json', dev_file=None": Python's word, where the YAML says null."""
    from omegaconf import OmegaConf

    from blockbert.data.qa import task_files

    task = OmegaConf.create({"name": "squad11", "train_file": "data/train11.json", "dev_file": None})
    with pytest.raises(ConfigError) as info:
        task_files(task)
    assert str(info.value) == (
        "task squad11: give both task.train_file and task.dev_file (got train_file='data/train11.json', dev_file=null)"
    )
