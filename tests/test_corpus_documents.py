"""A corpus stored one sentence per row (the hub's BookCorpus) grouped into documents (data.rows_per_document)."""

import json
import re

import pytest
from hydra import compose, initialize_config_dir

from blockbert.data.corpus import load_documents
from blockbert.data.pretrain_datamodule import PretrainDataModule
from blockbert.errors import ConfigError
from blockbert.paths import config_dir

WORDS = "river city music game story book author history science people year world north south".split()


def sentence_rows(path, count=2000):
    """``count`` JSONL rows, one sentence each, numbered in order ("s17 ..."), 9-14 words long."""
    rows = []
    for i in range(count):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(8 + i % 6)]
        rows.append(json.dumps({"sentence": f"s{i} " + " ".join(words) + "."}))
    path.write_text("\n".join(rows) + "\n")
    return path


def data_module(tmp_path, nsp, *overrides):
    tmp_path.mkdir(exist_ok=True)
    corpus = sentence_rows(tmp_path / "sentences.jsonl")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            config_name="pretrain",
            overrides=[
                "data=text_files",
                f"data.files={corpus}",
                "data.text_field=sentence",
                "data.max_seq_length=256",
                "data.tokenizer_vocab_size=200",
                "data.validation_fraction=0.1",
                f"paths.cache_dir={tmp_path / 'cache'}",
                *overrides,
            ],
        )
    dm = PretrainDataModule(cfg.data, nsp, 4, 0, tmp_path / "cache")
    dm.setup()
    return dm


def markers(tokenizer, ids) -> list[int]:
    """The row numbers in a segment, in order."""
    return [int(m) for m in re.findall(r"\bs(\d+)\b", tokenizer.decode(ids))]


def test_rows_grouped_into_documents_fill_the_sequences(tmp_path):
    alone = data_module(tmp_path / "alone", False)
    grouped = data_module(tmp_path / "grouped", False, "data.rows_per_document=200")
    assert alone.fill < 0.3  # one ~15-token sentence per sequence of N=256
    assert grouped.fill >= 0.9
    filled = sum(len(ids) for ids in grouped.train_set["input_ids"]) / (len(grouped.train_set) * 256)
    assert grouped.fill == pytest.approx(filled)


def test_sentence_pairs_of_grouped_rows_follow_each_other(tmp_path):
    dm = data_module(tmp_path, True, "data.rows_per_document=200")
    follows = 0
    for ids, types, random_next in zip(
        dm.train_set["input_ids"], dm.train_set["token_type_ids"], dm.train_set["next_sentence_label"]
    ):
        a = [t for t, s in zip(ids, types) if s == 0]
        b = [t for t, s in zip(ids, types) if s == 1]
        if random_next:
            continue
        follows += 1
        rows_a, first_b = markers(dm.tokenizer, a), markers(dm.tokenizer, b)[0]
        # "is next": B starts with the row after A's last one. Fitting the pair into N may cut A's last row, down
        # to a prefix of its number ("s64" of "s648") or to nothing of it.
        wanted = first_b - 1
        assert (
            rows_a[-1] == wanted
            or rows_a[-1] == wanted - 1
            or (str(wanted).startswith(str(rows_a[-1])) and rows_a[-2] == wanted - 1)
        ), (rows_a[-3:], first_b)
    assert 0.3 < follows / len(dm.train_set) < 0.7


@pytest.mark.parametrize("value", ["0", "[1,2]", "x"])
def test_bad_rows_per_document_is_one_line(tmp_path, value):
    with pytest.raises(ConfigError, match=r"data.rows_per_document=.* is not accepted: give an integer >= 1"):
        data_module(tmp_path, False, f"data.rows_per_document={value}")


WIKITEXT = " = Title = \n \n Text line one .\n \n = = Section = = \n \n more text .\n"


def files_config(tmp_path, files, documents="paragraph", *overrides):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(
            config_name="pretrain",
            overrides=[
                "data=text_files",
                f"data.files={files}",
                f"data.documents={documents}",
                "data.max_seq_length=128",
                "data.tokenizer_vocab_size=200",
                f"paths.cache_dir={tmp_path / 'cache'}",
                *overrides,
            ],
        )


def test_whitespace_only_lines_separate_paragraphs(tmp_path):
    """WikiText's separator lines hold one space (" \\n"): each block between them is a document."""
    (tmp_path / "valid.txt").write_text(WIKITEXT)
    cfg = files_config(tmp_path, tmp_path / "valid.txt")
    docs = load_documents(cfg.data, tmp_path / "cache")["text"]
    assert [d.strip() for d in docs] == ["= Title =", "Text line one .", "= = Section = =", "more text ."]
    # tabs, several separator lines, CRLF files and plain blank lines, all in one file
    (tmp_path / "mixed.txt").write_bytes(b"a one\r\na two\r\n\t \r\n\r\n  \r\nb one\n\nc one\nc two\n \t\n")
    docs = load_documents(files_config(tmp_path, tmp_path / "mixed.txt").data, tmp_path / "cache")["text"]
    assert list(docs) == ["a one\na two", "b one", "c one\nc two"]


def test_a_wikitext_shaped_corpus_builds(tmp_path):
    (tmp_path / "corpus").mkdir()
    sections = [
        f" = = Section {i} = = \n \n {' '.join(WORDS[i % 7 :])} .\n {' '.join(WORDS[: 5 + i % 5])} .\n"
        for i in range(60)
    ]
    (tmp_path / "corpus" / "valid.txt").write_text(" = Title = \n \n" + " \n".join(sections))
    cfg = files_config(tmp_path, f"{tmp_path}/corpus/*.txt", "paragraph", "data.validation_fraction=0.1")
    dm = PretrainDataModule(cfg.data, False, 4, 0, tmp_path / "cache")
    dm.setup()
    manifest = json.loads(next((tmp_path / "cache" / "pretrain").glob("*/manifest.json")).read_text())
    assert manifest["documents"] == {"train": 109, "validation": 12}  # the title, 60 headings, 60 texts


def test_too_few_documents_suggest_one_per_line(tmp_path):
    (tmp_path / "one.txt").write_text("A first line .\nA second line .\nA third line .\n")
    cfg = files_config(tmp_path, tmp_path / "one.txt")
    with pytest.raises(
        ConfigError,
        match=r"the corpus '.*one\.txt' has 1 non-empty document: need at least 2.*"
        r"give data\.documents=line",
    ):
        PretrainDataModule(cfg.data, False, 1, 0, tmp_path / "cache").setup()
    cfg = files_config(tmp_path, tmp_path / "one.txt", "line", "data.validation_fraction=0.3")
    dm = PretrainDataModule(cfg.data, False, 1, 0, tmp_path / "cache")
    dm.setup()
    assert len(dm.train_set) == 2


@pytest.mark.parametrize("documents", ["paragraph", "line"])
def test_a_gzipped_text_corpus_reads_as_the_plain_one(tmp_path, documents):
    import gzip

    (tmp_path / "valid.txt").write_text(WIKITEXT)
    (tmp_path / "valid.txt.gz").write_bytes(gzip.compress(WIKITEXT.encode()))
    plain = load_documents(files_config(tmp_path, tmp_path / "valid.txt", documents).data, tmp_path / "cache")
    packed = load_documents(files_config(tmp_path, tmp_path / "valid.txt.gz", documents).data, tmp_path / "cache")
    assert list(packed["text"]) == list(plain["text"]) and len(plain) > 1


def test_a_corrupt_gzipped_corpus_is_named_as_corrupt(tmp_path):
    import gzip

    whole = gzip.compress(WIKITEXT.encode() * 50)
    (tmp_path / "cut.txt.gz").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "plain.gz").write_bytes(whole)
    with pytest.raises(ConfigError, match=r"cut\.txt\.gz cannot be decompressed: it is corrupt or truncated"):
        load_documents(files_config(tmp_path, tmp_path / "cut.txt.gz").data, tmp_path / "cache")
    with pytest.raises(ConfigError, match=r"plain\.gz' has a format blockbert does not read: .*also gzipped, \.gz"):
        load_documents(files_config(tmp_path, tmp_path / "plain.gz").data, tmp_path / "cache")


def test_a_json_document_reads_and_a_bad_gzipped_jsonl_is_named_with_its_line(tmp_path):
    import gzip

    rows = [{"text": f"document {i} of the corpus"} for i in range(4)]
    (tmp_path / "pretty.json").write_text(json.dumps(rows, indent=2))  # one JSON document over several lines
    docs = load_documents(files_config(tmp_path, tmp_path / "pretty.json").data, tmp_path / "cache")
    assert list(docs["text"]) == [row["text"] for row in rows]
    lines = [json.dumps(rows[0]), '{"text": "cut', json.dumps(rows[1])]
    (tmp_path / "bad.jsonl.gz").write_bytes(gzip.compress("\n".join(lines).encode()))
    with pytest.raises(
        ConfigError, match=r"bad\.jsonl\.gz is not JSON \(Unterminated string starting at: line 2 column 10\);"
    ):
        load_documents(files_config(tmp_path, tmp_path / "bad.jsonl.gz").data, tmp_path / "cache")


def test_files_of_two_formats_are_refused_naming_both(tmp_path):
    """Before: "'extra.jsonl' mixes or uses an unsupported format", naming neither format found."""
    (tmp_path / "a.txt").write_text(WIKITEXT)
    (tmp_path / "extra.jsonl").write_text('{"text": "a line"}\n')
    message = "data.files mixes formats: json (extra.jsonl), text (a.txt); give files of one format per run"
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_documents(files_config(tmp_path, f"{tmp_path}/*").data, tmp_path / "cache")


def test_an_unreachable_hub_dataset_is_one_line_naming_the_setting_and_the_local_alternative(tmp_path, monkeypatch):
    """Before: datasets' ConnectionError ended the run as a failure (exit 1, the --debug offer), with no word on what
    to give without a network."""
    import datasets

    def unreachable(name, *args, **kwargs):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        data = compose("pretrain", ["data=wikitext103"]).data
    message = "data.hub_name='wikitext': Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError); give local "
    with pytest.raises(ConfigError, match=re.escape(message + "files instead: data=text_files data.files=...")):
        load_documents(data, tmp_path)
