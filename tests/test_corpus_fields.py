"""A corpus's data.text_field holding values that are not text (an integer column, a list in one row), null text,
and the glob suggested for a directory given as data.files: one-line errors (ConfigError, exit 2), no run left."""

import gzip
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from typer.testing import CliRunner

import cli
from blockbert.data import corpus
from blockbert.data.corpus import check_corpus, load_documents
from blockbert.errors import ConfigError


def data_cfg(files, text_field="text"):
    return OmegaConf.create(
        {
            "source": "files",
            "files": files,
            "text_field": text_field,
            "documents": "paragraph",
            "validation_fraction": 0.1,
            "num_proc": None,
            "rows_per_document": 1,
        }
    )


def jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def documents(count=20):
    return [{"id": i, "title": f"Title {i}", "text": f"Document {i} says hello."} for i in range(count)]


def test_an_integer_field_is_refused_by_the_check_before_the_run(tmp_path):
    """Before: nothing until the loader's filter: AttributeError: 'int' object has no attribute 'strip', exit 1."""
    path = jsonl(tmp_path / "docs.jsonl", documents())
    with pytest.raises(ConfigError) as refused:
        check_corpus(data_cfg(str(path), "id"))
    assert str(refused.value) == (
        f"{path}: data.text_field='id' holds an integer (line 1), not text: give a field of strings (text fields of "
        "that row: title, text)"
    )
    check_corpus(data_cfg(str(path), "text"))  # a field of text passes
    check_corpus(data_cfg(str(path), "missing"))  # absent from the first row: later rows may hold it (the loader says)


def test_the_check_reads_the_first_row_past_blank_lines_and_through_gzip(tmp_path):
    path = tmp_path / "docs.jsonl.gz"
    with gzip.open(path, "wt") as file:
        file.write("\n  \n" + "".join(json.dumps(row) + "\n" for row in documents()))
    with pytest.raises(ConfigError, match=r"docs.jsonl.gz: data.text_field='id' holds an integer \(line 3\)"):
        check_corpus(data_cfg(str(path), "id"))


def test_a_list_in_one_row_is_refused_by_the_loader_naming_its_line(tmp_path):
    """Before: AttributeError: 'list' object has no attribute 'strip'. The check reads the first row only."""
    rows = documents()
    rows[5]["text"] = ["a", "b"]
    path = jsonl(tmp_path / "docs.jsonl", rows)
    check_corpus(data_cfg(str(path)))
    with pytest.raises(ConfigError) as refused:
        load_documents(data_cfg(str(path)), tmp_path / "cache")
    assert str(refused.value) == (
        f"{path}: data.text_field='text' holds an array (line 6), not text: give a field of strings (text fields of "
        "that row: title)"
    )


@pytest.mark.parametrize(
    ("value", "kind"), [(7, "an integer"), (1.5, "a number"), (True, "a boolean"), ({"a": "b"}, "an object")]
)
def test_each_json_kind_is_named_with_its_line(tmp_path, value, kind):
    path = jsonl(tmp_path / "docs.jsonl", [{"text": "One document."}, {"text": "Another."}, {"text": value}])
    with pytest.raises(ConfigError) as refused:
        load_documents(data_cfg([str(path)]), tmp_path / "cache")
    assert (
        str(refused.value) == f"{path}: data.text_field='text' holds {kind} (line 3), not text: give a field of strings"
    )


def test_null_text_is_no_text_and_its_row_is_left_out(tmp_path):
    """Our choice: null (or a row without the field) is an empty document, left out as empty text is."""
    rows = [{"text": "First."}, {"text": None}, {"other": 1}, {"text": "Last."}]
    path = jsonl(tmp_path / "docs.jsonl", rows)
    check_corpus(data_cfg(str(path)))
    assert load_documents(data_cfg(str(path)), tmp_path / "cache")["text"][:] == ["First.", "Last."]
    jsonl(path, [{"text": None}, {"text": "Only one."}])  # null in the first row: no refusal up front either
    check_corpus(data_cfg(str(path)))


def test_one_json_document_names_the_row(tmp_path):
    path = tmp_path / "docs.json"
    path.write_text(json.dumps([{"text": "One."}, {"text": "Two."}, {"text": 3}], indent=2))
    check_corpus(data_cfg(str(path)))  # its first line is no row
    with pytest.raises(ConfigError, match=r"docs.json: data.text_field='text' holds an integer \(row 3\), not text"):
        load_documents(data_cfg(str(path)), tmp_path / "cache")


def test_a_parquet_column_of_integers_names_the_file_and_row(tmp_path):
    paths = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    pq.write_table(pa.table({"text": ["One.", "Two."], "n": pa.array([None, None], pa.int64())}), paths[0])
    pq.write_table(pa.table({"text": ["Three.", "Four."], "n": [None, 4]}), paths[1])
    with pytest.raises(ConfigError) as refused:
        load_documents(data_cfg([str(p) for p in paths], "n"), tmp_path / "cache")
    assert str(refused.value) == (
        f"{paths[1]}: data.text_field='n' holds an integer (row 2), not text: give a field of strings (text fields of "
        "that row: text)"
    )


def test_a_hub_column_that_is_not_text_names_the_dataset_and_row():
    ds = datasets.Dataset.from_dict({"label": [0, 1], "sentence": ["a", "b"]})
    with pytest.raises(ConfigError) as refused:
        corpus._text_column(ds, "label", "data.hub_name='glue'")
    assert str(refused.value) == (
        "data.hub_name='glue': data.text_field='label' holds an integer (row 1), not text: give a field of strings "
        "(text fields of that row: sentence)"
    )


def test_a_datasets_failure_on_mixed_kinds_names_the_row(tmp_path, monkeypatch):
    """An older datasets (before its Json feature) fails to build a column mixing strings and lists."""
    rows = documents(3)
    rows[2]["text"] = ["a"]
    path = jsonl(tmp_path / "docs.jsonl", rows)

    def fails(*args, **kwargs):
        cause = pa.ArrowInvalid("JSON parse error: Column(/text) changed from string to array in row 2")
        raise datasets.exceptions.DatasetGenerationError("An error occurred while generating the dataset") from cause

    monkeypatch.setattr(datasets, "load_dataset", fails)
    with pytest.raises(ConfigError, match=r"docs.jsonl: data.text_field='text' holds an array \(line 3\), not text"):
        load_documents(data_cfg(str(path)), tmp_path / "cache")


def test_a_directory_is_refused_with_the_glob_of_its_most_common_suffix(tmp_path):
    """Before: the suffix of its first readable file by name: 'corpus/*.json.gz' for a folder of .txt files."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    with gzip.open(folder / "a.json.gz", "wt") as file:
        file.write('{"text": "x"}\n')
    for name in ("b.txt", "c.txt", "d.txt", "notes.md"):
        (folder / name).write_text("Some text.\n")
    with pytest.raises(ConfigError, match=r"e\.g\. a glob '.*/corpus/\*\.txt'$"):
        check_corpus(data_cfg(str(folder)))
    (folder / "b.txt").unlink()
    (folder / "c.txt").rename(folder / "c.jsonl")
    with pytest.raises(ConfigError, match=r"e\.g\. a glob '.*/corpus/\*\.json\.gz'$"):  # as common: first by name
        check_corpus(data_cfg(str(folder)))


def test_the_cli_refuses_in_one_line_and_leaves_no_run(tmp_path, monkeypatch):
    """Before: "AttributeError: 'int' object has no attribute 'strip'", exit 1, a run directory left (.hydra,
    pretrain.log, run.lock). Refused by the check (an integer field) and by the loader (a list in one row)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BLOCKBERT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "corpus").mkdir()
    rows = documents(200)
    rows[5]["text"] = ["a", "b"]
    jsonl(tmp_path / "corpus" / "docs.jsonl", rows)
    for field, error in [
        ("id", "holds an integer (line 1), not text: give a field of strings (text fields of that row: title, text)"),
        ("text", "holds an array (line 6), not text: give a field of strings (text fields of that row: title)"),
    ]:
        args = ["pretrain", "data=text_files", "data.files=corpus/*.jsonl", f"data.text_field={field}", "logger=none"]
        result = CliRunner().invoke(cli.app, [*args, "trainer.max_steps=2"])
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if ": error: " in line]
        assert lines == [f"blockbert pretrain: error: corpus/docs.jsonl: data.text_field={field!r} {error}"]
        assert "Traceback" not in result.output
        assert not list(tmp_path.glob("runs/*/*"))
