"""`blockbert sweep NAME`: a sweep file run as a Hydra multirun, then summarised (``blockbert report DIR`` summarises
it again: :mod:`blockbert.app.commands.report`)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import shlex
import shutil
import sys
from pathlib import Path

import yaml
from rich.table import Table

from blockbert.app.launch import StdoutClosed, run_task
from blockbert.app.run_config import forget_job
from blockbert.display import console, counted
from blockbert.errors import (
    ConfigError,
    is_user_error,
    not_an_override,
    one_line,
    one_line_errors,
    print_error,
    stdout_closed,
)
from blockbert.experiments.sweep_plan import (
    expand,
    job_overrides,
    jobs,
    load_sweep,
    merge_overrides,
    multirun_args,
    wandb_sweep,
)
from blockbert.formats.compose import compose, compose_multirun, config_loader, job_passes, override_key
from blockbert.formats.run_dir import RunDir, SweepDir, job_order, new_sweep_path
from blockbert.train.loggers import finish_wandb

log = logging.getLogger(__name__)


def tolerant(main, failures: list[Exception]):
    """A sweep job: a failure is recorded in RUN_DIR/error.txt (and, for a job run in this process, in ``failures``:
    the sweep's exit code, :func:`failed_jobs_code`) and does not stop the other jobs; a job already complete in this
    directory (same overrides) is skipped."""

    @functools.wraps(main)
    def job(cfg):
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
        run = RunDir(hydra_cfg.runtime.output_dir)
        overrides = list(hydra_cfg.overrides.task)
        if run.done_file.is_file() and json.loads(run.done_file.read_text()).get("overrides") == overrides:
            print(f"skipping job {hydra_cfg.job.num}: already complete in {run.path}")
            forget_job(run, whole=False)  # the config Hydra stored for this start (.hydra/resume-K): it never ran
            return None
        run.error_file.unlink(missing_ok=True)
        try:
            main(cfg)  # a stopped job stops the whole sweep (launch.MultirunStopped passes): --dir resumes it
        except Exception as err:  # noqa: BLE001 -- recorded, the sweep goes on
            if isinstance(err, BrokenPipeError) and stdout_closed():  # the sweep's reader left: no job's failure
                raise StdoutClosed from err
            run.record_error(err)
            print(f"job {hydra_cfg.job.num} failed: {one_line(err)}", file=sys.stderr)
            finish_wandb(exit_code=1)
            failures.append(err)
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
    ``config_dirs``: ``--config-dir``, composed with conf/ as the jobs will compose it. An extra override of a key the
    sweep file sweeps replaces its values, as it replaces a fixed one: a comma list with its values, a single value
    with that one."""
    sweep = load_sweep(name)
    given = {override_key(o) for o in overrides}
    resweeps = {override_key(key) for key in [*sweep.parameters, *sweeps_among(sweep.overrides)]} & given
    sweep.overrides, swept, texts = parse_overrides(merge_overrides(sweep.overrides, overrides), resweeps)
    replaced = {override_key(key) for key in swept}
    sweep.parameters = {**{k: v for k, v in sweep.parameters.items() if override_key(k) not in replaced}, **swept}
    grid = expand(sweep, num_heads(sweep.command, sweep.overrides, config_dirs), source_dir)
    swept_keys = {override_key(key) for key in grid}  # the file's fixed override of a key it sweeps: its values win
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
    summarise it; the exit code (a failed job's: :func:`failed_jobs_code`). ``config_dir``: Hydra's ``--config-dir``,
    handed to every job. ``directory`` (--dir) holding a sweep continues that sweep's grid (:func:`check_same_jobs`)."""
    stored = SweepDir(directory).spec() if directory else {}  # a sweep resumed in its directory: its sweep.yaml
    check_same_sweep(name, stored, directory)
    overrides, source = resumed_arguments(stored, overrides, source)
    source_dir = Path(source).expanduser().resolve() if source else None
    config_dirs = resumed_config_dirs(stored, config_dirs_of(config_dir), directory)
    flags = config_dir_flags(config_dirs)
    sweep, grid, texts = expanded_sweep(name, overrides, source_dir, config_dirs)
    grid = keep_job_numbers(sweep, grid, stored)
    check_same_jobs(sweep, grid, source_dir, stored, directory, name)
    if wandb_config:
        print(yaml.safe_dump(wandb_sweep(sweep, grid), sort_keys=False, width=1000), end="")
        return 0
    sweep_dir = Path(directory) if directory else new_sweep_path(sweep.name)
    sweep_dir = sweep_dir.expanduser().resolve()
    multirun = [*sweep.overrides, *multirun_args(grid, texts), f"hydra.sweep.dir={sweep_dir}"]
    per_job = job_overrides(grid, texts)
    # the multirun's config, then each job's, as Hydra composes them before it starts any job
    config = compose_multirun(sweep.command, [*multirun, f"hydra.job.name={sweep.command}"], config_dirs)
    check_jobs(sweep, per_job, config, config_dirs)
    if source_dir is not None:
        say_left_out(source_dir)
    if dry_run:
        print_plan(sweep, grid, per_job, config, config_dirs)
        return 0
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
    failures: list[Exception] = []
    with removed_if_unstarted(sweep_dir):
        write_spec(sweep_dir, sweep, grid, source_dir, config_dirs, overrides)
        wrap = functools.partial(tolerant, failures=failures)
        code = run_task(sweep.command, args, debug_jobs, wrap=wrap, resume=resume, command="sweep")
    if code:
        return code
    from blockbert.app.commands.report import report_sweep

    report_sweep(sweep_dir)  # its errors are the sweep's (one_line_errors above)
    return failed_jobs_code(sweep_dir, len(per_job), failures)


def say_left_out(source_dir: Path) -> None:
    """The jobs of the ``--from`` sweep that a sweep over its finished jobs leaves out (still to run, stopped,
    failed), in one line: before, it ran fewer jobs without a word."""
    from blockbert.app.commands.report import planned_jobs
    from blockbert.experiments.sweep_summary import read_jobs, unstarted_rows

    rows = read_jobs(source_dir, []) + unstarted_rows(SweepDir(source_dir), planned_jobs(source_dir) or [], [])
    rows = sorted(rows, key=lambda row: job_order(row["job"]))
    left = [f"job {row['job']} ({row['status']})" for row in rows if row["status"] != "finished"]
    if left:
        print(
            f"--from {source_dir}: {counted(len(left), 'job')} not finished, left out: {', '.join(left)}; once they "
            "finish (`blockbert sweep NAME --dir` resumes that sweep), this sweep run again with --dir adds them",
            file=sys.stderr,
        )


def failed_jobs_code(sweep_dir: Path, planned: int, failures: list[Exception]) -> int:
    """A sweep with a failed job ends as a multirun with one (``blockbert pretrain -m``, launch.run_task) ends: after
    its summary, a line saying how many jobs failed and where their error.txt are, and exit code 2 when the first
    failure is bad input, else 1 (so for jobs run in other processes, which leave only their error.txt); 0 when none
    failed."""
    failed = [job.error_file for job in SweepDir(sweep_dir).jobs() if job.error_file.is_file()]
    if not failed:
        return 0
    shown = ", ".join(map(str, failed[:3])) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
    print_error("sweep", f"{len(failed)} of {planned} jobs failed (their errors: {shown})")
    return 2 if failures and is_user_error(failures[0]) else 1


def write_spec(
    sweep_dir: Path, sweep, grid: dict, source_dir: Path | None, config_dirs: tuple[str, ...], arguments: list[str]
) -> None:
    """sweep.yaml: what the summary ranks by and what a resume (--dir) keeps: the jobs (the fixed overrides and the
    grid) and the command line's overrides (``arguments``), which ``--dir`` alone runs again."""
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
                "arguments": list(arguments),
                **({"from": str(source_dir)} if source_dir else {}),
                "config_dir": config_dirs[0] if config_dirs else None,
            },
            sort_keys=False,
        )
    )


def check_jobs(sweep, per_job: list[list[str]], multirun_config, config_dirs: tuple[str, ...]) -> None:
    """Every job's config composed and checked as its run will check it: Hydra's sweeper does so before it starts any
    job, and one bad value ends the whole sweep. Here, before the sweep's directory is made and in --dry-run too, it
    ends in one line that names the job. The jobs after the first are checked from ``multirun_config`` (the
    multirun's) where :func:`blockbert.formats.compose.job_passes` is sure, else composed whole: a refusal is always
    the whole composition's."""
    fixed = [o for o in sweep.overrides if not o.startswith("hydra.")]
    for number, job in enumerate(per_job):
        try:
            # job 0 whole: a multirun's composition skips a config group left to be given, which a run's refuses
            if number == 0 or not job_passes(multirun_config, sweep.command, fixed, job, config_dirs):
                compose(sweep.command, [*fixed, *job], config_dirs, finished=True)
        except Exception as err:
            if not is_user_error(err):
                raise
            named = f"job {number} ({' '.join(job)})" if job else f"job {number}"
            raise ConfigError(f"{named}: {one_line(err)}") from None


@contextlib.contextmanager
def removed_if_unstarted(sweep_dir: Path):
    """Makes a sweep's directory; when the sweep ends before any job started (a launcher's refusal), what was made for
    it goes again, as a refused run leaves no run directory. A directory that was there (a sweep resumed with --dir)
    is never removed."""
    made = [d for d in (sweep_dir, *sweep_dir.parents) if not d.exists()]  # deepest first
    sweep_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield
    finally:
        if made and SweepDir(sweep_dir).unstarted():
            shutil.rmtree(sweep_dir, ignore_errors=True)
            for parent in made[1:]:
                with contextlib.suppress(OSError):  # not empty: another sweep's
                    parent.rmdir()


def sweeps_among(overrides: list[str]) -> list[str]:
    """The keys of ``overrides`` that are sweeps (``seed=0,1``), told by Hydra's grammar without expanding them: a
    sweep the command line replaces need not be one the basic sweeper takes (``interval(0,1)``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    keys = []
    for line in overrides:
        with contextlib.suppress(HydraException):  # unreadable: parse_overrides words it, if it is kept
            (override,) = parser.parse_overrides([line])
            if override.is_sweep_override():
                keys.append(override.get_key_element())
    return keys


def parse_overrides(
    overrides: list[str], one_value: set[str] = frozenset()
) -> tuple[list[str], dict[str, list], dict[str, list[str]]]:
    """A sweep's overrides (its file's and the command line's) read by Hydra's own grammar: (the fixed ones, as
    written; {key: values} of the sweeps, expanded as Hydra's basic sweeper expands them: ``seed=0,1``,
    ``seed=range(0,3)``, ``model.heads=choice(10:2,11:1)``, ``model=glob(blockbert_*)``; {key: the same values as
    override text}). The sweeps join the grid, so that the plan, the job table and the summary know them; so does a
    single value of a key in ``one_value`` (a key the sweep file sweeps), as a sweep of that one value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Transformer
    from hydra.errors import HydraException

    parser = OverridesParser.create(config_loader=config_loader())
    fixed, values, texts = [], {}, {}
    for line in overrides:
        try:
            (override,) = parser.parse_overrides([line])
        except HydraException as err:
            raise ConfigError(not_an_override(err) if hasattr(err, "override") else one_line(err)) from None
        one = not override.is_sweep_override() and not override.is_delete()
        if one and override_key(override.input_line) in one_value:
            key = override.get_key_element()
            values[key], texts[key] = [_plain(override.value())], [override.get_value_string()]
            continue
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


def print_plan(sweep, grid: dict, per_job: list[list[str]], config, config_dirs: tuple = ()) -> None:
    """--dry-run: the jobs (a table of the swept values), the launcher's settings as they will be submitted
    (resolved; a cluster launcher only; ``config``: the multirun's) and each job's command line, the one that runs it
    alone. Runs nothing."""
    from blockbert.app.cluster import launcher_settings

    settings = launcher_settings(config)  # first: a launcher's refusal ends the preview as it would end the run
    planned = jobs(grid)
    # the title as its own line: a table's title wraps at the table's width
    console().print(
        f"sweep {sweep.name}: {counted(len(planned), sweep.command + ' job')} (fixed: "
        f"{' '.join(sweep.overrides) or 'none'})"
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
    if planned.keys() == grid.keys():  # the recorded key order: a sweep planned before the order changed continues
        grid = {key: grid[key] for key in planned}
    for key, values in sweep.parameters.items():
        if isinstance(values, dict) and "pretrained_jobs" in values and key in planned:
            grid[key] = planned[key] + [value for value in grid[key] if value not in planned[key]]
    return grid


# A sweep directory holds one grid, recorded in its sweep.yaml: --dir continues that grid and refuses another (our
# choice). Before, a changed grid gave a job number to another value, whose job then "resumed" the finished run in that
# number's directory: refused there, the finished run was marked failed and the new value never ran.


def check_same_sweep(name: str, stored: dict, directory: str | None) -> None:
    """``--dir`` holding another sweep (``stored``: its sweep.yaml) is refused before anything is planned."""
    recorded = stored.get("name")
    given = load_sweep(name).name if recorded else None
    if recorded and recorded != given:
        raise ConfigError(
            f"--dir {directory} holds sweep {recorded}, not {given}: continue {recorded} there (`blockbert sweep "
            f"{recorded} --dir {directory}`) or start {given} without --dir"
        )


def resumed_arguments(stored: dict, overrides: list[str], source: str | None) -> tuple[list[str], str | None]:
    """``--dir S`` alone continues the sweep in S as it was started: with no overrides given, it takes those of the
    command line that started it (sweep.yaml's ``arguments``), and without --from its recorded one, as it takes its
    --config-dir (:func:`resumed_config_dirs`). Given only Hydra's own settings (``hydra.launcher.timeout_min=...``,
    which no job records), it takes the recorded overrides with those. Other overrides given are taken whole, never
    merged with the recorded ones: the resume line a stopped sweep prints repeats them all."""
    if "arguments" in stored and all(o.startswith("hydra.") for o in overrides):
        given = {override_key(o) for o in overrides}
        overrides = [o for o in stored["arguments"] if override_key(o) not in given] + list(overrides)
    return overrides, source if source is not None else stored.get("from")


def check_same_jobs(sweep, grid: dict, source_dir: Path | None, stored: dict, directory: str | None, name: str) -> None:
    """``--dir`` continues the grid its sweep.yaml (``stored``) records: overrides that give other jobs (another
    grid, other fixed overrides or --from) are refused in one line, before anything is run or written, saying what
    differs and how to continue. Hydra's own settings (``hydra.*``: the launcher's partition, time limit) are no
    job's and may change; finetune_each's jobs of pre-training runs finished since are appended
    (:func:`keep_job_numbers`)."""
    if "grid" not in stored:  # a new directory, or a plain multirun's: its jobs would be taken for this sweep's
        held = SweepDir(directory).jobs() if directory and Path(directory).expanduser().is_dir() else []
        if held:
            raise ConfigError(
                f"--dir {directory} holds {counted(len(held), 'job')} of a multirun that is no blockbert sweep (no "
                "grid in a sweep.yaml): give a new or empty directory, or the directory of a sweep to continue"
            )
        return
    differences = job_differences(sweep, grid, source_dir, stored)
    if not differences:
        return
    if "arguments" in stored:
        again = f"continue it with `blockbert sweep {name} --dir {directory}` (the overrides its sweep.yaml records)"
    else:  # a sweep.yaml from before the record
        again = "continue it with the overrides it was started with (its sweep.yaml lists its overrides and grid)"
    raise ConfigError(
        f"--dir {directory} holds sweep {stored.get('name', sweep.name)} with other jobs ({'; '.join(differences)}): "
        f"{again} or start a new sweep without --dir"
    )


def job_differences(sweep, grid: dict, source_dir: Path | None, stored: dict) -> list[str]:
    """What the jobs planned differ in from those ``stored`` records, shortly: the fixed overrides, --from, and the
    first jobs changed, added or dropped."""
    differences = []
    recorded_fixed = [o for o in stored.get("overrides", []) if not o.startswith("hydra.")]
    fixed = [o for o in sweep.overrides if not o.startswith("hydra.")]
    if fixed != recorded_fixed:
        given, had = [o for o in fixed if o not in recorded_fixed], [o for o in recorded_fixed if o not in fixed]
        differences.append(
            f"overrides given {' '.join(given) or 'none'}, recorded {' '.join(had) or 'none'}"
            if given or had
            else "the same overrides in another order"
        )
    recorded_source = stored.get("from")
    if recorded_source is not None and str(source_dir) != recorded_source:
        differences.append(f"--from given {source_dir}, recorded {recorded_source}")
    return differences + changed_jobs(jobs(stored["grid"]), jobs(recorded_part(sweep, grid, stored["grid"])))


def recorded_part(sweep, grid: dict, recorded: dict) -> dict:
    """``grid`` as sweep.yaml holds it (its values through YAML), with finetune_each's pre-training jobs those
    recorded: the ones finished since come after them (:func:`keep_job_numbers`), as new jobs."""
    grid = yaml.safe_load(yaml.safe_dump(grid, sort_keys=False))  # in the jobs' key order (safe_dump sorts keys)
    for key, values in sweep.parameters.items():
        if isinstance(values, dict) and "pretrained_jobs" in values and key in recorded:
            grid[key] = recorded[key]
    return grid


def changed_jobs(recorded: list[dict], planned: list[dict], shown: int = 3) -> list[str]:
    """The first ``shown`` jobs that differ, by number (each job's swept values), and how many more."""

    def values(job: dict) -> str:
        return " ".join(f"{key}={value}" for key, value in job.items())

    changes = [
        f"job {number} would run {values(new)}, not {values(old)}"
        for number, (old, new) in enumerate(zip(recorded, planned))
        if old != new
    ]
    changes += [
        f"job {number} ({values(new)}) would be added" for number, new in enumerate(planned) if number >= len(recorded)
    ]
    changes += [
        f"job {number} ({values(old)}) would be dropped"
        for number, old in enumerate(recorded)
        if number >= len(planned)
    ]
    return changes[:shown] + ([f"and {len(changes) - shown} more"] if len(changes) > shown else [])
