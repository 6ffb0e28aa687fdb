"""The tests' commands forked from a process with the libraries imported (tests/preloaded.py) run as a fresh
interpreter runs them: the same output and exit code, their own environment and directory, a timeout that kills."""

import os
import subprocess
from pathlib import Path

import pytest
from conftest import PRELOADED


def both_ways(tmp_path: Path, *args: str, env: dict | None = None):
    environ = {**os.environ, "BLOCKBERT_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1", **(env or {})}
    argv = ["blockbert", *args]
    forked = PRELOADED.run(argv, tmp_path, environ, timeout=300)
    fresh = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=environ, timeout=300)
    return forked, fresh


@pytest.mark.parametrize(
    "args",
    [
        ("pretrain", "model.heads=3:3"),  # refused while composing: exit 2, one line
        ("pretrain", "data.files=[missing.txt]", "trainer.max_steps=1"),  # refused by the run (imports torch)
        ("finetune", "--cfg", "job"),
        ("no-such-command",),
    ],
)
def test_a_forked_command_prints_and_exits_as_a_fresh_one(args, tmp_path):
    forked, fresh = both_ways(tmp_path, *args)
    assert forked is not None, "the command ran in a fresh interpreter, not forked"
    assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)


def test_a_forked_command_reads_its_own_environment_and_directory(tmp_path):
    (tmp_path / "here.txt").write_text("the model reads words\n" * 50)
    forked, _ = both_ways(tmp_path, "pretrain", "data=text_files", "data.files=[here.txt]", "--cfg", "job")
    assert forked.returncode == 0 and "- here.txt" in forked.stdout  # the relative path, as the user gave it
    logged, _ = both_ways(tmp_path, "pretrain", "--cfg", "job", "--resolve", env={"WANDB_PROJECT": "elsewhere"})
    assert "project: elsewhere" in logged.stdout
    assert PRELOADED.run(["blockbert", "--help"], tmp_path, {**os.environ, "TORCH_LOGS": "+dynamo"}, 60) is None


def test_a_command_past_its_timeout_is_killed_and_the_next_runs(tmp_path):
    environ = {**os.environ, "BLOCKBERT_CACHE": str(tmp_path / "cache")}
    with pytest.raises(subprocess.TimeoutExpired):
        PRELOADED.run(["blockbert", "pretrain", "trainer.max_steps=100000", "logger=none"], tmp_path, environ, 3)
    after = PRELOADED.run(["blockbert", "pretrain", "--cfg", "job"], tmp_path, environ, 60)
    assert after.returncode == 0 and "max_steps: 300" in after.stdout
