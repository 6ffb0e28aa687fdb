"""`blockbert sweep NAME` and `blockbert report DIR`: a sweep file run as a Hydra multirun, then summarised."""

from __future__ import annotations

import functools
import json
import logging
import shlex
import sys
import traceback
from datetime import datetime
from pathlib import Path

import yaml
from rich.table import Table

from blockbert.app.launch import run_task
from blockbert.display import console
from blockbert.errors import ConfigError, one_line, one_line_errors
from blockbert.experiments.sweep_plan import (
    expand,
    job_overrides,
    jobs,
    load_sweep,
    merge_overrides,
    multirun_args,
    wandb_sweep,
)
from blockbert.formats.compose import compose, compose_multirun, config_loader, override_key
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
            main(cfg)  # a stopped job stops the whole sweep (launch.MultirunStopped passes): --dir resumes it
        except Exception as err:  # noqa: BLE001 -- recorded, the sweep goes on
            run.error_file.write_text(f"{type(err).__name__}: {one_line(err)}\n\n{traceback.format_exc()}")
            print(f"job {hydra_cfg.job.num} failed: {one_line(err)}", file=sys.stderr)
            finish_wandb(exit_code=1)
            return None
        run.done_file.write_text(json.dumps({"overrides": overrides}) + "\n")
        return None

    return job


def num_heads(command: str, overrides: list[str], config_dirs: tuple[str, ...] = ()) -> int:
    """The model's head count in the sweep's command as its overrides compose it (the head-assignment grid)."""
    return int(compose(command, [o for o in overrides if not o.startswith("hydra.")], config_dirs).model.num_heads)


def config_dirs_of(config_dir: str | None) -> tuple[str, ...]:
    """``--config-dir``'s directory, absolute, as a tuple for :func:`compose` (empty without one)."""
    if config_dir is None:
        return ()
    path = Path(config_dir).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"--config-dir {config_dir}: no such directory (give a directory of config groups, as conf/)")
    return (str(path),)


def config_dir_flags(config_dirs: tuple[str, ...]) -> list[str]:
    return [arg for directory in config_dirs for arg in ("--config-dir", directory)]


def expanded_sweep(name: str, overrides: list[str], source_dir: Path | None = None, config_dirs: tuple[str, ...] = ()):
    """(the sweep with the extra overrides merged, its grid, the grid's values as typed): the jobs a sweep runs;
    ``config_dirs``: ``--config-dir``, composed with conf/ as the jobs will compose it."""
    sweep = load_sweep(name)
    sweep.overrides, swept, texts = parse_overrides(merge_overrides(sweep.overrides, overrides))
    replaced = {override_key(key) for key in swept}
    sweep.parameters = {**{k: v for k, v in sweep.parameters.items() if override_key(k) not in replaced}, **swept}
    grid = expand(sweep, num_heads(sweep.command, sweep.overrides, config_dirs), source_dir)
    swept_keys = {override_key(key) for key in grid}  # a fixed override of a swept key: the sweep's values win
    sweep.overrides = [o for o in sweep.overrides if override_key(o) not in swept_keys]
    return sweep, grid, texts


@one_line_errors("sweep")
def run_sweep(
    name: str,
    overrides: list[str],
    dry_run: bool = False,
    directory: str | None = None,
    wandb_config: bool = False,
    source: str | None = None,
    debug_jobs: bool = False,
    config_dir: str | None = None,
) -> int:
    """Plan the sweep, run its jobs as a multirun (``debug_jobs``: a job's error raises with its traceback), and
    summarise it; the exit code. ``config_dir``: Hydra's ``--config-dir``, handed to every job."""
    source_dir = Path(source).expanduser().resolve() if source else None
    config_dirs = config_dirs_of(config_dir)
    stored = SweepDir(directory).spec() if directory else {}  # a sweep resumed in its directory: its sweep.yaml
    config_dirs = resumed_config_dirs(stored, config_dirs, directory)
    flags = config_dir_flags(config_dirs)
    sweep, grid, texts = expanded_sweep(name, overrides, source_dir, config_dirs)
    grid = keep_job_numbers(sweep, grid, stored)
    if wandb_config:
        print(yaml.safe_dump(wandb_sweep(sweep, grid), sort_keys=False, width=1000), end="")
        return 0
    sweep_dir = Path(directory or f"multirun/sweeps/{sweep.name}/{datetime.now():%Y-%m-%d_%H-%M-%S}")
    sweep_dir = sweep_dir.expanduser().resolve()
    multirun = [*sweep.overrides, *multirun_args(grid, texts), f"hydra.sweep.dir={sweep_dir}"]
    if dry_run:
        print_plan(sweep, grid, job_overrides(grid, texts), multirun, config_dirs)
        return 0
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
                "config_dir": config_dirs[0] if config_dirs else None,
            },
            sort_keys=False,
        )
    )
    args = [
        *flags,
        "-m",
        *multirun,
        "hydra.sweep.subdir=${hydra.job.num}",
        f"++logger.group={sweep.name}",
        "~hydra.callbacks.print_sweep_dir",  # the summary ends with it
    ]
    again = shlex.join(
        ["blockbert", "sweep", name, *overrides, *(["--from", str(source_dir)] if source_dir else []), *flags]
    )
    resume = f"run {again} --dir {sweep_dir} to resume the sweep (complete jobs are skipped)"
    code = run_task(sweep.command, args, debug_jobs, wrap=tolerant, resume=resume, command="sweep")
    if code:
        return code
    from blockbert.app.commands.report import run_report

    return run_report(str(sweep_dir), debug=debug_jobs)


def parse_overrides(overrides: list[str]) -> tuple[list[str], dict[str, list], dict[str, list[str]]]:
    """A sweep's overrides (its file's and the command line's) read by Hydra's own grammar: (the fixed ones, as
    written; {key: values} of the sweeps, expanded as Hydra's basic sweeper expands them: ``seed=0,1``,
    ``seed=range(0,3)``, ``model.heads=choice(10:2,11:1)``, ``model=glob(blockbert_*)``; {key: the same values as
    override text}). The sweeps join the grid, so that the plan, the job table and the summary know them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Transformer
    from hydra.errors import HydraException

    parser = OverridesParser.create(config_loader=config_loader())
    fixed, values, texts = [], {}, {}
    for line in overrides:
        try:
            (override,) = parser.parse_overrides([line])
        except HydraException as err:
            raise ConfigError(f"override {line!r} is not valid: {' '.join(str(err).split())}") from None
        if not override.is_sweep_override() or override.is_hydra_override():
            fixed.append(override.input_line)
            continue
        if not override.is_discrete_sweep():
            raise ConfigError(
                f"{override.input_line}: blockbert sweep runs Hydra's basic sweeper, which takes comma lists, "
                "range(...), choice(...) and glob(...), not interval(...)"
            )
        key = override.get_key_element()
        try:
            elements = list(override.sweep_iterator())  # once: a shuffle(...) draws its order once
        except HydraException as err:
            raise ConfigError(f"{override.input_line}: {' '.join(str(err).split())}") from None
        if not elements:
            raise ConfigError(f"{override.input_line}: the sweep has no values")
        values[key] = [_plain(element) for element in elements]
        texts[key] = [Transformer.str(element) for element in elements]
    return fixed, values, texts


def _plain(element):
    """A parsed override value as plain data (Hydra's quoted strings as strings), for the plan and sweep.yaml."""
    from hydra.core.override_parser.types import QuotedString

    if isinstance(element, QuotedString):
        return element.text
    if isinstance(element, list):
        return [_plain(e) for e in element]
    if isinstance(element, dict):
        return {_plain(k): _plain(v) for k, v in element.items()}
    return element


def print_plan(sweep, grid: dict, per_job: list[list[str]], multirun: list[str], config_dirs: tuple = ()) -> None:
    """--dry-run: the jobs (a table of the swept values), the launcher's settings as they will be submitted
    (resolved; a cluster launcher only) and each job's command line, the one that runs it alone. Runs nothing."""
    from blockbert.app.cluster import launcher_settings

    config = compose_multirun(sweep.command, [*multirun, f"hydra.job.name={sweep.command}"], config_dirs)
    settings = launcher_settings(config)  # first: a launcher's refusal ends the preview as it would end the run
    planned = jobs(grid)
    # the title as its own line: a table's title wraps at the table's width
    console().print(
        f"sweep {sweep.name}: {len(planned)} {sweep.command} jobs (fixed: {' '.join(sweep.overrides) or 'none'})"
    )
    table = Table()
    table.add_column("job")
    for key in grid:
        table.add_column(key)
    for i, values in enumerate(planned):
        table.add_row(str(i), *(str(v) for v in values.values()))
    console().print(table)
    multirun_flag = []
    if settings is not None:
        # a launcher other than Hydra's basic one runs multiruns only: one job is a one-job multirun
        multirun_flag = ["-m"]
        launcher = config.hydra.launcher._target_.rsplit(".", 1)[-1]
        print(f"\nlauncher: {launcher} (hydra.launcher, resolved: every job is submitted with these)")
        print(yaml.safe_dump(settings, sort_keys=False, width=1000, default_flow_style=False), end="")
    print("\njob commands (each runs that job alone):")
    width = len(str(len(per_job) - 1))
    for i, overrides in enumerate(per_job):
        line = shlex.join(
            ["blockbert", sweep.command, *config_dir_flags(config_dirs), *multirun_flag, *sweep.overrides, *overrides]
        )
        print(f"{i:>{width}}: {line}")


def resumed_config_dirs(stored: dict, config_dirs: tuple[str, ...], directory: str | None) -> tuple[str, ...]:
    """A sweep resumed in its directory composes with the ``--config-dir`` it was started with, or without one as it
    was (its sweep.yaml records which): taken when none is given, refused when another is, unless the recorded one
    no longer exists (moved: the given one takes its place). A sweep.yaml from before the record decides nothing;
    ``stored``: the sweep.yaml in ``directory`` ({} for a new sweep)."""
    if "config_dir" not in stored:
        return config_dirs
    recorded = stored["config_dir"]
    kept = () if recorded is None else (str(Path(recorded).expanduser().resolve()),)
    moved = bool(kept) and not Path(kept[0]).is_dir()
    if config_dirs and config_dirs != kept and not moved:
        started = f"with --config-dir {recorded}" if kept else "without --config-dir"
        raise ConfigError(
            f"--config-dir {config_dirs[0]}: the sweep in {directory} was run {started}; resume it as it was "
            "(its remaining jobs would compose differently)"
        )
    if config_dirs:
        return config_dirs
    if moved:
        raise ConfigError(
            f"the sweep in {directory} was run with --config-dir {recorded}, which no longer exists: give its new "
            "place with --config-dir"
        )
    return kept


def keep_job_numbers(sweep, grid: dict, stored: dict) -> dict:
    """A sweep resumed in its directory (--dir) keeps the values it was planned with (``stored``: its sweep.yaml), in
    their order, so that job K stays the job it was: pre-training jobs that finished since (finetune_each) are
    appended, not sorted in."""
    planned = stored.get("grid", {})
    for key, values in sweep.parameters.items():
        if isinstance(values, dict) and "pretrained_jobs" in values and key in planned:
            grid[key] = planned[key] + [value for value in grid[key] if value not in planned[key]]
    return grid
