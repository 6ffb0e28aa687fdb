"""Rebuild the measured tables of docs/ from runs, so that the numbers and the commands that produced them never
drift apart.

    python benchmarks/docs_tables.py                 # run COMMANDS, set them beside the paper (about 5 min, 2 CPUs)
    python benchmarks/docs_tables.py --runs DIR ...  # the same from runs made before (their directories)
    python benchmarks/docs_tables.py --sweep DIR     # a sweep's table (e.g. longrange_n2's), from its directory

Paper mode: each command prints its run directory last; `blockbert report --paper` sets those runs beside the
paper's numbers (paper_report.md, .csv, .png in --out, default runs/paper_report), and the block of docs/results.md
between ``<!-- paper-report:begin -->`` and ``<!-- paper-report:end -->`` becomes paper_report.md under a line naming
the commands, the machine and the date. A sweep: `blockbert report DIR` summarises it again and the block of
docs/figure4.md between ``<!-- sweep:NAME:begin -->`` and ``<!-- sweep:NAME:end -->`` (NAME: the sweep's) becomes its
summary.md, with its summary.png copied to docs/sweeps/NAME.png. ``--doc FILE`` rewrites another file instead.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from blockbert.experiments.sweep_plan import load_sweep
from blockbert.formats.run_dir import SweepDir

ROOT = Path(__file__).resolve().parents[1]
RESULTS, FIGURE4 = ROOT / "docs" / "results.md", ROOT / "docs" / "figure4.md"
BEGIN, END = "<!-- paper-report:begin -->", "<!-- paper-report:end -->"
COMMANDS = [
    ["blockbert", "profile"],  # Table 1 at the CPU width of docs/results.md
    # Table 5's models and N at 4 layers, batch 8, fp32 on the CPU (fp16 at 30 runs is the GPU setting)
    [
        "blockbert",
        "benchmark",
        "bench=table5",
        "device=cpu",
        "dtype=float32",
        "size=base_4layers",
        "batch_sizes=[8]",
        "repeats=3",
        "warmup=1",
    ],  # fmt: skip
]


def run(command: list[str]) -> str:
    """Run a blockbert command (its output streamed); its run directory, the last line it prints."""
    print("$", shlex.join(command), flush=True)
    out = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    sys.stdout.write(out.stdout)
    if out.returncode:
        sys.exit(f"{shlex.join(command)} failed (exit {out.returncode}): docs/ are left as they were")
    return out.stdout.strip().splitlines()[-1]


def command_of(run_dir: Path) -> str:
    """The command that made a run, from its .hydra files (a sweep directory: named as such)."""
    hydra = run_dir / ".hydra"
    if not (hydra / "hydra.yaml").is_file():
        return f"# {run_dir}: a sweep or a directory without .hydra/"
    name = yaml.safe_load((hydra / "hydra.yaml").read_text())["hydra"]["job"]["name"]
    overrides = yaml.safe_load((hydra / "overrides.yaml").read_text()) or []
    return shlex.join(["blockbert", name, *overrides])


def stamp(commands: list[str]) -> str:
    when = datetime.date.today().isoformat()
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    ran = "\n".join(commands)
    return f"_Rebuilt by `python benchmarks/docs_tables.py` on {when} ({machine}) from:_\n\n```bash\n{ran}\n```"


def replace_block(doc: Path, begin: str, end: str, body: str) -> None:
    text = doc.read_text()
    if begin not in text or end not in text:
        sys.exit(f"{doc}: no {begin} ... {end} block to replace")
    start, stop = text.index(begin), text.index(end) + len(end)
    doc.write_text(f"{text[:start]}{begin}\n{body.strip()}\n{end}{text[stop:]}")


def rebuild_sweep(doc: Path, directory: str) -> None:
    sweep_dir = Path(directory).expanduser().resolve()
    run(["blockbert", "report", str(sweep_dir)])
    sweep = SweepDir(sweep_dir)
    spec = sweep.spec()
    name, summary = spec["name"], sweep.summary(".md").read_text()
    if sweep.summary(".png").is_file():  # Figure 4's plot, kept beside the page
        image = doc.parent / "sweeps" / f"{name}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sweep.summary(".png"), image)
        summary += f"\n![{name}: summary.png](sweeps/{name}.png)\n"
    extra = " ".join(o for o in spec.get("overrides", []) if o not in load_sweep(name).overrides)
    command = f"blockbert sweep {name}{' ' + extra if extra else ''}"
    replace_block(doc, f"<!-- sweep:{name}:begin -->", f"<!-- sweep:{name}:end -->", f"{stamp([command])}\n\n{summary}")
    print(f"{doc}: the {name} block rebuilt from {sweep_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", help="report these run directories; run no command")
    parser.add_argument("--sweep", action="append", default=[], help="a sweep directory whose table to rebuild")
    parser.add_argument("--out", default=str(ROOT / "runs" / "paper_report"))
    parser.add_argument("--doc", help="the page to rewrite (default: docs/figure4.md for sweeps, docs/results.md)")
    args = parser.parse_args()
    for directory in args.sweep:
        rebuild_sweep(Path(args.doc or FIGURE4), directory)
    if args.sweep and not args.runs:
        return
    if args.runs:
        directories, commands = args.runs, [command_of(Path(d)) for d in args.runs]
    else:
        directories, commands = [run(c) for c in COMMANDS], [shlex.join(c) for c in COMMANDS]
    run(["blockbert", "report", "--paper", *directories, "--out", args.out])
    report = (Path(args.out) / "paper_report.md").read_text()
    body = re.sub(r"^# .*\n", "", report, count=1)  # paper_report.md's own title: the page's section has one
    body = re.sub(r"^## ", "### ", body, flags=re.M).replace(f"{ROOT}/", "")  # under the page's ##; paths relative
    doc = Path(args.doc or RESULTS)
    replace_block(doc, BEGIN, END, f"{stamp(commands)}\n\n{body}")
    print(f"{doc}: the paper report block rebuilt from {', '.join(directories)}")


if __name__ == "__main__":
    main()
