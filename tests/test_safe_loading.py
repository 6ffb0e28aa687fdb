"""Files are loaded safely: checkpoints with weights_only=True, and every unusable file is one line naming it."""

import gzip
import json
import os
import pickle
import shlex

import pytest
import torch
from omegaconf import OmegaConf
from typer.testing import CliRunner

import cli
from blockbert import BlockBertConfig
from blockbert.data.corpus import load_documents
from blockbert.data.qa import QADataError, read_qa_file
from blockbert.errors import ConfigError
from blockbert.formats.checkpoints import CheckpointError, checkpoint_step, load_checkpoint, load_run
from blockbert.formats.convert import read_checkpoint
from blockbert.model.modeling import BlockBertForMaskedLM

PRETRAIN = ["progress_bar=false", "logger=none", "trainer.max_steps=2", "data.generated_documents=40"]
FINETUNE = ["progress_bar=false", "logger=none", "trainer.max_steps=2", "task.generated_questions=40"]


@pytest.fixture(scope="session")
def run(blockbert):
    """The command line, whatever its exit code (the tests read its errors)."""
    return lambda cwd, *args: blockbert(cwd, *args, check=False)


def error_line(out, command: str) -> str:
    """The one `blockbert COMMAND: error:` line of a failed run."""
    assert out.returncode != 0, out.stdout[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith(f"blockbert {command}: error: ")]
    assert len(lines) == 1, out.stderr[-4000:]
    return lines[0]


class Payload:
    """Unpickling this runs a shell command that creates ``marker``: what a malicious checkpoint carries."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def evil_checkpoint(path, marker):
    torch.save(
        {"global_step": 1, "state_dict": {}, "hyper_parameters": {"model_config": {}}, "x": Payload(marker)}, path
    )
    return path


@pytest.fixture(scope="module")
def runs(run, tmp_path_factory):
    """A 2-step pre-training run and a 2-step fine-tuning run from it."""
    root = tmp_path_factory.mktemp("runs")
    out = run(root, "pretrain", *PRETRAIN, f"hydra.run.dir={root / 'pre'}")
    assert out.returncode == 0, out.stderr[-4000:]
    out = run(root, "finetune", *FINETUNE, f"init_from={root / 'pre'}", f"hydra.run.dir={root / 'ft'}")
    assert out.returncode == 0, out.stderr[-4000:]
    return root


def test_real_checkpoints_hold_only_tensors_and_plain_data(runs):
    for run in ("pre", "ft"):
        path = runs / run / "checkpoints" / "last.ckpt"
        assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
        state = load_checkpoint(path)
        assert state["global_step"] == 2 and isinstance(state["hyper_parameters"]["model_config"], dict)
        assert checkpoint_step(path) == 2


def test_load_run_gives_the_model_of_a_run(runs):
    ckpt, config, weights = load_run(str(runs / "pre"))
    assert ckpt == runs / "pre" / "checkpoints" / "last.ckpt"
    BlockBertForMaskedLM(BlockBertConfig(**config)).load_state_dict(weights)  # strict: every weight is there


@pytest.mark.slow
def test_every_command_refuses_a_checkpoint_carrying_code(run, tmp_path):
    marker = tmp_path / "code-ran"
    evil = evil_checkpoint(tmp_path / "evil.ckpt", marker)
    line = error_line(run(tmp_path, "export", str(evil), str(tmp_path / "out")), "export")
    assert str(evil) in line and "refused" in line and "system" in line and "weights_only=True" in line
    out = run(tmp_path, "finetune", *FINETUNE, f"init_from={evil}", f"hydra.run.dir={tmp_path / 'ft'}")
    line = error_line(out, "finetune")
    assert str(evil) in line and "refused" in line
    for command, args in (("pretrain", PRETRAIN), ("finetune", FINETUNE)):  # resume from a given file
        out = run(tmp_path, command, *args, f"ckpt_path={evil}", f"hydra.run.dir={tmp_path / command}")
        assert str(evil) in error_line(out, command)
    planted = tmp_path / "run" / "checkpoints" / "last.ckpt"  # resume in a run directory holding one
    planted.parent.mkdir(parents=True)
    evil_checkpoint(planted, marker)
    out = run(tmp_path, "pretrain", *PRETRAIN, f"hydra.run.dir={tmp_path / 'run'}")
    assert str(planted) in error_line(out, "pretrain") and planted.exists()
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_raw_pickle_carrying_code_is_refused(tmp_path, protocol):
    marker = tmp_path / "code-ran"
    path = tmp_path / "raw.ckpt"
    path.write_bytes(pickle.dumps({"global_step": 1, "x": Payload(marker)}, protocol=protocol))
    with pytest.raises(CheckpointError, match="raw.ckpt") as caught:
        checkpoint_step(path)
    assert "\n" not in str(caught.value) and not marker.exists()
    assert caught.value.unsafe == (protocol == 2)  # protocol 4 is refused before its global is reached


def damaged_files(real):
    data = real.read_bytes()
    return {
        "truncated": data[: len(data) // 2],
        "garbage": bytes(range(256)) * 4,
        "empty": b"",
        "text": b"not a checkpoint\n",
    }


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "text"])
def test_a_damaged_checkpoint_is_one_line_naming_it(runs, tmp_path, kind):
    path = tmp_path / f"{kind}.ckpt"
    path.write_bytes(damaged_files(runs / "pre" / "checkpoints" / "last.ckpt")[kind])
    for load in (load_checkpoint, checkpoint_step, load_run):
        with pytest.raises(CheckpointError, match=f"{kind}.ckpt is not a readable PyTorch file") as caught:
            load(str(path))
        assert "\n" not in str(caught.value) and len(str(caught.value).replace(str(path), "")) < 200
        assert not caught.value.unsafe


def test_a_file_that_is_not_a_blockbert_checkpoint_is_named(tmp_path):
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), tensor)
    with pytest.raises(CheckpointError, match="tensor.pt is not a Lightning checkpoint .it holds a Tensor"):
        load_checkpoint(tensor)
    weights = tmp_path / "weights.pt"
    torch.save({f"layer.{i}.weight": torch.zeros(1) for i in range(50)}, weights)
    with pytest.raises(CheckpointError, match="weights.pt is not a Lightning checkpoint") as caught:
        load_checkpoint(weights)
    assert len(str(caught.value).replace(str(weights), "")) < 200
    other = tmp_path / "other.ckpt"
    torch.save(
        {
            "global_step": 5,
            "state_dict": {"net.weight": torch.zeros(1)},
            "hyper_parameters": {f"option_{i}": i for i in range(100)},
        },
        other,
    )
    with pytest.raises(CheckpointError, match="other.ckpt is not a blockbert checkpoint .no hyper_parameters.model_co"):
        load_run(str(other))
    result = CliRunner().invoke(cli.app, ["export", str(other), str(tmp_path / "out")])
    assert result.exit_code == 2 and len(result.output.splitlines()[0].replace(str(other), "")) < 200


def hf_directory(tmp_path):
    directory = tmp_path / "bert"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return directory


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_corrupt_hugging_face_weights_are_one_line_naming_the_file(tmp_path, name):
    directory = hf_directory(tmp_path)
    (directory / name).write_bytes(b"\x00\x01 definitely not weights" * 10)
    with pytest.raises(ConfigError, match=f"{name} is not a readable") as caught:
        read_checkpoint(directory)
    assert "\n" not in str(caught.value)


def test_hugging_face_weights_carrying_code_are_refused(tmp_path):
    directory = hf_directory(tmp_path)
    marker = tmp_path / "code-ran"
    torch.save({"bert.x": Payload(marker)}, directory / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: refused"):
        read_checkpoint(directory)
    assert not marker.exists()


def test_a_binary_text_corpus_is_named(tmp_path):
    good, binary = tmp_path / "good.txt", tmp_path / "binary.txt"
    good.write_text("one document\n\nanother one\n")
    binary.write_bytes(b"text, then \xff\xfe\x00 binary")
    cfg = OmegaConf.create(
        {"source": "files", "files": [str(good), str(binary)], "documents": "paragraph", "text_field": "text"}
    )
    with pytest.raises(ConfigError, match=r"binary.txt is not UTF-8 text \(byte 0xff at offset 11\)"):
        load_documents(cfg, tmp_path / "cache")


def mrqa_gz(path, questions=2000):
    line = json.dumps(
        {
            "context": "a b",
            "qas": [
                {
                    "qid": "q",
                    "question": "?",
                    "answers": ["b"],
                    "detected_answers": [{"text": "b", "char_spans": [[2, 2]]}],
                }
            ],
        }
    )
    path.write_bytes(
        gzip.compress(
            (
                "\n".join(
                    [json.dumps({"header": {}})]
                    + [line.replace('"qid": "q"', f'"qid": "q{i}"') for i in range(questions)]
                )
                + "\n"
            ).encode()
        )
    )
    return path


def test_corrupt_and_truncated_mrqa_gz_files_are_named(tmp_path):
    data = mrqa_gz(tmp_path / "good.jsonl.gz").read_bytes()
    assert len(read_qa_file(tmp_path / "good.jsonl.gz").examples) == 2000
    (tmp_path / "plain.jsonl.gz").write_text("not gzip data\n")
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "binary.jsonl.gz").write_bytes(gzip.compress(b"\xff\xfe binary"))
    for name, says in (
        ("plain", "cannot be decompressed: it is corrupt or truncated .Not a gzipped file"),
        ("cut", "cannot be decompressed: it is corrupt or truncated .Compressed file ended"),
        ("binary", r"is not UTF-8 text \(byte 0xff at offset 0 of its decompressed bytes\)"),
    ):
        with pytest.raises(QADataError, match=f"{name}.jsonl.gz {says}"):
            read_qa_file(tmp_path / f"{name}.jsonl.gz")


def test_evaluate_with_a_dataset_as_predictions_says_so_briefly(tmp_path):
    gold = tmp_path / "gold.json"
    articles = [
        {
            "paragraphs": [
                {
                    "context": "word " * 100,
                    "qas": [{"id": f"q{i}", "question": "?", "answers": [{"text": "word", "answer_start": 0}]}],
                }
            ]
        }
        for i in range(300)
    ]
    gold.write_text(json.dumps({"version": "1.1", "data": articles}))
    result = CliRunner().invoke(cli.app, ["evaluate", str(gold), str(gold)])
    assert result.exit_code == 2
    line = result.output.splitlines()[0]
    assert "gold.json looks like a QA dataset" in line and "{question id: value}" in line
    assert len(line.replace(str(gold), "")) < 200  # not the 80 KB of the file's values
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({"q" * 10000: ["not", "a", "string"] * 10000}))
    result = CliRunner().invoke(cli.app, ["evaluate", str(gold), str(huge)])
    assert result.exit_code == 2 and "expected a string" in result.output
    assert max(len(line.replace(str(huge), "")) for line in result.output.splitlines()) < 200
