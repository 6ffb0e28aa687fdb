"""`blockbert sweep NAME` and `blockbert report DIR`: a sweep file run as a Hydra multirun, then summarised."""

from __future__ import annotations

import functools
import json
import logging
import sys
import traceback
from datetime import datetime
from pathlib import Path

import yaml
from rich.table import Table

from blockbert.app.launch import run_task
from blockbert.display import console
from blockbert.errors import RunInterrupted, one_line, one_line_errors
from blockbert.experiments.sweep_plan import (
    comma_lists,
    expand,
    jobs,
    load_sweep,
    merge_overrides,
    multirun_args,
    wandb_sweep,
)
from blockbert.formats.compose import compose
from blockbert.formats.run_dir import RunDir, SweepDir
from blockbert.train.loggers import finish_wandb

log = logging.getLogger(__name__)


def tolerant(main):
    """A sweep job: a failure is recorded in RUN_DIR/error.txt and does not stop the other jobs;
    a job already complete in this directory (same overrides) is skipped."""

    @functools.wraps(main)
    def job(cfg):
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
        run = RunDir(hydra_cfg.runtime.output_dir)
        overrides = list(hydra_cfg.overrides.task)
        if run.done_file.is_file() and json.loads(run.done_file.read_text()).get("overrides") == overrides:
            print(f"skipping job {hydra_cfg.job.num}: already complete in {run.path}")
            return None
        run.error_file.unlink(missing_ok=True)
        try:
            main(cfg)
        except RunInterrupted:
            raise  # SIGTERM stops the whole sweep; running the sweep again with --dir resumes it
        except Exception as err:  # noqa: BLE001 -- recorded, the sweep goes on
            run.error_file.write_text(f"{type(err).__name__}: {one_line(err)}\n\n{traceback.format_exc()}")
            print(f"job {hydra_cfg.job.num} failed: {one_line(err)}", file=sys.stderr)
            finish_wandb(exit_code=1)
            return None
        run.done_file.write_text(json.dumps({"overrides": overrides}) + "\n")
        return None

    return job


def num_heads(command: str, overrides: list[str]) -> int:
    """The model's head count in the sweep's command as its overrides compose it (the head-assignment grid)."""
    return int(compose(command, [o for o in overrides if not o.startswith("hydra.")]).model.num_heads)


@one_line_errors("sweep")
def run_sweep(
    name: str,
    overrides: list[str],
    dry_run: bool = False,
    directory: str | None = None,
    wandb_config: bool = False,
    source: str | None = None,
    debug_jobs: bool = False,
) -> int:
    """Plan the sweep, run its jobs as a multirun (``debug_jobs``: a job's error raises with its traceback), and
    summarise it; the exit code."""
    sweep = load_sweep(name)
    overrides, swept = comma_lists(overrides)
    sweep.overrides = merge_overrides(sweep.overrides, overrides)
    sweep.parameters = {**sweep.parameters, **swept}
    source_dir = Path(source).expanduser().resolve() if source else None
    grid = expand(sweep, num_heads(sweep.command, sweep.overrides), source_dir)
    if directory:
        grid = keep_job_numbers(sweep, grid, SweepDir(directory).spec_file)
    if wandb_config:
        print(yaml.safe_dump(wandb_sweep(sweep, grid), sort_keys=False, width=1000), end="")
        return 0
    planned = jobs(grid)
    if dry_run:
        table = Table(
            title=f"sweep {sweep.name}: {len(planned)} {sweep.command} jobs "
            f"(fixed: {' '.join(sweep.overrides) or 'none'})"
        )
        table.add_column("job")
        for key in grid:
            table.add_column(key)
        for i, values in enumerate(planned):
            table.add_row(str(i), *(str(v) for v in values.values()))
        console().print(table)
        return 0
    sweep_dir = Path(directory or f"multirun/sweeps/{sweep.name}/{datetime.now():%Y-%m-%d_%H-%M-%S}").resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    SweepDir(sweep_dir).spec_file.write_text(
        yaml.safe_dump(
            {
                "name": sweep.name,
                "command": sweep.command,
                "metric": sweep.metric,
                "mode": sweep.mode,
                "select": sweep.select,
                "overrides": sweep.overrides,
                "grid": grid,
                **({"from": str(source_dir)} if source_dir else {}),
            },
            sort_keys=False,
        )
    )
    args = [
        "-m",
        *sweep.overrides,
        *multirun_args(grid),
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweep.subdir=${hydra.job.num}",
        f"++logger.group={sweep.name}",
    ]
    code = run_task(sweep.command, args, debug_jobs, wrap=tolerant)
    if code:
        return code
    from blockbert.app.commands.report import run_report

    return run_report(str(sweep_dir), debug=debug_jobs)


def keep_job_numbers(sweep, grid: dict, stored: Path) -> dict:
    """A sweep resumed in its directory (--dir) keeps the values it was planned with, in their order, so that
    job K stays the job it was: pre-training jobs that finished since (finetune_each) are appended, not sorted in."""
    if not stored.is_file():
        return grid
    planned = (yaml.safe_load(stored.read_text()) or {}).get("grid", {})
    for key, values in sweep.parameters.items():
        if isinstance(values, dict) and "pretrained_jobs" in values and key in planned:
            grid[key] = planned[key] + [value for value in grid[key] if value not in planned[key]]
    return grid
