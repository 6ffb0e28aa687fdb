"""benchmarks/gpu_check.sh, checked here before it costs device time: a GPU is lent for 15 minutes a session, and a
part whose command line fails there is lost for that session. The script runs with `timeout` replaced by a recorder,
so that every command it would run is collected, then each is checked as the tool would check it: the command's
options parsed, a benchmark's overrides composed and checked as `blockbert benchmark` does, its models known, a
pytest selection non-empty, and each documented device call's parts within that call's time."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

import cli
from blockbert.formats.compose import compose
from blockbert.formats.schema import BENCHMARK_MODES as MODES
from blockbert.measure.benchmark import baselines_of
from blockbert.measure.models import EAGER, known_models

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
# the device calls the script's header documents: run(command="bash benchmarks/gpu_check.sh PARTS", ..., timeout_s=T)
DEVICE_CALL = re.compile(r'run\(command="bash benchmarks/gpu_check\.sh ([a-z0-9 ]+)".*timeout_s=(\d+)\)')
SETUP_S = 20  # our margin for the wheels' install (about 10 s) and machine.txt before the first part starts


def run_script(tmp_path: Path, parts: list[str]) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """The script run for ``parts`` (all: none given), and every command it ran under `timeout`, as `timeout`'s
    arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "commands.jsonl"
    record.unlink(missing_ok=True)
    recorder = f"#!{sys.executable}\nimport json, os, sys\n"
    recorder += "open(os.environ['RECORD'], 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    for name in ("timeout", "python3", "nvidia-smi"):  # python3 and nvidia-smi only write machine.txt here
        (bin_dir / name).write_text(recorder if name == "timeout" else "#!/bin/sh\nexit 0\n")
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", RECORD=str(record), OUT=str(tmp_path / "out"))
    done = subprocess.run(["bash", str(SCRIPT), *parts], cwd=ROOT, env=env, capture_output=True, text=True)
    return done, [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def recorded_commands(tmp_path: Path, parts: list[str]) -> list[list[str]]:
    done, commands = run_script(tmp_path, parts)
    assert done.returncode == 0, done.stderr
    return commands


def limit_and_command(call: list[str]) -> tuple[int, list[str]]:
    """`timeout -s INT -k 10 LIMIT command...` -> (LIMIT, command)."""
    assert call[:4] == ["-s", "INT", "-k", "10"], f"every part is stopped by SIGINT, then killed: {call}"
    return int(call[4]), call[5:]


def device_calls() -> list[tuple[str, int]]:
    calls = [(parts, int(limit)) for parts, limit in DEVICE_CALL.findall(SCRIPT.read_text())]
    assert len(calls) == 2, "the header documents the two device calls a session makes"
    return calls


@pytest.mark.parametrize("parts, timeout_s", device_calls())
def test_each_device_call_fits_its_timeout(tmp_path, parts, timeout_s):
    commands = recorded_commands(tmp_path, parts.split())
    assert commands, parts
    total = sum(limit_and_command(call)[0] for call in commands)
    assert total + SETUP_S <= timeout_s, f"{parts}: parts' limits {total} s + {SETUP_S} s setup > {timeout_s} s"
    assert timeout_s <= 600, "a device command runs at most 10 minutes"


def test_an_unknown_part_is_refused_before_any_part_runs(tmp_path):
    done, commands = run_script(tmp_path, ["tests", "tabel5"])
    assert done.returncode == 2 and "unknown part tabel5: tests plan table5" in done.stderr
    assert commands == [] and not (tmp_path / "out").exists()


def test_every_command_of_every_part_would_start(tmp_path):
    commands = [limit_and_command(call)[1] for call in recorded_commands(tmp_path, [])]
    assert {"pytest", "plan", "benchmark"} <= {command[2] for command in commands}
    group = typer.main.get_command(cli.app)
    known = set(known_models())
    benchmarks = 0
    for command in commands:
        assert command[0] == "python3", command
        if command[1:3] == ["-m", "pytest"]:
            _check_pytest_selection(command[3:])
            continue
        assert command[1] == "cli.py", command
        name, args = command[2], command[3:]
        parsed = group.commands[name].make_context(name, list(args))  # its options parse (Typer's own check)
        stray = [arg for arg in parsed.params.get("overrides") or () if arg.startswith("-")]
        assert not stray, f"{command}: not options of blockbert {name}: {stray}"  # they would reach Hydra
        if name != "benchmark":
            continue
        benchmarks += 1
        cfg = compose("benchmark", args, finished=True)  # typed and checked as the command checks it
        assert cfg.mode in MODES and cfg.device == "cuda", args
        baselines_of(cfg)
        names = {*cfg.models, *cfg.layout.models, *cfg.pretrain.models, *cfg.finetune.models}
        names |= {run.model for run in cfg.plan.runs}
        unknown = {m for m in names if m not in known and m.removesuffix(EAGER) not in known}
        assert not unknown, f"{args}: unknown models {unknown}"
    assert benchmarks >= 7, "table5, seqlen, attention (2), layout, pretrain, finetune, plan_check"


def _check_pytest_selection(args: list[str]) -> None:
    """The tests a pytest part selects exist: at least one is collected (with the part's -k)."""
    keep = [a for a in args if a.startswith("tests/")]
    if "-k" in args:
        keep += ["-k", args[args.index("-k") + 1]]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-o", "addopts=", *keep],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0 and re.search(r"\d+ tests? collected", done.stdout), done.stdout[-2000:]
