"""`blockbert report`: summarise a sweep or multirun directory (summary.csv, a table best first, Figure 4's plot), or
with ``--paper`` set run directories beside the paper's numbers (paper_report.md, .csv, .png)."""

from __future__ import annotations

from pathlib import Path

from blockbert.display import print_results
from blockbert.errors import ConfigError, one_line_errors
from blockbert.experiments.sweep_summary import summarize_sweep
from blockbert.formats.run_dir import SweepDir, check_writable


@one_line_errors("report")
def run_report(directory: str | list[str], out: str | None = None) -> None:
    """The sweep summary: one directory, written into it (``--out`` and several directories are ``--paper``'s)."""
    directories = [directory] if isinstance(directory, str) else list(directory)
    if len(directories) != 1 or out:
        given = "several directories" if len(directories) != 1 else "--out"
        raise ConfigError(f"{given}: only with --paper; a sweep summary reads one directory and is written into it")
    sweep_dir = Path(directories[0]).expanduser()
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{directories[0]}: no such directory (expected a sweep or multirun directory)")
    summarize_sweep(sweep_dir)
    written = [path.name for path in SweepDir(sweep_dir).summaries() if path.is_file()]
    print_results(", ".join(written), sweep_dir, "summary")


@one_line_errors("report")
def run_paper_report(directories: list[str], out: str | None = None) -> None:
    """Paper mode: each run directory (or each finished job of a sweep directory) beside the paper's numbers. The
    outputs go to ``out``, by default the first directory given, as the sweep summary goes into its directory."""
    from blockbert.experiments.paper_report import OUTPUTS, paper_report

    if out:
        check_writable(out, "--out")  # before the runs are read: a file there, not a directory
    out_dir = paper_report(list(directories), Path(out).expanduser() if out else None)
    print_results(", ".join(OUTPUTS), out_dir, "paper report")
