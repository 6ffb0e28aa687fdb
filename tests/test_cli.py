"""The CLI: help and error paths in-process (Typer's runner), Hydra hand-over in real subprocesses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cli

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
COMMANDS = ["pretrain", "finetune", "sweep", "plan", "profile", "benchmark", "evaluate", "report", "export"]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Hydra's run directories land here
    monkeypatch.setenv("BLOCKBERT_CACHE", str(tmp_path / "cache"))


def error_line(output):
    lines = [line for line in output.splitlines() if ": error: " in line]
    assert len(lines) == 1, output
    return lines[0]


def env(tmp_path):
    return dict(os.environ, WANDB_MODE="disabled", BLOCKBERT_CACHE=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")


def test_help_lists_every_command():
    result = runner.invoke(cli.app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_has_an_example(command):
    result = runner.invoke(cli.app, [command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output and f"blockbert {command}" in result.output


def test_sweep_help_lists_every_sweep_it_ships():
    from blockbert.experiments.sweep_plan import available

    result = runner.invoke(cli.app, ["sweep", "--help"])
    assert result.exit_code == 0 and {"longrange_n2", "heads_n3"} <= set(available())
    assert " | ".join(available()) in " ".join(result.output.split())  # was a list in cli.py, two sweeps behind


def test_unknown_group_option_is_one_line_naming_the_options():
    result = runner.invoke(cli.app, ["pretrain", "model=bert_large"])
    assert result.exit_code == 2
    first = error_line(result.output)
    assert "model/bert_large" in first and "blockbert_n2" in first and "tiny" in first
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pretrain", "--max-steps=3"], "--max-steps is not an option of blockbert pretrain; settings are key=value"),
        (["benchmark", "--repeats", "3"], "--repeats is not an option of blockbert benchmark; settings"),
        (["plan", "--calibrated"], "--calibrated is not an option of blockbert plan (did you mean --calibrate?)"),
        (["sweep", "heads_n2", "--dryrun"], "--dryrun is not an option of blockbert sweep (did you mean --dry-run?)"),
        (["finetune", "--debugg"], "--debugg is not an option of blockbert finetune (did you mean --debug?)"),
        (["benchmark", "--cfg"], "argument --cfg/-c: expected one argument; the options are listed by `blockbert"),
        (["benchmark", "--repeat"], "--repeat is not an option of blockbert benchmark; settings are key=value "
         "overrides (mode=attention)"),  # before: trainer.max_steps=10, which benchmark refuses
        # before: "(did you mean --run?)", Hydra's flag that runs the job
        (["pretrain", "--dry-run"], "--dry-run is not an option of blockbert pretrain, which has no dry run: "
         "`blockbert pretrain --cfg job` prints the config a run would run, `blockbert plan` its memory and time"),
        (["finetune", "--dryrun"], "--dryrun is not an option of blockbert finetune, which has no dry run: "
         "`blockbert finetune --cfg job` prints the config a run would run, `blockbert plan --command finetune`"),
        (["profile", "--dry-run"], "--dry-run is not an option of blockbert profile, which has no dry run: "
         "`blockbert profile --cfg job` prints the config a run would run; `blockbert sweep NAME --dry-run` lists"),
        (["pretrain", "--ru"], "--ru is not an option of blockbert pretrain; settings"),
        (["plan", "--dry-run"], "--dry-run is not an option of blockbert plan, which has no dry run (it runs nothing "
         "but its fit, seconds): `blockbert pretrain ... --cfg job`"),  # plan takes no --cfg
    ],
)  # fmt: skip
def test_an_option_the_command_lacks_is_one_line(args, message):
    """Before: Hydra's usage text, or its override parser's exception for plan and sweep."""
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    assert error_line(result.output).startswith(f"blockbert {args[0]}: error: {message}")
    assert "usage:" not in result.output and not (Path.cwd() / "runs").exists()


@pytest.mark.parametrize(
    ("word", "start"),
    [
        ("model.heads==3:1", "'model.heads==3:1' is not an override (extraneous input '='): give key=value"),
        ("model.heads", "'model.heads' is not an override (missing EQUAL at '<EOF>'): give key=value"),
        ("model.heads=[3:1", "'model.heads=[3:1' is not an override (no viable alternative at input '[3:1'): give"),
        ("data.files='my corpus.txt", '"data.files=\'my corpus.txt" is not an override (unreadable from "\'my corpus'),
    ],
)
def test_a_malformed_override_says_what_an_override_is(word, start):
    """Before: Hydra's parser's words (``OverrideParseException: ... expecting {<EOF>, ':', BRACKET_OPEN, ...}``)."""
    result = runner.invoke(cli.app, ["pretrain", word, "--cfg", "job"])
    assert result.exit_code == 2
    line = error_line(result.output)
    assert line.startswith(f"blockbert pretrain: error: {start}") and "group=option (model=blockbert_n3)" in line
    assert "BRACKET_OPEN" not in line and "hydra.cc" not in line and "Lexer" not in line


def test_hydra_flags_still_reach_hydra():
    result = runner.invoke(cli.app, ["pretrain", "-c", "job", "--package", "trainer", "trainer.max_steps=7"])
    assert result.exit_code == 0, result.output
    assert "max_steps: 7" in result.output


def test_bad_head_config_is_one_line():
    result = runner.invoke(cli.app, ["pretrain", "model=blockbert_n2", "model.heads=7:2"])
    assert result.exit_code == 2
    first = error_line(result.output)
    assert "heads='7:2' assigns 9 heads but the model has num_heads=12" in first
    assert result.output.strip() == first  # the line alone (a failure's traceback offer is not for bad input)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data=text_files", "data.files=/no/such/corpus*.txt"], "data.files: no file matches '/no/such/corpus*.txt'"),
        (["experiment=longrange", "data.longrange.blocks=3"], "data.longrange.blocks=3 must be >= 2 and divide the "
         "segment's 128 tokens"),
    ],
)  # fmt: skip
def test_missing_or_ungeneratable_corpus_is_one_line_before_the_memory_fit(tmp_path, overrides, message):
    """Before: checked only as the data loaded, after the memory check's fit (16 s on a new configuration)."""
    result = runner.invoke(cli.app, ["pretrain", *overrides])
    assert result.exit_code == 2
    assert error_line(result.output).startswith(f"blockbert pretrain: error: {message}")
    assert "plan:" not in result.output and not list(tmp_path.glob("runs/*/*"))


def test_sequence_longer_than_positions_is_one_line():
    result = runner.invoke(cli.app, ["pretrain", "data.max_seq_length=4096"])
    assert result.exit_code == 2
    assert "data.max_seq_length=4096 exceeds model.max_position_embeddings=128" in result.output


def test_cfg_job_through_the_installed_command(blockbert, tmp_path):
    out = blockbert(tmp_path, "pretrain", "experiment=blockbert_n3_1024", "--cfg", "job")
    assert "heads: '8:2:2'" in out.stdout and "max_seq_length: 1024" in out.stdout
    assert not (tmp_path / "runs").exists()  # --cfg runs nothing


def test_python_cli_py_and_info(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "pretrain", "--info", "defaults"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    assert "model/tiny" in out.stdout or "model: tiny" in out.stdout


def test_multirun_of_two_tiny_jobs_makes_two_run_dirs(blockbert, tmp_path):
    sweep = tmp_path / "sweep"
    tiny = ["trainer.max_steps=2", "trainer.val_check_interval=2", "logger=none", "progress_bar=false"]
    out = blockbert(tmp_path, "pretrain", "-m", "model.heads=3:1,2:2", *tiny, "data.generated_documents=40",
                    f"hydra.sweep.dir={sweep}")  # fmt: skip
    for job, heads in (("0", "3:1"), ("1", "2:2")):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["step"] == 2 and metrics["status"] == "finished"
        assert f"heads: '{heads}'" in (sweep / job / ".hydra" / "config.yaml").read_text()
    assert out.stdout.strip().splitlines()[-1] == str(sweep.resolve())


def test_built_wheel_runs_outside_the_checkout(tmp_path):
    """cli.py and conf/ travel in the wheel: run it from a plain directory on sys.path."""
    wheel_dir, site = tmp_path / "wheel", tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(wheel_dir.glob("blockbert-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    assert (site / "blockbert" / "conf" / "pretrain.yaml").is_file() and (site / "cli.py").is_file()
    run_env = dict(env(tmp_path), PYTHONPATH=str(site))
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import cli, sys; sys.argv[0] = 'blockbert'; cli.main()",
            "pretrain",
            "experiment=blockbert_n2_1024",
            "--cfg",
            "job",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=run_env,
    )
    assert out.returncode == 0, out.stderr
    assert "heads: '9:3'" in out.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import blockbert.paths as p; print(p.config_dir())"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=run_env,
    )
    assert probe.stdout.strip() == str(site / "blockbert" / "conf")


def test_empty_and_too_short_corpora_are_one_line(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    result = runner.invoke(
        cli.app, ["pretrain", "data=text_files", f"data.files={tmp_path}/empty.txt", "data.max_seq_length=128"]
    )
    assert result.exit_code == 2
    assert error_line(result.output) == (
        f"blockbert pretrain: error: data.files='{tmp_path}/empty.txt': the corpus is empty (no text in "
        f"{tmp_path}/empty.txt)"
    )
    (tmp_path / "short.txt").write_text("One document.\n\nAnother one.\n\nA third.\n")
    result = runner.invoke(
        cli.app,
        [
            "pretrain",
            "data=text_files",
            f"data.files={tmp_path}/short.txt",
            "data.max_seq_length=128",
            "data.tokenizer_vocab_size=100",
        ],
    )
    assert result.exit_code == 2
    assert "fewer than one optimizer step's batch of 16 (tokens_per_batch / data.max_seq_length)" in error_line(
        result.output
    )


def test_a_directory_given_as_data_files_is_refused_with_the_glob_to_give(tmp_path):
    """Before: "the corpus is empty (no text in )", though the directory held text."""
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("Some text.\n")
    result = runner.invoke(cli.app, ["pretrain", "data=text_files", "data.files=corpus"])
    assert result.exit_code == 2
    assert error_line(result.output) == (
        "blockbert pretrain: error: data.files: 'corpus' matches directories only, no file: give the files, e.g. a "
        "glob 'corpus/*.txt'"
    )
    (tmp_path / "corpus" / "a.txt").rename(tmp_path / "corpus" / "a.jsonl.gz")  # the glob names the files' format
    result = runner.invoke(cli.app, ["pretrain", "data=text_files", "data.files=corpus"])
    assert error_line(result.output).endswith("e.g. a glob 'corpus/*.jsonl.gz'")
    assert not list(tmp_path.glob("runs/*/*"))


@pytest.mark.parametrize("name", ["notjson.jsonl", "half.json"])
def test_a_corpus_file_that_is_not_json_is_one_line_naming_it_and_leaves_no_run(tmp_path, name):
    """Before: datasets' "An error occurred while generating the dataset; JSON parse error: Invalid value. in row 0",
    naming no file, exit 1, and a run directory left behind."""
    rows = ['{"text": "a first document"}', "not json"] if name.startswith("half") else ["not json"]
    (tmp_path / name).write_text("\n".join(rows) + "\n")
    result = runner.invoke(cli.app, ["pretrain", "data=text_files", f"data.files={name}", "logger=none"])
    assert result.exit_code == 2, result.output
    line = len(rows)
    assert error_line(result.output) == (
        f"blockbert pretrain: error: {name} is not JSON (Expecting value: line {line} column 1); a .json/.jsonl corpus "
        'holds one JSON object per line ({"text": ...}) or one JSON document'
    )
    assert not list(tmp_path.glob("runs/*/*"))


def test_an_output_directory_that_cannot_be_written_is_refused_before_the_work(tmp_path):
    """export OUT_DIR and plan --out (before: errno text after loading the run, or after the plan's whole fit)."""
    (tmp_path / "afile").write_text("")
    result = runner.invoke(cli.app, ["export", str(tmp_path / "no_run"), str(tmp_path / "afile")])
    assert result.exit_code == 2
    assert error_line(result.output) == (
        f"blockbert export: error: OUT_DIR {tmp_path / 'afile'}: cannot write a directory there (a file is there): "
        "give another"
    )
    result = runner.invoke(cli.app, ["plan", "--out", str(tmp_path / "afile" / "plan")])
    assert result.exit_code == 2 and "--out " in error_line(result.output) and "(Not a directory)" in result.output
    assert not (Path.cwd() / "runs").exists()


def test_a_run_directory_that_cannot_be_made_names_its_setting(tmp_path):
    (tmp_path / "afile").write_text("")
    result = runner.invoke(cli.app, ["pretrain", f"hydra.run.dir={tmp_path / 'afile' / 'run'}"])
    assert result.exit_code == 2
    assert error_line(result.output).startswith(
        f"blockbert pretrain: error: hydra.run.dir={tmp_path / 'afile' / 'run'}: the directory cannot be made ("
    )


@pytest.mark.parametrize("given", [["hydra.run.dir="], ["-m", "hydra.sweep.dir=''", "seed=0,1"]])
def test_an_empty_run_directory_is_refused_not_taken_as_the_working_directory(tmp_path, monkeypatch, given):
    """Before: `hydra.run.dir=$UNSET` ran in the working directory, its .hydra, checkpoints and log among the user's
    files."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli.app, ["pretrain", *given])
    key = given[-2 if len(given) > 1 else 0].split("=")[0]
    assert result.exit_code == 2
    assert (
        error_line(result.output)
        == f"blockbert pretrain: error: {key} is empty: give a directory (an unset shell variable?)"
    )
    assert not list(tmp_path.iterdir())
