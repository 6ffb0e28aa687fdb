"""The CLI answers without loading torch or Lightning, shows its config groups, and completes overrides."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import cli
from blockbert.app.launch import complete_overrides

runner = CliRunner()

HEAVY = ("torch", "pytorch_lightning", "lightning", "transformers", "datasets")


@pytest.mark.parametrize(
    "argv, exit_code",
    [
        (["--help"], 0),
        (["pretrain", "--help"], 0),
        (["pretrain", "--cfg", "job"], 0),
        (["finetune", "model=blockbert_n3", "--cfg", "job"], 0),
        (["sweep", "heads_n3", "--dry-run"], 0),
        (["pretrain", "model.heads=nonsense", "model=tiny", "--cfg", "job"], 2),  # checked while composing
        (["pretrain", "model=no_such_model", "--cfg", "job"], 2),  # an error while composing
    ],
)
def test_commands_that_only_compose_import_no_heavy_library(argv, exit_code, tmp_path):
    script = (
        "import json, sys\n"
        f"sys.argv = ['blockbert', *{argv!r}]\n"
        "import cli\n"
        "try:\n    cli.main()\n    code = 0\nexcept SystemExit as stop:\n    code = stop.code or 0\n"
        f"print(json.dumps([code, sorted(m for m in {HEAVY!r} if m in sys.modules)]), file=sys.stderr)\n"
    )
    env = {**os.environ, "WANDB_MODE": "disabled", "BLOCKBERT_CACHE": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    code, loaded = json.loads(done.stderr.strip().splitlines()[-1])
    assert code == exit_code, done.stdout[-2000:] + done.stderr[-2000:]
    assert loaded == [], f"{argv} imported {loaded}"


@pytest.mark.parametrize("task", ["pretrain", "finetune", "profile", "benchmark"])
def test_jobs_are_named_after_their_command(task):
    """Run directories are runs/<command>/<date>: Hydra names a job after its task function's module."""
    result = runner.invoke(cli.app, [task, "--cfg", "hydra"])
    assert result.exit_code == 0 and f"    name: {task}\n" in result.output


def test_command_help_lists_config_groups_with_their_options_and_default():
    result = runner.invoke(cli.app, ["pretrain", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Config groups" in text
    assert "model: blockbert_n2 | blockbert_n3 |" in text and "| tiny (default)" in text
    assert "experiment:" in text and "tiny (default)" in text and "blockbert_n2_512" in text
    finetune = " ".join(runner.invoke(cli.app, ["finetune", "--help"], terminal_width=200).output.split())
    assert "task: generated (default) | mrqa | squad11 | squad20" in finetune
    benchmark = " ".join(runner.invoke(cli.app, ["benchmark", "--help"], terminal_width=200).output.split())
    assert "bench: table5" in benchmark and "size: base |" in benchmark
    plan = " ".join(runner.invoke(cli.app, ["plan", "--help"], terminal_width=200).output.split())
    assert "the planned run's overrides, as blockbert pretrain takes them" in plan  # before: no word on them
    assert "Config groups" in plan and "experiment: blockbert_n2_1024 |" in plan and "16GiB" in plan


@pytest.mark.parametrize("command", ["pretrain", "finetune", "profile", "benchmark"])
def test_the_help_names_the_defaults_the_run_composes(command):
    """Each group's default in the help is the option a run with no arguments composes (Hydra's own choices)."""
    from hydra.types import RunMode

    from blockbert.formats.compose import config_groups, config_loader

    choices = config_loader().load_configuration(command, [], RunMode.RUN).hydra.runtime.choices
    assert {group: default for group, (default, _) in config_groups(command).items()} == {
        group: choices.get(group) for group in config_groups(command)
    }


@pytest.mark.parametrize(
    "typed, incomplete, expected",
    [
        (["model=blockbert_n"], None, ["model=blockbert_n2", "model=blockbert_n3"]),  # zsh, fish: one word
        (["model", "=", "blockbert_n"], "blockbert_n", ["blockbert_n2", "blockbert_n3"]),  # bash splits at '='
        (["model", ""], "", ["blockbert_n2", "blockbert_n3", "google_bert", "roberta_1seq"]),  # bash: `model=`
        (["-m", "data", ""], "", ["text_files", "tiny_corpus", "wiki_book", "wikitext103"]),
        (["model=tiny", "data.max_se"], None, ["data.max_seq_length="]),
        (["--cfg", ""], "", []),  # a flag's value: nothing, and no usage text
    ],
)
def test_overrides_complete_in_the_forms_shells_send(typed, incomplete, expected, capsys):
    incomplete = typed[-1] if incomplete is None else incomplete
    got = complete_overrides("pretrain", {"overrides": typed[:-1]}, incomplete)
    assert all(item in got for item in expected) if expected else got == []
    assert capsys.readouterr().err == ""


def test_sweep_overrides_complete_the_sweeps_command():
    got = complete_overrides("sweep", {"name": "finetune_grid", "overrides": []}, "task.max_train")
    assert got == ["task.max_train_samples="]


@pytest.mark.skipif(shutil.which("blockbert") is None, reason="the blockbert command is not installed")
def test_bash_completion_through_the_installed_entry_point(tmp_path):
    env = {
        **os.environ,
        "_BLOCKBERT_COMPLETE": "complete_bash",
        "COMP_WORDS": "blockbert pretrain model = blockbert_n",
        "COMP_CWORD": "4",
    }
    done = subprocess.run([sys.executable, shutil.which("blockbert")], capture_output=True, text=True, env=env)
    assert done.stdout.split() == ["blockbert_n2", "blockbert_n3"], done.stderr[-2000:]


@pytest.mark.skipif(not (shutil.which("bash") and shutil.which("blockbert")), reason="needs bash and blockbert")
def test_bash_completion_of_a_key_leaves_no_space_after_its_equals_sign(tmp_path):
    # typer detects the shell from the process's ancestors (a bash argument is ignored by typer >= 0.2x): run it
    # from bash, as a user does; started from a process without a shell above it, it says "Shell  not supported"
    command = "blockbert --show-completion bash; true"  # `; true`: bash forks the command instead of exec-ing it
    shown = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
    script = shown.stdout
    assert "compopt -o nospace" in script, f"exit {shown.returncode}: {shown.stderr[-2000:]}"
    probe = tmp_path / "probe.sh"  # the installed function with bash's own variables, compopt recorded
    probe.write_text(
        script.replace("complete -o default", "# complete -o default")
        + '\ncompopt() { echo compopt "$@"; }\nCOMP_WORDS=(blockbert pretrain data.max_se); COMP_CWORD=2\n'
        "_blockbert_completion blockbert\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n"
        "COMP_WORDS=(blockbert pretrain model = blockbert_n); COMP_CWORD=4\n_blockbert_completion blockbert\n"
        "printf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    out = subprocess.run(["bash", str(probe)], capture_output=True, text=True).stdout.splitlines()
    assert out == ["compopt -o nospace", "data.max_seq_length=", "blockbert_n2", "blockbert_n3"]


def test_hydra_shell_completion_flag_points_to_ours():
    result = runner.invoke(cli.app, ["pretrain", "-sc", "install=bash"])
    assert result.exit_code == 2
    assert "blockbert --install-completion" in result.output


def test_plan_overrides_complete_the_planned_command():
    assert complete_overrides("plan", {"command": "finetune", "overrides": []}, "task.max_train") == [
        "task.max_train_samples="
    ]
    assert complete_overrides("plan", {"overrides": []}, "tokens_per_") == ["tokens_per_batch="]


@pytest.mark.parametrize(
    "argv, line",
    [
        (["nosuch"], "blockbert: error: 'nosuch' is not a command: accepted are pretrain, finetune, sweep, profile, "),
        (["pretrian"], "blockbert: error: 'pretrian' is not a command (did you mean pretrain?): accepted are "),
        (["export"], "blockbert export: error: missing argument 'RUN_DIR' (usage: blockbert export [OPTIONS] "),
        (["report"], "blockbert report: error: missing argument 'DIRECTORY' (usage: blockbert report [OPTIONS] "),
        (["evaluate", "--nope", "a", "b"], "blockbert evaluate: error: no such option: --nope (usage: "),
        (["plan", "--gpus", "x"], "blockbert plan: error: invalid value for '--gpus': "),
        (["--nope"], "blockbert: error: no such option: --nope (usage: blockbert [OPTIONS] COMMAND [ARGS]...; "),
        (
            ["evaluate", "a", "b", "--format"],
            "blockbert evaluate: error: option '--format' requires an argument (usage",
        ),
    ],
)
def test_a_command_line_click_refuses_ends_in_one_line(argv, line, monkeypatch, capsys):
    """Before: click's box of five lines (usage, a hint, the message in a frame), unlike every other error's line."""
    monkeypatch.setattr(sys, "argv", ["blockbert", *argv])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith(line) and err.count("\n") == 1, err


def test_blockbert_alone_shows_the_help(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["blockbert"])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    shown = capsys.readouterr()
    assert stop.value.code == 2 and "pretrain" in shown.out + shown.err and "error" not in shown.out + shown.err


@pytest.mark.parametrize("command", ["finetune", "evaluate"])
def test_dash_h_is_the_commands_help(command, monkeypatch, capsys):
    """Before: `finetune -h` showed Hydra's help (groups finetune refuses, "powered by Hydra"), `evaluate -h` was
    refused as no such option."""
    monkeypatch.setattr(sys, "argv", ["blockbert", command, "-h"])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as stop:
        cli.main()
    shown = capsys.readouterr().out
    assert stop.value.code == 0 and f"Usage: blockbert {command} [OPTIONS]" in shown and "Hydra (" not in shown


def test_completion_after_a_mistyped_command_stays_silent(monkeypatch, capsys):
    """The refusal of an unknown command is not printed into the terminal while the shell completes (click parses
    resiliently then)."""
    monkeypatch.setattr(sys, "argv", ["blockbert"])
    for name, value in {
        "_BLOCKBERT_COMPLETE": "complete_bash",
        "COMP_WORDS": "blockbert pretrian ",
        "COMP_CWORD": "2",
    }.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit):
        cli.main()
    assert "error" not in capsys.readouterr().err
