"""`blockbert report`: summarise a sweep or multirun directory (summary.csv, a table best first, Figure 4's plot), or
with ``--paper`` set run directories beside the paper's numbers (paper_report.md, .csv, .png)."""

from __future__ import annotations

from pathlib import Path

import yaml

from blockbert.display import console, print_results
from blockbert.errors import ConfigError, one_line, one_line_errors
from blockbert.experiments.sweep_summary import summarize_sweep
from blockbert.formats.run_dir import SweepDir, check_writable

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


@one_line_errors("report")
def run_report(directory: str | list[str], out: str | None = None) -> None:
    """The sweep summary: one directory, written into it (``--out`` and several directories are ``--paper``'s)."""
    directories = [directory] if isinstance(directory, str) else list(directory)
    if len(directories) != 1 or out:
        given = "several directories" if len(directories) != 1 else "--out"
        raise ConfigError(f"{given}: only with --paper; a sweep summary reads one directory and is written into it")
    report_sweep(directories[0])


def report_sweep(directory: str | Path) -> None:
    """The sweep summary of ``directory`` and the lines naming what was written, errors raised (a command's
    ``one_line_errors`` reports them as its own: `report`'s, or `sweep`'s at the end of a sweep)."""
    sweep_dir = Path(directory).expanduser()
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory (expected a sweep or multirun directory)")
    summarize_sweep(sweep_dir, planned_jobs(sweep_dir))
    written = [path.name for path in SweepDir(sweep_dir).summaries() if path.is_file()]
    print_results(", ".join(written), sweep_dir, "summary")


def planned_jobs(sweep_dir: Path) -> list[list[str]] | None:
    """Every job's overrides as the multirun in ``sweep_dir`` planned them, in job order: its multirun.yaml (which
    Hydra's basic sweeper writes before the first job, for `blockbert sweep` and a plain ``-m`` alike) expanded as
    that sweeper expands it (``hydra.sweeper.params``, then the command line's overrides; their product). None where
    nothing records the plan: a directory of separate runs (``runs/<command>``), another sweeper's multirun, or a
    multirun.yaml that cannot be read or expanded (said in one line); then only the jobs that started are listed."""
    path = SweepDir(sweep_dir).multirun_file
    if not path.is_file():
        return None
    try:
        return expand_multirun(yaml.safe_load(path.read_text(encoding="utf-8")))
    except Exception as err:  # noqa: BLE001 -- the summary goes on without the plan
        console().print(
            f"{path}: the planned jobs cannot be read ({one_line(err)}): jobs that never started are not listed",
            markup=False,
            highlight=False,
        )
        return None


def expand_multirun(config: dict) -> list[list[str]] | None:
    """The jobs of a multirun.yaml's config (``config``) as Hydra's basic sweeper runs them; None for another
    sweeper, whose jobs it does not tell."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from blockbert.formats.compose import config_loader

    hydra = config["hydra"]
    if hydra["sweeper"]["_target_"] != BASIC_SWEEPER:
        return None
    params = [f"{key}={value}" for key, value in (hydra["sweeper"].get("params") or {}).items()]
    overrides = OverridesParser.create(config_loader=config_loader()).parse_overrides(
        [*params, *hydra["overrides"]["task"]]
    )
    (jobs,) = BasicSweeper.split_arguments(overrides, None)
    return jobs


@one_line_errors("report")
def run_paper_report(directories: list[str], out: str | None = None) -> None:
    """Paper mode: each run directory (or each finished job of a sweep directory) beside the paper's numbers. The
    outputs go to ``out``, by default the first directory given, as the sweep summary goes into its directory."""
    from blockbert.experiments.paper_report import OUTPUTS, paper_report

    if out:
        check_writable(out, "--out")  # before the runs are read: a file there, not a directory
    out_dir = paper_report(list(directories), Path(out).expanduser() if out else None)
    print_results(", ".join(OUTPUTS), out_dir, "paper report")
