"""How fast the `blockbert` command answers: wall time of the commands users type most, against targets.

    python benchmarks/startup.py [--repeats 5] [--importtime]

Each command runs ``--repeats`` times in a fresh process, the commands in rotating order after one untimed run each
that warms the file cache (:func:`blockbert.measure.timing.time_side_by_side`); the table shows the median and the
range. ``evaluate`` scores a SQuAD dev-sized file (10,570 generated
questions, as many as SQuAD 1.1 dev) against its own answers. ``--importtime`` adds, per command, the
modules that took longest to import (``python -X importtime``), which is where start-up time goes.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from blockbert.measure.timing import time_side_by_side, timing_summary

SQUAD_DEV_QUESTIONS = 10_570


def commands(workdir: Path) -> list[tuple[str, list[str], float]]:
    """(label, arguments of `blockbert`, target in seconds) of the issue's start-up targets."""
    from blockbert.data.qa import read_qa_file, write_generated_squad

    dev = write_generated_squad(workdir / "dev.json", SQUAD_DEV_QUESTIONS)
    answers = {qid: golds[0] for qid, golds in read_qa_file(dev).gold.items()}
    predictions = workdir / "predictions.json"
    predictions.write_text(json.dumps(answers))
    return [
        ("blockbert --help", ["--help"], 1.0),
        ("blockbert pretrain --help", ["pretrain", "--help"], 1.0),
        ("blockbert pretrain --cfg job", ["pretrain", "--cfg", "job"], 3.0),
        ("blockbert finetune --cfg job", ["finetune", "--cfg", "job"], 3.0),
        (f"blockbert evaluate (SQuAD dev size, {len(answers)} questions)", ["evaluate", str(dev), str(predictions)], 2),
        ("blockbert sweep heads_n3 --dry-run", ["sweep", "heads_n3", "--dry-run"], 3.0),
    ]


def blockbert_command() -> list[str]:
    found = shutil.which("blockbert")
    if found is None:
        raise SystemExit("the blockbert command is not on PATH: install the project first (pip install -e .)")
    return [sys.executable, found]


def slowest_imports(argv: list[str], env: dict, count: int = 5) -> list[tuple[str, float]]:
    """The top-level imports that took longest (cumulative seconds) in one run of ``argv``."""
    done = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], env=env, capture_output=True, text=True)
    top = []
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("   "):
            top.append((parts[2].strip(), int(parts[1]) / 1e6))  # a module imported at the top level
    return sorted(top, key=lambda item: -item[1])[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--importtime", action="store_true", help="show the slowest imports of each command")
    args = parser.parse_args()
    env = {**os.environ, "WANDB_MODE": "disabled"}
    base = blockbert_command()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        planned = commands(Path(tmp))
        calls = {
            label: functools.partial(subprocess.run, [*base, *arguments], env=env, capture_output=True, check=True)
            for label, arguments, _ in planned
        }
        times = time_side_by_side(calls, torch.device("cpu"), warmup=1, repeats=args.repeats)
        for label, arguments, target in planned:
            median = timing_summary(times[label])["median_s"]
            rows.append((label, median, min(times[label]), max(times[label]), target))
            print(f"{label}: median {median:.2f} s", file=sys.stderr)
            if args.importtime:
                for module, seconds in slowest_imports([*base, *arguments], env):
                    print(f"    {module}: {seconds:.2f} s", file=sys.stderr)
    print("\n| command | median (s) | range (s) | target (s) | |\n|---|---:|---:|---:|---|")
    for label, median, low, high, target in rows:
        verdict = "met" if median < target else "MISSED"
        print(f"| `{label}` | {median:.2f} | {low:.2f}–{high:.2f} | < {target:g} | {verdict} |")
    python = sys.version.split()[0]
    print(f"\n{os.cpu_count()} CPUs, Python {python}, {args.repeats} runs each, {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
