"""Paper rows that mean what they say: each experiment file names its table and row; Google BERT is fine-tuned
from the official checkpoint, never pre-trained; a paper row on the tiny generated data says so."""

import logging

import pytest
from hydra import compose, initialize_config_dir

from blockbert.app.run_config import check_paper_row
from blockbert.errors import ConfigError
from blockbert.paths import config_dir

TABLE_2 = {
    "roberta_1seq_512",
    "blockbert_n2_512",
    "blockbert_n3_512",
    "roberta_1seq_1024",
    "blockbert_n2_1024",
    "blockbert_n3_1024",
}  # the paper's Table 2 has six rows
ROWS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml") if p.stem not in ("tiny", "longrange"))


def compose_row(command, *overrides):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=command, overrides=list(overrides))


@pytest.mark.parametrize("name", ROWS)
def test_every_paper_row_names_its_table_and_row(name):
    text = (config_dir() / "experiment" / f"{name}.yaml").read_text()
    assert text.splitlines()[1].startswith("# Paper row: ")
    cfg = compose_row("pretrain", f"experiment={name}")
    assert ("2" in cfg.paper.tables.split(", ")) == (name in TABLE_2)
    assert cfg.paper.pretrained == (name != "google_bert_512")
    assert cfg.data.max_seq_length == (1024 if name.endswith("1024") else 512)


@pytest.fixture(scope="session")
def run(blockbert):
    """The command in the test's run directory, whatever its exit code."""
    return lambda tmp_path, *args: blockbert(tmp_path, *args, f"hydra.run.dir={tmp_path / 'run'}", check=False)


def test_google_bert_is_fine_tuned_from_the_official_checkpoint_and_never_pretrained(run, tmp_path):
    cfg = compose_row("finetune", "experiment=google_bert_512")
    assert cfg.model.init_from == "google-bert/bert-base-uncased" and cfg.model.next_sentence_prediction
    out = run(tmp_path, "pretrain", "experiment=google_bert_512")
    assert out.returncode == 2  # a configuration error
    assert out.stderr.strip().splitlines()[-1].startswith("blockbert pretrain: error: experiment=google_bert_512")
    assert "never pre-trains" in out.stderr and "experiment=roberta_2seq_512" in out.stderr
    out = run(tmp_path, "finetune", "experiment=google_bert_512")  # offline: how to give a local copy
    errors = [line for line in out.stderr.splitlines() if line.startswith("blockbert finetune: error:")]
    assert out.returncode != 0 and len(errors) == 1, out.stderr[-2000:]
    assert "hf download google-bert/bert-base-uncased --local-dir DIR" in errors[0]


@pytest.mark.parametrize(
    "command, toy, real",
    [
        ("pretrain", "data=tiny_corpus", "data=wiki_book"),
        ("finetune", "task=generated", "task=squad11"),
    ],
)
def test_a_paper_row_on_the_generated_data_warns_once(command, toy, real, caplog):
    with caplog.at_level(logging.WARNING):
        check_paper_row(compose_row(command, "experiment=blockbert_n2_512", toy), command)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "BlockBert n=2 (10:2), N=512" in warnings[0] and "not comparable" in warnings[0]
    caplog.clear()
    check_paper_row(compose_row(command, "experiment=blockbert_n2_512", real), command)
    check_paper_row(compose_row(command, "experiment=tiny", toy), command)  # not a paper row: no warning
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_google_bert_pretraining_is_refused_before_any_work():
    """Refused while composing, before its checkpoint (a hub model, offline here) is looked for."""
    from hydra.types import RunMode

    from blockbert.formats.compose import config_loader

    with pytest.raises(ConfigError, match="experiment=google_bert_512, the paper's .* never pre-trains"):
        config_loader(finished=True).load_configuration("pretrain", ["experiment=google_bert_512"], RunMode.RUN)
