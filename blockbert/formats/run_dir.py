"""The layout of a run directory, in one place: every module that reads or writes a run's files asks :class:`RunDir`
(a sweep's directory: :class:`SweepDir`).

A run directory (``runs/<command>/<date_time>/``, or a multirun job's ``multirun/<command>/<date_time>/<job>/``)::

    .hydra/config.yaml, overrides.yaml, hydra.yaml   the config the run was started with (Hydra writes them)
    .hydra/resume-K/                                 the config and overrides of the K-th resume in the directory
    <command>.log                                    the log (Hydra's job logging)
    metrics.json                                     the latest metrics, the step and the status
    checkpoints/step-<k>.ckpt, last.ckpt, interrupted.ckpt
    hpc_ckpt_<k>.ckpt                                Lightning's SLURM requeue checkpoints
    tokenizer/                                       the tokenizer the run trained with
    wandb_run_id, wandb/ or csv/                     the experiment logger's id and files
    run.lock                                         held by the process training in the directory
    done.json, error.txt                             a sweep job: complete (its overrides), or failed (why)
    dev/, test/                                      a fine-tuning run's predictions per split
    profile.json, benchmark.json (and .png)          what `blockbert profile` / `benchmark` measured

Plain paths, small readers, and :func:`check_writable` (an output directory checked before the work): no torch, no
Lightning, no Hydra.
"""

from __future__ import annotations

import json
import os
import shutil
import traceback
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

from blockbert.errors import ConfigError, named_line

COMMANDS = ("pretrain", "finetune", "profile", "benchmark")  # the commands that write a run directory through Hydra
STAMP = "%Y-%m-%d_%H-%M-%S"  # a new directory's name: Hydra's runs and multiruns are named so (conf/hydra/default.yaml)


def new_run_path(command: str) -> Path:
    """Where a run of ``command`` that Hydra does not name goes: ``runs/<command>/<date_time>`` (``blockbert plan``)."""
    return Path("runs") / command / datetime.now().strftime(STAMP)


def new_sweep_path(name: str) -> Path:
    """Where ``blockbert sweep NAME`` goes unless ``--dir`` says: ``multirun/sweeps/<name>/<date_time>``."""
    return Path("multirun") / "sweeps" / name / datetime.now().strftime(STAMP)


@dataclass(frozen=True)
class RunDir:
    path: Path

    STEP_CHECKPOINT = "step-{step}"  # checkpoints/ file names: Lightning's templates, without .ckpt
    INTERRUPTED = "interrupted"
    CSV_LOGS = "csv"

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path).expanduser())

    # ------------------------------------------------------------------------------------------ what a run writes
    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def interrupted_checkpoint(self) -> Path:
        return self.checkpoints / f"{self.INTERRUPTED}.ckpt"

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    @property
    def lock_file(self) -> Path:
        return self.path / "run.lock"

    @property
    def wandb_id_file(self) -> Path:
        return self.path / "wandb_run_id"

    @property
    def done_file(self) -> Path:
        return self.path / "done.json"

    @property
    def error_file(self) -> Path:
        return self.path / "error.txt"

    def record_error(self, err: Exception) -> None:
        """error.txt: the error in one line, then the traceback being handled: what a sweep's or multirun's job that
        failed leaves (`blockbert report` lists its first line)."""
        self.error_file.write_text(f"{named_line(err)}\n\n{traceback.format_exc()}")

    @property
    def profile_file(self) -> Path:
        return self.path / "profile.json"

    @property
    def benchmark_file(self) -> Path:
        return self.path / "benchmark.json"

    @property
    def profile_plot(self) -> Path:
        return self.path / "profile.png"

    @property
    def benchmark_plot(self) -> Path:
        return self.path / "benchmark.png"

    def predictions_dir(self, split: str) -> Path:
        """A fine-tuning split's predictions.json, nbest_predictions.json (and null_odds.json; gold.jsonl or gold.json
        for a half of a split dev set)."""
        return self.path / split

    def has_tokenizer(self) -> bool:
        return (self.tokenizer_dir / "tokenizer.json").is_file()

    def checkpoint_candidates(self) -> list[Path]:
        """The checkpoints the run can resume from: ours and Lightning's SLURM ``hpc_ckpt_*.ckpt``."""
        return [*self.path.glob("checkpoints/*.ckpt"), *self.path.glob("hpc_ckpt_*.ckpt")]

    # ------------------------------------------------------------------------------------------ Hydra's files
    @property
    def hydra_dir(self) -> Path:
        return self.path / ".hydra"

    def log_file(self, job: str) -> Path:
        """Hydra's job log, named after the job (the command)."""
        return self.path / f"{job}.log"

    @staticmethod
    def is_resume_subdir(subdir: str | None) -> bool:
        """Hydra's output subdir of a job is a resume's ``.hydra/resume-K`` (never the run's own ``.hydra``)."""
        return bool(subdir) and Path(subdir).parent.name == ".hydra" and Path(subdir).name.startswith("resume-")

    def resume_dirs(self) -> list[Path]:
        """Each resume's .hydra/resume-K, in order (K = 1, 2, ...; other names are not Hydra's, and left out)."""
        resumes = [path for path in self.hydra_dir.glob("resume-*") if path.name.split("-", 1)[1].isdigit()]
        return sorted(resumes, key=lambda path: int(path.name.split("-", 1)[1]))

    def last_config_dir(self) -> Path:
        """Where the config the run last used is: .hydra, or the newest .hydra/resume-K."""
        resumes = self.resume_dirs()
        return resumes[-1] if resumes else self.hydra_dir

    def next_config_subdir(self) -> str:
        """Where a job starting in this directory stores its config: ``.hydra`` for a new directory; a run resumed
        here keeps the original and gets ``.hydra/resume-K`` (K = 1, 2, ...) for its own config and overrides."""
        if not (self.hydra_dir / "config.yaml").is_file():
            return ".hydra"
        return f".hydra/resume-{self.resume_count() + 1}"

    def resume_count(self) -> int:
        """How many times the run was resumed in this directory (its ``.hydra/resume-K``)."""
        return len(self.resume_dirs())

    def config_file(self) -> Path:
        """The file of the config the run last used (a resume's if any)."""
        return self.last_config_dir() / "config.yaml"

    def config(self) -> dict | None:
        """The config the run last used; None when there is none or it cannot be read."""
        return _read_yaml(self.config_file(), dict)

    def started_config(self) -> dict | None:
        """The config the run was started with (.hydra/config.yaml)."""
        return _read_yaml(self.hydra_dir / "config.yaml", dict)

    @property
    def overrides_file(self) -> Path:
        return self.hydra_dir / "overrides.yaml"

    def overrides(self) -> list | None:
        """The command-line overrides the run was started with (.hydra/overrides.yaml)."""
        return _read_yaml(self.overrides_file, list)

    def resume_overrides(self) -> list[list | None]:
        """The command-line overrides of each resume (.hydra/resume-K/overrides.yaml, K = 1, 2, ...; None where
        unreadable): a resumed run was also run with these (a resume may change max_steps, for one)."""
        return [_read_yaml(resume / "overrides.yaml", list) for resume in self.resume_dirs()]

    def last_overrides(self) -> list | None:
        """The command-line overrides the run last ran with: its last resume's, else those it was started with."""
        return _read_yaml(self.last_config_dir() / "overrides.yaml", list)

    def hydra(self) -> dict:
        """Hydra's own settings of the run (.hydra/hydra.yaml's ``hydra`` node), empty without them."""
        return (_read_yaml(self.hydra_dir / "hydra.yaml", dict) or {}).get("hydra") or {}

    def command(self) -> str | None:
        """The command that wrote the run -- pretrain, finetune, profile or benchmark --: the config Hydra composed
        for it (hydra.yaml's ``job.config_name``), else told from what it wrote (profile.json, benchmark.json; a
        config with a ``task`` is fine-tuning's, with a ``trainer`` pre-training's); None when nothing tells."""
        name = self.hydra().get("job", {}).get("config_name")
        if name in COMMANDS:
            return name
        if self.profile_file.is_file():
            return "profile"
        if self.benchmark_file.is_file():
            return "benchmark"
        config = self.config() or {}
        return "finetune" if "task" in config else "pretrain" if "trainer" in config else None

    def launch_directory(self) -> Path:
        """Where the run was started (Hydra's runtime.cwd): what its relative paths are relative to."""
        return Path(self.hydra().get("runtime", {}).get("cwd") or ".")

    # ------------------------------------------------------------------------------------------ results
    def metrics(self) -> dict:
        """metrics.json, empty when the run has none (or it cannot be read)."""
        return _read_json(self.metrics_file) or {}

    def profile(self) -> dict:
        return _read_json(self.profile_file) or {}

    def benchmark(self) -> dict:
        return _read_json(self.benchmark_file) or {}


@dataclass(frozen=True)
class SweepDir:
    """A sweep's (or any multirun's) directory: ``sweep.yaml`` (what `blockbert sweep` planned: the command, the
    overrides, the grid, the metric), one :class:`RunDir` per job (``0/``, ``1/``, ...) and the summaries
    (``summary.csv``, ``summary.md``, ``summary.png``, ``summary_seeds.csv``, ``selection.json``)."""

    path: Path

    SPEC, MULTIRUN = "sweep.yaml", "multirun.yaml"  # blockbert sweep's record of a sweep; Hydra's of any multirun
    UNSTARTED = (SPEC, MULTIRUN)  # what a sweep's directory holds before its first job

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path).expanduser())

    def unstarted(self) -> bool:
        """The directory holds nothing a job wrote: only what the sweep and Hydra write before the first job."""
        return self.path.is_dir() and all(p.name in self.UNSTARTED for p in self.path.rglob("*") if not p.is_dir())

    @property
    def spec_file(self) -> Path:
        return self.path / self.SPEC

    @property
    def multirun_file(self) -> Path:
        """Hydra's record of the multirun (a sweep's too), written before its first job."""
        return self.path / self.MULTIRUN

    def spec(self) -> dict:
        """sweep.yaml; empty for a plain multirun (or one that cannot be read)."""
        return _read_yaml(self.spec_file, dict) or {}

    def jobs(self) -> list[RunDir]:
        """The job directories (those with Hydra's overrides.yaml), in job order."""
        jobs = (job for job in map(RunDir, self.path.iterdir()) if job.overrides_file.is_file())
        return sorted(jobs, key=lambda job: job_order(job.path.name))

    def summaries(self) -> list[Path]:
        """Every summary file a sweep's report may write (which it writes depends on the sweep)."""
        return [*(self.summary(suffix) for suffix in (".csv", ".md", ".png")), self.seeds_summary, self.selection_file]

    def summary(self, suffix: str) -> Path:
        """summary.csv, summary.md, summary.png."""
        return self.path / f"summary{suffix}"

    @property
    def seeds_summary(self) -> Path:
        return self.path / "summary_seeds.csv"

    @property
    def selection_file(self) -> Path:
        return self.path / "selection.json"


def job_order(name: str) -> tuple[int, str]:
    """The sort key of job directories' names: numbered jobs by number (2 before 10), dated runs by date."""
    return len(name), name


def check_writable(path: str | Path, setting: str) -> None:
    """Refuse in one line naming ``setting`` (``--out``, ``OUT_DIR``) a ``path`` that cannot be made a directory to
    write into, before any work goes into what would be written there; what the check makes it removes again."""
    directory = Path(path).expanduser().absolute()
    first_made = next((d for d in reversed([directory, *directory.parents]) if not d.exists()), None)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".blockbert-write-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        reason = "a file is there" if isinstance(err, FileExistsError) or directory.is_file() else err.strerror
        raise ConfigError(f"{setting} {path}: cannot write a directory there ({reason}): give another") from None
    finally:
        if first_made is not None and first_made.is_dir():
            shutil.rmtree(first_made, ignore_errors=True)


def checkpoint_of(run: str | Path) -> tuple[RunDir, Path]:
    """(the run directory, the checkpoint) of a run directory (its last.ckpt) or of a checkpoint file (in a run's
    checkpoints/, or anywhere: its folder stands for the run)."""
    path = Path(run).expanduser()
    if path.is_dir():
        return RunDir(path), RunDir(path).last_checkpoint
    root = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return RunDir(root), path


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _read_yaml(path: Path, kind: type):
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return value if isinstance(value, kind) else None
