"""What a job's entry point does around its task: for training, what a checkpoint changed in the config, what the
command line gave, and the paper-row checks; for every job, no trace left when it is refused before it runs. The config
itself is decided while it is composed (:mod:`blockbert.formats.compose`), before the job starts."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from blockbert.errors import (
    STOP_EXIT_CODES,
    ConfigError,
    RunInterrupted,
    SigtermRaises,
    Terminated,
    as_yaml,
    is_user_error,
    stop_name,
)
from blockbert.formats.compose import compose, override_key
from blockbert.formats.run_dir import RunDir
from blockbert.model.config import COMPUTE_ONLY
from blockbert.train.cluster import check_accelerator

log = logging.getLogger(__name__)


def log_starting_point(cfg: DictConfig, command: str) -> None:
    """For a run that starts from a checkpoint (``init_from``, ``model.init_from``), one line in its log: what the
    composition took from the checkpoint (:func:`blockbert.formats.compose.finish`), each value as conf/ and the
    command line give it beside the value the run uses (the one in .hydra/config.yaml)."""
    from hydra.core.hydra_config import HydraConfig

    if not (cfg.get("init_from") or cfg.model.get("init_from")) or not HydraConfig.initialized():
        return
    hydra = HydraConfig.get()
    overrides = list(hydra.overrides.task)
    config_dirs = [source.path for source in hydra.runtime.config_sources if source.provider == "command-line"]
    written = _leaves(compose(hydra.job.config_name, overrides, config_dirs))
    used = _leaves(cfg)
    changed = [
        f"{key}: {_shown(written, key)} -> {_shown(used, key)}"
        for key in sorted(used)  # not the keys only the demo's experiment has (before: "tokens_per_batch: 2048 ->
        if written.get(key) != used.get(key) and not key.startswith(("paper.", "hydra."))  # (unset)" in fine-tuning)
    ]
    demo = not hydra.runtime.choices.get("experiment") and "experiment" not in {override_key(o) for o in overrides}
    log.info(
        "starting from a checkpoint: %s; changed: %s",
        f"the paper's values ({'A.1' if command == 'pretrain' else 'A.4'}), not the CPU demo's (experiment=tiny), "
        "with your overrides, and the checkpoint's model"
        if demo
        else "the checkpoint's model",
        "; ".join(changed) or "nothing",
    )


@contextmanager
def locked(run: RunDir):
    """The run directory's lock (:func:`blockbert.train.resilience.run_lock`) for the job; refused (another process
    trains there), the job leaves no trace (:func:`forget_job`)."""
    from blockbert.train.resilience import RunDirInUse, run_lock

    try:
        with run_lock(run):
            yield
    except RunDirInUse:
        forget_job(run, whole=False)
        raise


def forget_job(run: RunDir, whole: bool = True, created: set[str] = frozenset()) -> None:
    """A job refused before it trained (the callers' judgement: before metrics.json was written) leaves no trace:
    with ``whole``, what it wrote in a directory no run had used
    (Hydra stored its config as the run's own ``.hydra``) -- its start's files and the entries ``created`` since --
    and the directory when nothing else is in it, unless it wrote a checkpoint (a run to resume); else the config Hydra
    stored for this job beside an earlier run's (``.hydra/resume-K``)."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    subdir = hydra.output_subdir if hydra else None
    if whole and subdir == ".hydra":  # what the job's start wrote, then the directory if nothing else is in it
        if run.checkpoint_candidates():
            return
        shutil.rmtree(run.hydra_dir, ignore_errors=True)
        for start in (run.lock_file, run.log_file(hydra.job.name)):
            start.unlink(missing_ok=True)
        for name in created:
            entry = run.path / name
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            run.path.rmdir()
    elif RunDir.is_resume_subdir(subdir):
        shutil.rmtree(run.path / subdir, ignore_errors=True)


@contextmanager
def forgotten_if_refused(run: RunDir, whole: bool):
    """Around a job's checks: a refusal (ConfigError) leaves no trace of the job (:func:`forget_job`)."""
    try:
        yield
    except ConfigError:
        forget_job(run, whole)
        raise


def run_measurement(cfg: DictConfig, measure) -> dict:
    """A measuring command's job (benchmark, profile): ``measure(cfg, run)`` in the job's run directory. Refused (a
    device this machine lacks, a model it does not know), it leaves what it measured and no other trace, except a
    multirun's job, whose directory records why; stopped by Ctrl-C or SIGTERM, it ends in the interrupted line (exit
    130, 143)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra = HydraConfig.get()
    run = RunDir(hydra.runtime.output_dir)
    with forgotten_if_refused(run, whole=hydra.mode != RunMode.MULTIRUN):
        if "device" in cfg:  # before the measurement's imports (seconds): a device this machine lacks ends at once
            from blockbert.measure.device import pick_device

            pick_device(cfg.device)
        try:
            with SigtermRaises():
                return measure(cfg, run)
        except (KeyboardInterrupt, Terminated) as stop:  # a measurement that keeps no rows (benchmark's keep theirs)
            raise RunInterrupted(
                f"stopped by {stop_name(stop)} before its results were written", "a rerun measures everything again",
                run.path, STOP_EXIT_CODES[stop_name(stop)], resumable=False,
            ) from None  # fmt: skip


# the optimizer's settings a checkpoint's optimizer state holds and restores over the command line's (a resume with
# another optim.lr went on at the old one); the schedule's length and warm-up are read from the command line again
OPTIMIZER_STATE = ("lr", "betas", "eps", "weight_decay")
# what a resume continues as the run was started: its model, data, QA task, seed, global batch and optimizer settings
RESUME_KEEPS = ("model", "data", "task", "seed", "tokens_per_batch", "optim.batch_size", "init_from",
                *(f"optim.{key}" for key in OPTIMIZER_STATE))  # fmt: skip
# ... but the model's name (a label), how the same computation runs (the kernels and layouts are exact against each
# other), the data loading, the micro-batch (which RunSafety.fit checks against the checkpoint's data position
# itself), and what only evaluation reads (our choice of what may change)
RESUME_MAY_CHANGE = ("model.name", *(f"model.{key}" for key in COMPUTE_ONLY), "data.num_workers", "data.num_proc",
                     "data.per_device_batch_size", "data.n_best_size", "data.max_answer_length", "task.dev_file",
                     "task.test_file", "task.max_eval_samples")  # fmt: skip


def check_resume(cfg: DictConfig, run: RunDir, subdir: str | None) -> None:
    """A job that resumes a run (Hydra stores its config in ``subdir`` = .hydra/resume-K, and the run has a checkpoint)
    continues that run: refused in one line when its config changes what the run trains (:data:`RESUME_KEEPS` but
    :data:`RESUME_MAY_CHANGE`); before, the checkpoint was loaded into whatever the command line built. Keys the
    run's config lacks (a config from an older blockbert) are not compared. A run that has finished resumes too:
    with no step to train it validates (pre-training) or evaluates (fine-tuning) again."""
    if not RunDir.is_resume_subdir(subdir) or not run.checkpoint_candidates():
        return
    started = _leaves(OmegaConf.create(run.started_config() or {}), resolve=False)
    now = _leaves(cfg, resolve=False)
    bases = (run.launch_directory(), _launch_directory())  # where the run was started, where this command runs
    keys = sorted(started.keys() & now.keys(), key=lambda key: (not given_on_command_line(key), key))  # typed first
    changed = [
        f"{key}={_shown_at(key, now[key], bases[1])} (the run has {_shown_at(key, started[key], bases[0])})"
        for key in keys
        if _kept(key) and not _kept(key, RESUME_MAY_CHANGE) and _changed(key, started[key], now[key], bases)
    ]
    if changed:
        more = " ..." if changed[3:] else ""
        raise ConfigError(
            f"resuming {run.path} with {', '.join(changed[:3])}{more}: a resume continues the run as it was started; "
            "give the run's values, or a new hydra.run.dir for a new run"
        )


# settings that name files or directories: relative ones are relative to where the command runs; but a value that is
# a word of the setting (data.tokenizer=train: a tokenizer trained on the corpus), whatever folder has its name
PATH_SETTINGS = ("data.files", "data.tokenizer", "task.train_file", "model.init_from", "init_from")
NOT_A_PATH = {("data.tokenizer", "train")}


def _changed(key: str, started, now, bases: tuple[Path, Path]) -> bool:
    """Whether a resume's setting differs from the run's. A path setting (:data:`PATH_SETTINGS`) whose places are
    there on both sides compares them, the run's relative ones taken from where it was started: ``/abs/data/x.json``
    and ``./data/x.json`` name the run's ``data/x.json`` (before: refused, so a run started with relative paths
    resumed only from its first directory), and ``data/x.json`` given elsewhere names another file. Otherwise (a hub
    model's name, files moved since) the values compare as they are written."""
    if key in PATH_SETTINGS and not (_a_word(key, started) or _a_word(key, now)):
        places = _places(started, bases[0]), _places(now, bases[1])
        if None not in places:
            return places[0] != places[1]
    return started != now


def _a_word(key: str, value) -> bool:
    """Whether a path setting's value is a word of the setting (:data:`NOT_A_PATH`), no path."""
    return isinstance(value, str) and (key, value) in NOT_A_PATH


def _places(value, base: Path) -> list[str] | None:
    """The files or directories a path setting's value names, relative ones from ``base``; None if it names
    something not there (or is no path: a number, null)."""
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) for v in values):
        return None
    paths = [os.path.normpath(base / os.path.expanduser(v)) for v in values]
    return paths if all(glob.glob(path) for path in paths) else None


def _shown_at(key: str, value, base: Path) -> str:
    """A setting's value as the user writes it, and where a relative path setting's is (``'c.txt' in /a``)."""
    places = _places(value, base) if key in PATH_SETTINGS and not _a_word(key, value) else None
    relative = isinstance(value, str) and not os.path.isabs(os.path.expanduser(value))
    return as_yaml(value) + (f" in {base}" if places and relative else "")


def _launch_directory() -> Path:
    """Where this command runs (Hydra's runtime.cwd: the job may have changed directory since)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.cwd) if HydraConfig.initialized() else Path.cwd()


def check_checkpoint_optimizer(cfg: DictConfig) -> None:
    """``ckpt_path=FILE`` (a resume into any directory) continues that checkpoint's optimizer: an ``optim.lr``,
    ``betas``, ``eps`` or ``weight_decay`` other than the one it was trained with is refused in one line, as in a
    resume in the run's own directory (:func:`check_resume`): its optimizer state would override the command line's."""
    if not cfg.get("ckpt_path") or not Path(cfg.ckpt_path).expanduser().is_file():
        return  # none given, or a missing file: the resume says so
    from blockbert.formats.checkpoints import load_checkpoint

    hyper = load_checkpoint(Path(cfg.ckpt_path).expanduser(), mmap=True).get("hyper_parameters")
    stored = hyper.get("optim") if isinstance(hyper, dict) else None
    if not isinstance(stored, dict):
        return
    given = OmegaConf.to_container(cfg.optim, resolve=True)
    changed = [
        f"optim.{key}={given[key]!r} (the checkpoint has {stored[key]!r})"
        for key in OPTIMIZER_STATE
        if key in stored and key in given and _as_list(given[key]) != _as_list(stored[key])
    ]
    if changed:
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} continues that checkpoint's optimizer, and the command line gives "
            f"{', '.join(changed)}: its optimizer state would override them; give the checkpoint's values"
        )


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _kept(key: str, prefixes=RESUME_KEEPS) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


def run_training(cfg: DictConfig, command: str, train) -> dict:
    """A training command's job: ``train(cfg, run, heads_given=...)`` (:func:`blockbert.train.pretrain.pretrain`,
    :func:`blockbert.train.finetune.finetune`) in the job's run directory, locked, after the checks of the machine,
    the paper row and the device's memory (:func:`blockbert.measure.plan.check_fit`, by rank 0: the other ranks
    start after it): a run refused there leaves no trace, except a sweep's job, whose directory records why."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    run = RunDir(hydra.runtime.output_dir)
    metrics_before = _stamp(run.metrics_file)
    with stops_outside_training(run, lambda: _stamp(run.metrics_file) != metrics_before):
        return _checked_training(cfg, command, train, run, hydra, metrics_before)


def _checked_training(cfg: DictConfig, command: str, train, run: RunDir, hydra, metrics_before) -> dict:
    """:func:`run_training`'s job: the checks, then ``train`` (``hydra``: the job's Hydra settings)."""
    from hydra.types import RunMode

    whole = hydra.mode != RunMode.MULTIRUN
    with forgotten_if_refused(run, whole):
        check_accelerator(cfg.trainer)
        check_resume(cfg, run, hydra.output_subdir)
        check_checkpoint_optimizer(cfg)
        check_data(cfg, command)
    # Lightning and the training code only now (seconds): a refused resume or accelerator ends at once
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    from blockbert.measure.plan import check_fit

    started_with = {entry.name for entry in run.path.iterdir()}  # what a refused new run leaves: nothing beyond
    with locked(run):
        log_starting_point(cfg, command)
        check_paper_row(cfg, command)
        if rank_zero_only.rank == 0:
            with forgotten_if_refused(run, whole):
                check_fit(cfg, command)
        try:
            return train(cfg, run, heads_given=given_on_command_line("model.heads"))
        except Exception as err:
            # refused before it trained (metrics.json untouched: Lightning's fit writes it, even on a failure): a new
            # run leaves nothing, a resume only its log lines
            if is_user_error(err) and _stamp(run.metrics_file) == metrics_before:
                forget_job(run, whole, created={entry.name for entry in run.path.iterdir()} - started_with)
            raise


@contextmanager
def stops_outside_training(run: RunDir, trained):
    """SIGTERM or Ctrl-C outside Lightning's fit (which stops training at the next micro-batch with a checkpoint:
    RunSafety) ends the job in its interrupted line, exit code 143 or 130, instead of a silent death: before training
    (its checks, the data built: minutes on a large corpus, when a scheduler's SIGTERM may well come; its memory
    fitted) or after it (its results written). ``trained()``: whether it trained (metrics.json written). Nothing is
    removed: a new run's directory holds its config, a resumed one its checkpoints, as they were."""
    try:
        with SigtermRaises():
            yield
    except (KeyboardInterrupt, Terminated) as stop:
        began = trained()
        if not began and not run.checkpoint_candidates():
            state, then = "nothing was saved", f"run the same command with hydra.run.dir={run.path} to start it again"
        else:
            state = f"{'its checkpoints' if began else 'the checkpoints it would resume from'} are in {run.checkpoints}"
            then = f"run the same command with hydra.run.dir={run.path} to resume"
        raise RunInterrupted(
            f"stopped by {stop_name(stop)} {'after training' if began else 'before training'}: {state}",
            then,
            run.path,
            STOP_EXIT_CODES[stop_name(stop)],
        ) from None


def check_data(cfg: DictConfig, command: str) -> None:
    """The run's corpus or QA files are there and its data settings can be read: a missing file ends the run in
    one line before the memory check's fit (seconds) and before Lightning is imported. Not while composing: a
    config (``--cfg job``, ``plan``) may name data that is not on this machine yet."""
    try:
        if command == "pretrain":
            from blockbert.data.corpus import check_corpus

            check_corpus(cfg.data)
        else:
            from blockbert.data.qa import task_files

            task_files(cfg.task)
    except FileNotFoundError as err:  # a refusal: the run leaves no trace
        raise ConfigError(str(err)) from None


def _stamp(path: Path) -> tuple | None:
    """When and how large ``path`` was last written; None if it is not there."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def given_on_command_line(key: str) -> bool:
    """Whether the command line set ``key`` (``model.heads=...``); True outside a Hydra job (nothing to tell)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return True
    return any(override_key(o) == key for o in HydraConfig.get().overrides.task)


def _shown(leaves: dict, key: str) -> str:
    return repr(leaves[key]) if key in leaves else "(unset)"


def _leaves(cfg: DictConfig, resolve: bool = True) -> dict:
    """{dotted key: value} of a config's leaves (interpolations resolved, with ``resolve``)."""

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    return dict(walk(OmegaConf.to_container(cfg, resolve=resolve), ""))


def check_paper_row(cfg: DictConfig, command: str) -> None:
    """For ``experiment=<paper row>``: warn in one line when the row runs on the tiny generated data, whose numbers
    cannot be compared with the paper's (a row the paper never pre-trained is refused while composing:
    :func:`blockbert.formats.compose.finish`)."""
    paper = cfg.get("paper")
    if not paper:
        return
    from hydra.core.hydra_config import HydraConfig

    name = HydraConfig.get().runtime.choices.get("experiment") if HydraConfig.initialized() else None
    row = f"the paper's {paper.row} row (Tables {paper.tables})"
    row = f"experiment={name}, {row}," if name else row
    toy = (command == "pretrain" and cfg.data.source in ("generated", "longrange")) or (
        command == "finetune" and cfg.task.name == "generated"
    )
    if toy:
        real = (
            "data=wiki_book (or your copy of the corpus)" if command == "pretrain" else "task=squad11, squad20 or mrqa"
        )
        log.warning(
            "%s runs on the tiny generated %s: its results are not comparable with the paper's; give %s",
            row,
            "corpus" if command == "pretrain" else "QA set",
            real,
        )
