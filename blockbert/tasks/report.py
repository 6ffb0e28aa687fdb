"""`blockbert report`: summarise a sweep or multirun directory (summary.csv, a table best first, Figure 4's plot)."""

from __future__ import annotations

from pathlib import Path

from blockbert.errors import one_line_errors
from blockbert.tools.sweep_summary import summarize_sweep


@one_line_errors("report")
def run_report(directory: str) -> None:
    sweep_dir = Path(directory).expanduser()
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory (expected a sweep or multirun directory)")
    summarize_sweep(sweep_dir)
    print("summary (summary.csv, summary.png for head sweeps, selection.json for fine-tuning grids) is in:")
    print(sweep_dir.resolve())
