"""The one place where the CLI's argument list is handed to Hydra's own runner.

``hydra.main`` reads ``sys.argv``; the CLI instead passes the arguments that follow the command
(``blockbert pretrain model=tiny -m ...``) to the same two calls ``hydra.main`` makes: Hydra's
argument parser and ``hydra._internal.utils._run_hydra``. Multirun, launchers, sweepers, ``--cfg``,
``--info`` and output directories therefore behave as in any Hydra app. ``_run_hydra`` is internal:
hydra-core is pinned to 1.3.x in pyproject.toml and ``tests/test_cli.py`` covers this hand-over.

Errors: Hydra normally prints its own (multi-line) reports. Here ``HYDRA_FULL_ERROR=1`` lets them
propagate, and :func:`run_task` prints one line naming the bad value, unless ``debug`` is set.

DDP ranks: Lightning starts the ranks > 0 of a ``trainer=ddp`` job by re-running this process's command
line, which for a multirun (``-m``) would re-run the whole sweep. Each job therefore leaves its task, its
overrides and its directory in ``BLOCKBERT_DDP_JOB`` for the ranks it starts, and ``cli.py`` hands such a
rank to :func:`run_ddp_rank`, which runs that one job in that directory; between two jobs of a multirun
the process-group state Lightning leaves behind is cleared (:func:`_as_job`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import json
import os
import shutil
import signal
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from blockbert.app import ENTRY_POINTS, cluster
from blockbert.errors import ConfigError, Terminated, quiet_exit_for_closed_stdout, report_error, stdout_closed
from blockbert.formats.compose import config_loader, finishing_loader
from blockbert.formats.run_dir import RunDir, SweepDir
from blockbert.paths import config_dir
from blockbert.train.cluster import set_process_rank

RANK_VARIABLES = ("RANK", "SLURM_PROCID", "SUBMITIT_LOCAL_GLOBALID", "LOCAL_RANK")  # the first one set is the rank


_OUTPUT_SUBDIRS: dict[str, str | None] = {}  # the job's, decided once: read again, it must not move on to resume-K+1


def hydra_output_subdir(run_dir: str) -> str | None:
    """Where Hydra stores a job's config (:meth:`RunDir.next_config_subdir`: a resume in the same directory keeps the
    original config and gets ``.hydra/resume-K`` for its own), the same each time the job reads it (forgotten when
    the job ends: :func:`_as_job`). Ranks other than 0 of a job (SLURM or submitit tasks) store nothing."""
    if run_dir not in _OUTPUT_SUBDIRS:
        rank = next((os.environ[name] for name in RANK_VARIABLES if os.environ.get(name, "").isdigit()), "0")
        _OUTPUT_SUBDIRS[run_dir] = RunDir(run_dir).next_config_subdir() if int(rank) == 0 else None
    return _OUTPUT_SUBDIRS[run_dir]


OmegaConf.register_new_resolver("blockbert_output_subdir", hydra_output_subdir, replace=True)


def complete_overrides(command: str, params: dict, incomplete: str) -> list[str]:
    """Shell completion of the override being typed (``incomplete``) after the ones typed before it
    (``params["overrides"]``), from the command's config: groups, their options and config keys, by Hydra's
    own completion (an internal class: hydra-core is pinned to 1.3.x). A sweep completes its command's keys, a plan its
    ``--command``'s."""
    from hydra.plugins.completion_plugin import DefaultCompletionPlugin

    task = params.get("command") or "pretrain" if command == "plan" else command
    if command == "sweep":
        from blockbert.experiments.sweep_plan import load_sweep

        try:
            task = load_sweep(params.get("name") or "").command
        except Exception:  # noqa: BLE001 -- no sweep named yet: complete pre-training's keys
            task = "pretrain"
    words, typed = _rejoin_at_equals([*(params.get("overrides") or ()), incomplete])
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # argparse's usage text, for a flag missing its value
            matches = DefaultCompletionPlugin(config_loader())._query(task, " ".join(words))
    except (Exception, SystemExit):  # noqa: BLE001 -- e.g. a flag still missing its value: nothing to offer
        return []
    cut = len(typed) - len(incomplete)  # bash completes only what follows its last '='
    return [match[cut:] for match in matches if match.startswith(typed)] if cut else matches


def _rejoin_at_equals(words: list[str]) -> tuple[list[str], str]:
    """Bash splits words at '=' (COMP_WORDBREAKS): `model=ti` arrives as `model`, `=`, `ti`, and `model=` as
    `model` and an empty word (click drops a trailing `=`). The words joined again, and the last of them: the
    whole override being typed. A bare word (not a flag or a flag's value) is never an override by itself."""
    joined: list[str] = []
    glue = False
    for word in words:
        if word == "=" and joined:
            joined[-1] += "="
            glue = True
        elif glue:
            joined[-1] += word
            glue = False
        else:
            joined.append(word)
    if len(joined) > 1 and joined[-1] == "" and _bare(joined[:-1]):
        joined = [*joined[:-2], joined[-2] + "="]
    return joined, joined[-1] if joined else ""


HYDRA_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--info", "-i", "--config-path", "-cp", "--config-name", "-cn"}
HYDRA_VALUE_FLAGS |= {"--config-dir", "-cd", "--experimental-rerun"}


def _bare(words: list[str]) -> bool:
    last, before = words[-1], words[-2] if len(words) > 1 else ""
    return "=" not in last and not last.startswith("-") and before not in HYDRA_VALUE_FLAGS


DIRECTORY_KEYS = ("hydra.run.dir", "hydra.sweep.dir")  # where Hydra makes a run's or a multirun's directory


def _refuse_empty_directory(argv: list[str]) -> None:
    """``hydra.run.dir=`` with no value (an unset shell variable) made the working directory the run's: its files
    went wherever the command was typed."""
    for key, _, value in (arg.partition("=") for arg in argv):
        if key in DIRECTORY_KEYS and not value.strip("'\" "):
            raise ConfigError(f"{key} is empty: give a directory (an unset shell variable?)")


def _named_directory(err: Exception, argv: list[str]) -> Exception:
    """An error making the run or sweep directory the command line gave (``hydra.run.dir=/sys/x``: Hydra makes it) as
    one line naming that setting; any other error as it is."""
    if not isinstance(err, OSError) or not err.filename:
        return err
    failed = Path(err.filename).absolute()
    for key, _, value in (arg.partition("=") for arg in argv):
        if key in DIRECTORY_KEYS and value:
            wanted = Path(value.strip("'\"")).expanduser().absolute()
            if failed == wanted or failed in wanted.parents:
                return ConfigError(f"{key}={value}: the directory cannot be made ({err.filename}: {err.strerror})")
    return err


def _refuse_argument(command: str, message: str):
    """argparse's error (Hydra's parser of flags), e.g. a flag without its value, in one line (the command line's
    words that are no option were refused before: cli.py)."""
    raise ConfigError(f"{message}; the options are listed by `blockbert {command} --help`")


def run_task(
    task: str, argv: list[str], debug: bool = False, wrap=None, resume: str | None = None, command: str | None = None
) -> int:
    """Run ``task``'s entry point under Hydra with ``argv`` (overrides and Hydra flags); exit code.

    ``wrap`` decorates the entry point (a sweep's jobs record failures instead of raising). A job of a multirun
    stopped by SIGTERM or Ctrl-C stops the multirun: the remaining jobs do not start, and the command says how to
    resume it all, ``resume`` (a sweep's command) or the same command in the same sweep directory. Errors and stops
    are reported as ``command``'s (default: ``task``'s; a sweep's are the sweep's)."""
    from hydra import version
    from hydra._internal.utils import _run_hydra, get_args_parser

    version.setbase("1.3")
    task_function = _as_job(task, debug, _entry_point(task))
    if wrap is not None:
        task_function = wrap(task_function)
    job_errors: list[tuple[str, Exception]] = []
    if not debug:
        task_function = _keep_errors(task_function, job_errors)
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach the handler below instead of Hydra's printer
    parser = get_args_parser()
    parser.error = functools.partial(_refuse_argument, task)  # argparse would print its usage, then exit 2
    try:
        args = parser.parse_args(argv)
        _refuse_empty_directory(argv)
    except ConfigError as err:
        return report_error(command or task, err, debug)
    try:
        with _finished_configs():
            _run_hydra(
                args=args,
                args_parser=parser,
                task_function=task_function,
                config_path=str(config_dir()),
                config_name=task,
            )
    except StdoutClosed:  # a reader that closed stdout (`blockbert benchmark | head`): the command ends as `cat` ends
        return quiet_exit_for_closed_stdout()
    except Exception as err:  # noqa: BLE001 -- every failure ends in one readable line
        _remove_unstarted()
        return report_error(command or task, _named_directory(err, argv), debug)
    except MultirunStopped as stop:
        stopped = stop.interrupted
        _name_job_directory(stopped, stop.sweep_dir)
        if stopped.resumable:
            stopped.resume = resume or (
                f"run the same command with hydra.sweep.dir={stop.sweep_dir} to resume the multirun (each job "
                "resumes in its directory)"
            )
        stopped.run_dir = stop.sweep_dir
        return report_error(command or task, stopped, debug)
    except cluster.LauncherRefusal as refusal:  # a cluster=... command that would not start as written
        return report_error(command or task, refusal.error, debug)
    finally:
        _OUTPUT_SUBDIRS.clear()
        _NEW_SWEEP_DIRS.clear()
        if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:  # set by a stopped run until its line was printed
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if job_errors:  # a multirun's: its first failed job's, named (report DIR lists each)
        label, err = job_errors[0]
        more = f", the first of {len(job_errors)} failed jobs" if len(job_errors) > 1 else ""
        return report_error(command or task, err, debug, where=f"{label}{more}")
    return 0


@contextlib.contextmanager
def _finished_configs():
    """Hydra's runner composing with :func:`blockbert.formats.compose.finishing_loader`'s loader: every config it
    composes (``--cfg job``, a run, each job of a multirun) is typed, checked and complete before a job starts."""
    import hydra._internal.hydra as runner

    loader = runner.ConfigLoaderImpl
    runner.ConfigLoaderImpl = finishing_loader()
    try:
        yield
    finally:
        runner.ConfigLoaderImpl = loader


def _entry_point(task: str):
    """``task``'s ``main``, imported when the job runs: Hydra composes (``--cfg job``, ``--help``, a config error)
    without importing torch and Lightning."""

    def main(cfg):
        return importlib.import_module(ENTRY_POINTS[task]).main(cfg)

    main.__name__ = main.__qualname__ = "main"
    main.__module__ = ENTRY_POINTS[task]  # Hydra names the job (runs/<task>/...) after the task function's module
    return main


def _name_job_directory(stopped, sweep_dir: str) -> None:
    """A stopped job's line says where its state is saved relative to its own directory (``stopped.saved``:
    ``checkpoints/...``), but the line printed last names the multirun's directory (where a resume is run): the job's
    directory is named in the line."""
    job_dir = Path(stopped.run_dir).resolve()
    if stopped.saved and job_dir != Path(sweep_dir).resolve():
        stopped.state = f"{stopped.state} (in the job's directory, {job_dir})"


class StdoutClosed(BaseException):
    """The reader of the command's stdout closed it (`| head`): no job's failure. A BaseException, which Hydra lets
    through (it would print "Error executing job" first, then run the next job)."""


class MultirunStopped(BaseException):
    """A job of a multirun run in this process was stopped (SIGTERM, Ctrl-C): the remaining jobs must not start.
    A BaseException, which Hydra's job runner lets through instead of recording it as one failed job and going on."""

    def __init__(self, interrupted, sweep_dir: str):
        super().__init__(str(interrupted))
        self.interrupted, self.sweep_dir = interrupted, sweep_dir


DDP_JOB_ENV = "BLOCKBERT_DDP_JOB"
# what Lightning's process launcher leaves in the environment of the process that started the ranks
DIST_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", DDP_JOB_ENV)


def _as_job(task: str, debug: bool, task_function):
    """The entry point as one Hydra job: it tells the DDP ranks it starts which job to run (module
    docstring), and afterwards restores the environment and ends the process group, so that the next job
    of a multirun in this process starts its own ranks. Inside a submitit job a run stopped by SIGTERM
    exits (code 143) instead of returning a failed result: submitit would take that result for the job's
    end, while SLURM has requeued the job to resume it."""

    @functools.wraps(task_function)
    def job(cfg):
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        saved = {key: os.environ.get(key) for key in DIST_ENV}
        hydra_cfg = HydraConfig.get()
        os.environ[DDP_JOB_ENV] = json.dumps(
            {
                "task": task,
                "debug": debug,
                "run_dir": hydra_cfg.runtime.output_dir,
                "overrides": list(hydra_cfg.overrides.task),
            }
        )
        set_process_rank()
        try:
            return task_function(cfg)
        except (KeyboardInterrupt, Terminated) as err:  # before the job's own handling (training: RunInterrupted)
            from blockbert.errors import STOP_EXIT_CODES, RunInterrupted, stop_name

            if hydra_cfg.mode != RunMode.MULTIRUN:
                raise
            trains = task in ("pretrain", "finetune")  # a stopped training job resumes; a measurement is run again
            stopped = RunInterrupted(
                f"stopped by {stop_name(err)} in job {hydra_cfg.job.num}" + (" before it trained" if trains else ""),
                "" if trains else "a rerun runs every job again",
                hydra_cfg.sweep.dir,
                STOP_EXIT_CODES[stop_name(err)],
                resumable=trains,
            )
            raise MultirunStopped(stopped, hydra_cfg.sweep.dir) from err
        except Exception as err:
            from blockbert.errors import RunInterrupted, print_interrupted

            if isinstance(err, RunInterrupted) and os.environ.get("SUBMITIT_EXECUTOR"):
                print_interrupted(task, err)
                raise SystemExit(err.exit_code) from err
            if isinstance(err, RunInterrupted) and hydra_cfg.mode == RunMode.MULTIRUN:
                raise MultirunStopped(err, hydra_cfg.sweep.dir) from err
            raise
        finally:
            _OUTPUT_SUBDIRS.pop(hydra_cfg.runtime.output_dir, None)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if "torch" in sys.modules:
                import torch.distributed as dist

                if dist.is_available() and dist.is_initialized():
                    dist.destroy_process_group()

    return job


def ddp_rank_argv() -> tuple[str, list[str], bool] | None:
    """(task, Hydra arguments, debug) when this process is a DDP rank that Lightning started for a blockbert
    job (``LOCAL_RANK`` and ``BLOCKBERT_DDP_JOB`` set), else None. The arguments are the job's own overrides
    (a multirun's values for this job; not ``cluster``, whose launcher already ran), its directory, and
    what Lightning asks of its ranks: no ``.hydra`` of their own, a job name of their own."""
    spec = os.environ.get(DDP_JOB_ENV)
    if not spec or "LOCAL_RANK" not in os.environ:
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    job = json.loads(spec)
    overrides = [
        o.input_line for o in OverridesParser.create().parse_overrides(job["overrides"]) if o.key_or_group != "cluster"
    ]
    name = next(
        (arg for arg in reversed(sys.argv) if arg.startswith("hydra.job.name=")),
        f"hydra.job.name=train_ddp_process_{os.environ['LOCAL_RANK']}",
    )
    run_dir = job["run_dir"].replace("\\", "\\\\").replace('"', '\\"')
    return job["task"], [*overrides, f'hydra.run.dir="{run_dir}"', "hydra.output_subdir=null", name], job["debug"]


def run_ddp_rank() -> int | None:
    """Run the job of a DDP rank started by Lightning (:func:`ddp_rank_argv`); None if this is not one."""
    rank = ddp_rank_argv()
    if rank is None:
        return None
    task, argv, debug = rank
    os.environ.pop(DDP_JOB_ENV)
    return run_task(task, argv, debug)


def _keep_errors(task_function, errors: list):
    """Jobs run in this process keep their exception here instead of raising it through Hydra, which
    would print its own "Error executing job" line first; jobs in other processes (submitit) raise. A multirun's job
    that fails before it has a metrics.json (a missing data file) records the error in its directory's error.txt,
    where `blockbert report` finds it; one with a metrics.json has its record there (a run that fails while training
    writes its error; a refused resume leaves the run's own, a finished run's say). (A stopped job of a multirun
    raises :class:`MultirunStopped`, which passes.)"""
    main_pid = os.getpid()

    @functools.wraps(task_function)
    def job(cfg):
        run = _multirun_job_dir()
        if run is not None:
            run.error_file.unlink(missing_ok=True)  # an earlier try's, in a sweep directory used again
        try:
            return task_function(cfg)
        except Exception as err:  # noqa: BLE001 -- reported by run_task
            if isinstance(err, BrokenPipeError) and stdout_closed():  # no job's failure: the command ends quietly
                raise StdoutClosed from err
            if run is not None and run.path.is_dir() and not run.metrics_file.is_file():
                run.record_error(err)
            if os.getpid() != main_pid:
                raise
            errors.append((_job_label(run), err))
            return None

    return job


def _job_label(run: RunDir | None) -> str:
    """How a failed job of a multirun is named in the command's last line (nothing for a single run)."""
    if run is None:
        return ""
    from hydra.core.hydra_config import HydraConfig

    return f"job {HydraConfig.get().job.num} ({run.path})"


def _multirun_job_dir() -> RunDir | None:
    """The directory of the multirun job running now; None for a single run (refused, it leaves nothing)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra = HydraConfig.get()
    return RunDir(hydra.runtime.output_dir) if hydra.mode == RunMode.MULTIRUN else None


_NEW_SWEEP_DIRS: list[Path] = []  # the topmost directory each multirun of this process creates


def _remove_unstarted() -> None:
    """A multirun refused before its first job (a bad value in one job's config) leaves no trace: the directories it
    made that hold nothing a job wrote (SweepDir.unstarted) are removed."""
    for top in _NEW_SWEEP_DIRS:
        if SweepDir(top).unstarted():
            shutil.rmtree(top, ignore_errors=True)


class PrintSweepDir(Callback):
    """After a multirun, print the sweep directory as the command's last line."""

    def __init__(self) -> None:
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config, **kwargs) -> None:
        self.sweep_dir = Path(config.hydra.sweep.dir).resolve()  # resolvable now, not after the jobs
        top = self.sweep_dir
        while not top.parent.exists():
            top = top.parent
        if not top.exists():  # a directory this multirun makes: gone again if no job starts (_remove_unstarted)
            _NEW_SWEEP_DIRS.append(top)

    def on_multirun_end(self, config, **kwargs) -> None:
        if self.sweep_dir is not None:
            print(self.sweep_dir)
