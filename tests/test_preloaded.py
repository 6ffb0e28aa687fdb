"""The tests' commands forked from a process with the libraries imported (tests/preloaded.py) run as a fresh
interpreter runs them: the same output and exit code, their own environment and directory, a timeout that kills."""

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import PRELOADED

pytestmark = pytest.mark.skipif(os.environ.get("BLOCKBERT_TESTS_FRESH") == "1", reason="BLOCKBERT_TESTS_FRESH=1")


def both_ways(tmp_path: Path, *args: str, env: dict | None = None):
    """(forked, fresh): ``blockbert ARGS`` run both ways, each in a directory of its own (tmp_path/forked, /fresh)."""
    done = []
    for way in ("forked", "fresh"):
        cwd = tmp_path / way
        cwd.mkdir(exist_ok=True)
        environ = {**os.environ, "BLOCKBERT_CACHE": str(cwd / "cache"), "PYTHONUNBUFFERED": "1", **(env or {})}
        argv = ["blockbert", *args]
        if way == "forked":
            done.append(PRELOADED.run(argv, cwd, environ, timeout=300))
        else:
            done.append(subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=environ, timeout=300))
    return done


def same(forked: str, fresh: str, tmp_path: Path) -> bool:
    """The same text but for the directory each ran in, the times logged and datasets' progress bars."""

    def plain(text: str, way: str) -> str:
        text = text.replace(str(tmp_path / way), "DIR")
        text = re.sub(r"\[\d{4}-\d\d-\d\d [\d:,]+\]", "[time]", text)
        return re.sub(r"[^\n]* examples/s\]\n", "", text)  # datasets' bars: how many updates they draw is timing

    return plain(forked, "forked") == plain(fresh, "fresh")


@pytest.mark.parametrize(
    "args",
    [
        ("pretrain", "model.heads=3:3"),  # refused while composing: exit 2, one line
        ("pretrain", "data=text_files", "data.files=[missing.txt]"),  # refused as the run starts (imports torch)
        ("finetune", "--cfg", "job"),
        ("no-such-command",),
    ],
)
def test_a_forked_command_prints_and_exits_as_a_fresh_one(args, tmp_path):
    forked, fresh = both_ways(tmp_path, *args)
    assert forked is not None, "the command ran in a fresh interpreter, not forked"
    assert forked.returncode == fresh.returncode
    assert same(forked.stdout, fresh.stdout, tmp_path) and same(forked.stderr, fresh.stderr, tmp_path)


def test_a_forked_run_prints_and_logs_as_a_fresh_one(tmp_path):
    """A whole (tiny) run, Lightning and its logging included: the same output and run log, but for the times."""
    args = ("pretrain", "trainer.max_steps=2", "trainer.val_check_interval=2", "logger=none", "progress_bar=false")
    forked, fresh = both_ways(tmp_path, *args, "fit_check=false", "hydra.run.dir=run")
    assert forked.returncode == fresh.returncode == 0, forked.stderr[-2000:] + fresh.stderr[-2000:]
    assert same(forked.stdout, fresh.stdout, tmp_path) and same(forked.stderr, fresh.stderr, tmp_path)
    logs = [(tmp_path / way / "run" / "pretrain.log").read_text() for way in ("forked", "fresh")]
    assert same(*logs, tmp_path) and "`Trainer.fit` stopped: `max_steps=2` reached" in logs[0]


def test_a_forked_command_reads_its_own_environment_and_directory(tmp_path):
    (tmp_path / "forked").mkdir()
    (tmp_path / "forked" / "here.txt").write_text("the model reads words\n" * 50)
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
