"""The one place where the CLI's argument list is handed to Hydra's own runner.

``hydra.main`` reads ``sys.argv``; the CLI instead passes the arguments that follow the command
(``blockbert pretrain model=tiny -m ...``) to the same two calls ``hydra.main`` makes: Hydra's
argument parser and ``hydra._internal.utils._run_hydra``. Multirun, launchers, sweepers, ``--cfg``,
``--info`` and output directories therefore behave as in any Hydra app. ``_run_hydra`` is internal:
hydra-core is pinned to 1.3.x in pyproject.toml and ``tests/test_cli.py`` covers this hand-over.

Errors: Hydra normally prints its own (multi-line) reports. Here ``HYDRA_FULL_ERROR=1`` lets them
propagate, and :func:`run_task` prints one line naming the bad value, unless ``debug`` is set.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback

ENTRY_POINTS = {
    "pretrain": "blockbert.tasks.pretrain",
    "finetune": "blockbert.tasks.finetune",
    "profile": "blockbert.tasks.profile",
    "benchmark": "blockbert.tasks.benchmark",
}


def config_dir() -> Path:
    """``conf/``: inside the installed package (wheel) or at the root of a source checkout."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "pretrain.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"blockbert's conf/ directory was not found next to {package}")


def run_task(task: str, argv: list[str], debug: bool = False, wrap=None) -> int:
    """Run ``task``'s entry point under Hydra with ``argv`` (overrides and Hydra flags); exit code.

    ``wrap`` decorates the entry point (a sweep's jobs record failures instead of raising)."""
    from hydra import version
    from hydra._internal.utils import _run_hydra, get_args_parser

    version.setbase("1.3")
    task_function = importlib.import_module(ENTRY_POINTS[task]).main
    if wrap is not None:
        task_function = wrap(task_function)
    job_errors: list[Exception] = []
    if not debug:
        task_function = _keep_errors(task_function, job_errors)
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach the handler below instead of Hydra's printer
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        _run_hydra(args=args, args_parser=parser, task_function=task_function,
                   config_path=str(config_dir()), config_name=task)
    except Exception as err:  # noqa: BLE001 -- every failure ends in one readable line
        return report_error(task, err, debug)
    if job_errors:
        return report_error(task, job_errors[0], debug)
    return 0


def _keep_errors(task_function, errors: list):
    """Jobs run in this process keep their exception here instead of raising it through Hydra, which
    would print its own "Error executing job" line first; jobs in other processes (submitit) raise."""
    main_pid = os.getpid()

    @functools.wraps(task_function)
    def job(cfg):
        try:
            return task_function(cfg)
        except Exception as err:  # noqa: BLE001 -- reported by run_task
            if os.getpid() != main_pid:
                raise
            errors.append(err)
            return None

    return job


def report_error(command: str, err: Exception, debug: bool) -> int:
    """Print ``err`` as one line (re-raise it with ``debug``); the exit code: 2 for bad input, else 1."""
    if debug:
        raise err
    print(f"blockbert {command}: error: {one_line(err)}", file=sys.stderr)
    print("(run again with --debug for the full traceback)", file=sys.stderr)
    return 2 if is_user_error(err) else 1


def is_user_error(err: Exception) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from blockbert.config import ConfigError

    return isinstance(err, (ConfigError, FileNotFoundError, HydraException, OmegaConfBaseException))


def one_line(err: Exception) -> str:
    """Hydra's and OmegaConf's messages span lines; join them, listing available options inline."""
    lines = []
    while err is not None:  # Hydra often wraps the informative error as __cause__
        lines += [line.strip() for line in str(err).splitlines() if line.strip() and line.strip() not in lines]
        if err.__cause__ is None:
            break
        err = err.__cause__
    if not lines:
        return type(err).__name__
    if "Config search path:" in lines:  # Hydra's listing of where it looked: not the error
        lines = lines[:lines.index("Config search path:")]
    for i, line in enumerate(lines):
        if line.startswith("Available options in"):
            return "; ".join(lines[:i]) + f"; {line[:-1] if line.endswith(':') else line}: " + ", ".join(lines[i + 1:])
    text = "; ".join(lines)
    return text if isinstance(err, (ValueError, OSError, LookupError)) else f"{type(err).__name__}: {text}"


class PrintSweepDir(Callback):
    """After a multirun, print the sweep directory as the command's last line."""

    def __init__(self) -> None:
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config, **kwargs) -> None:
        self.sweep_dir = Path(config.hydra.sweep.dir).resolve()  # resolvable now, not after the jobs

    def on_multirun_end(self, config, **kwargs) -> None:
        if self.sweep_dir is not None:
            print(self.sweep_dir)
