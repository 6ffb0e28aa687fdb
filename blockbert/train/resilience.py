"""What makes a training run safe to stop at any moment and resume as if it had never stopped.

- :func:`run_lock`: one process per run directory.
- :class:`AtomicCheckpointIO`: a checkpoint is written to a temporary file and renamed, so a kill
  during the write leaves the previous file intact.
- :func:`resume_checkpoint`: the checkpoint a restarted run continues from.
- :class:`RunGuard`: saves only states at optimizer-step boundaries (a checkpoint taken in the
  middle of a gradient accumulation is stored as of the last optimizer step, so the micro-batches
  whose gradients are lost are trained again), seeds dropout per micro-batch (a resumed run draws
  what an uninterrupted one draws), holds a Ctrl-C until the micro-batch it lands in ends, and stops
  on a non-finite loss (kept on the device and read every NON_FINITE_CHECK_EVERY optimizer steps, before a
  periodic checkpoint or a validation, and at the end: no host sync a step) or non-finite weights.
- :class:`StepCheckpoint`: Lightning's periodic checkpoint, without a second copy of the step resumed from.
- :class:`ExceptionCheckpoint`: Lightning's on-exception checkpoint, written only when training
  went past the state it started from, and never for a non-finite state.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from pytorch_lightning.trainer.states import TrainerStatus
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from blockbert.data.sampler import ResumableData, stream_seed
from blockbert.errors import (
    STOP_EXIT_CODES,
    ConfigError,
    NonFiniteLossError,
    RunInterrupted,
    Terminated,
)
from blockbert.formats.checkpoints import checkpoint_step, load_checkpoint, newest_checkpoint
from blockbert.formats.run_dir import RunDir
from blockbert.formats.safe_load import CheckpointError
from blockbert.train.callbacks import MetricsJson
from blockbert.train.cluster import cluster_environment
from blockbert.train.loggers import finish_wandb

log = logging.getLogger(__name__)


class RunDirInUse(ConfigError):
    """Another process holds the run directory's lock."""


@contextmanager
def run_lock(run: RunDir):
    """Hold the run's ``run.lock`` while it trains; a second process on the same directory stops at once.

    Only global rank 0 takes it: the other ranks of a DDP run work in the same directory."""
    if rank_zero_only.rank != 0:
        yield
        return
    run.path.mkdir(parents=True, exist_ok=True)
    path = run.lock_file
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise RunDirInUse(
                f"{run.path} is in use by another blockbert process (pid {owner}, see {path}): wait "
                "for it to end, or give another hydra.run.dir"
            ) from None
        except OSError as err:  # a file system without locks (some NFS/Lustre mounts)
            raise ConfigError(
                f"{path} cannot be locked ({err.strerror}): put the run directory on a file system with flock support"
            ) from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def resumes(ckpt_path: str | None, run: RunDir) -> bool:
    """Whether :func:`resume_checkpoint` will give a checkpoint (or refuse to run without one), seen without reading
    any: ``ckpt_path`` given, or the run has checkpoints."""
    return bool(ckpt_path) or bool(run.checkpoint_candidates())


def resume_checkpoint(ckpt_path: str | None, run: RunDir) -> str | None:
    """``ckpt_path`` if given (checked), else the newest readable checkpoint of the run, else None.

    A candidate that cannot be read (corrupt, truncated) is skipped with a warning naming it and the
    file used instead; an unsafe one (code in the pickle) stops the run."""
    if ckpt_path:
        path = Path(ckpt_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt_path!r}: no such checkpoint file")
        log.info("resuming from %s (step %d)", path, checkpoint_step(path))
        return str(path)
    newest, unreadable = newest_checkpoint(run)
    if newest is None:
        if unreadable:
            path, err = unreadable[0]
            raise CheckpointError(
                f"no readable checkpoint in {run.path} to resume from ({err}): move the files "
                "away to start afresh in this directory"
            )
        return None
    step, path = newest
    for bad, err in unreadable:
        log.warning("%s cannot be read (%s): resuming from %s (step %d) instead", bad, err, path, step)
    log.info("resuming from %s (step %d)", path, step)
    return str(path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, written to ``PATH.tmp`` and renamed over ``PATH`` when complete."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


NON_FINITE_CHECK_EVERY = 10  # our choice: optimizer steps between two reads of the non-finite flag


class RunGuard(pl.Callback):
    """Step-boundary checkpoints, per-micro-batch dropout seeds and the non-finite check (module docstring)."""

    def __init__(self, seed: int, precision: str, run: RunDir):
        self.seed, self.precision, self.run = seed, str(precision), run
        self.start_step: int | None = None  # the optimizer step training (re)started at; None before
        self._boundary_total = 0  # micro-batches processed (since the start of training) at the last optimizer step
        self._requeue = None  # Lightning's SLURM requeue handler and a signal it has yet to act on
        self._in_batch = False  # between on_train_batch_start and the end of on_train_batch_end
        self._ctrl_c = False  # a Ctrl-C held until the micro-batch ends
        self._sigint_before = None  # the SIGINT handler to restore when training ends
        self._first_bad = None  # on the device: the first optimizer step (from 1) whose loss was not finite, 0: none

    def on_train_start(self, trainer, pl_module):
        self.start_step = trainer.global_step
        self._boundary_total = trainer.fit_loop.epoch_loop.batch_progress.total.processed
        self._defer_requeue(trainer)
        self._defer_ctrl_c()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._in_batch = True
        torch.manual_seed(stream_seed(self.seed, trainer.global_rank, trainer.fit_loop.epoch_loop.total_batch_idx))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        accumulating = trainer.fit_loop.epoch_loop._should_accumulate()
        if loss is not None:  # on the device: reading it every micro-batch would be a host sync a step on a GPU
            bad = ~torch.isfinite(loss.detach()).all()
            if self._first_bad is None:
                self._first_bad = torch.zeros((), dtype=torch.long, device=loss.device)
            step = trainer.global_step + 1 if accumulating else trainer.global_step  # the step it belongs to, from 1
            self._first_bad = torch.where(bad & (self._first_bad == 0), step, self._first_bad)
        if not accumulating:  # this micro-batch ended an optimizer step
            if trainer.global_step % NON_FINITE_CHECK_EVERY == 0:  # the same steps on every rank: a collective
                self.check_finite(trainer)
            self._boundary_total = trainer.fit_loop.epoch_loop.batch_progress.total.processed
            if self._requeue is not None and self._requeue[1] is not None:
                handler, signum = self._requeue
                self._requeue = (handler, None)
                handler(signum, None)  # now, at a step boundary: Lightning saves hpc_ckpt_<k> and requeues
        self._in_batch = False
        if self._ctrl_c:
            raise KeyboardInterrupt  # the micro-batch is counted: its state is consistent (on_save_checkpoint)

    def first_non_finite_step(self) -> int | None:
        """The first optimizer step (1-based) whose loss on this process was not finite, None if none was (a host
        sync)."""
        first = 0 if self._first_bad is None else int(self._first_bad)
        return first or None

    def check_finite(self, trainer) -> None:
        """Stop, on every rank, if a loss since training started was not finite. A host sync, and a collective under
        DDP, so it runs where every rank is at the same point: every NON_FINITE_CHECK_EVERY optimizer steps, before a
        periodic checkpoint or a validation, and at the end of training."""
        first = self.first_non_finite_step()
        if trainer.strategy.reduce_boolean_decision(first is not None, all=False):  # every rank stops together
            where = f"at step {first}" if first is not None else "on another process"
            raise NonFiniteLossError(
                f"the training loss is not finite {where}: training stopped, nothing from this state is saved; "
                f"{self._cause()}"
            )

    def on_validation_start(self, trainer, pl_module):
        self.check_finite(trainer)

    def on_train_end(self, trainer, pl_module):
        self.check_finite(trainer)

    def on_exception(self, trainer, pl_module, exception):
        self._restore_sigint()

    def teardown(self, trainer, pl_module, stage):
        self._restore_sigint()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.state.status == TrainerStatus.RUNNING:  # a periodic save, on every rank at once (not on_exception's)
            self.check_finite(trainer)
        bad = [name for name, p in pl_module.named_parameters() if not torch.isfinite(p.detach()).all()]
        if bad:
            raise NonFiniteLossError(
                f"the weights hold NaN or inf at step {trainer.global_step} (first: {bad[0]}): "
                f"not saved; {self._cause()}"
            )
        loops = checkpoint["loops"]["fit_loop"]
        epochs = loops["epoch_progress"]["current"]
        batches = loops["epoch_loop.batch_progress"]["current"]["processed"]
        # between two epochs, after all the batches of the last one (not a run that max_steps ended mid-epoch,
        # which Lightning also marks completed); an epoch ends with an optimizer step
        if epochs["completed"] == epochs["ready"] and batches >= trainer.num_training_batches:
            _as_next_epoch_start(loops)
            return
        progress = loops["epoch_loop.batch_progress"]
        since_step = progress["total"]["processed"] - self._boundary_total
        if self.start_step is None or since_step <= 0:  # not training (a finished run saved again), or at a step
            return
        # mid-accumulation: store the state of the last optimizer step; the lost micro-batches run again. They all
        # belong to the current epoch, since an epoch ends with an optimizer step.
        for scope in ("total", "current"):
            count = progress[scope]["processed"] - since_step
            progress[scope] = dict.fromkeys(("ready", "started", "processed", "completed"), count)
        progress["is_last_batch"] = False
        datamodule = trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "state_at"):
            checkpoint[type(datamodule).__qualname__] = datamodule.state_at(self._boundary_total)

    def _defer_ctrl_c(self) -> None:
        """Ctrl-C raises KeyboardInterrupt wherever Python is. Inside a micro-batch -- between the optimizer's step and
        Lightning counting it, say -- the state Lightning then saves has weights one step ahead of its counters and
        data position, and the resumed run trained one step off (seen as validations at steps 99, 199, ...). Inside
        a micro-batch the Ctrl-C is held and raised when it ends; a second one, or one between micro-batches
        (loading data, validating), interrupts at once. A run started with SIGINT ignored keeps ignoring it."""
        if threading.current_thread() is not threading.main_thread():
            return
        before = signal.getsignal(signal.SIGINT)
        if before in (signal.SIG_IGN, None):
            return

        def hold(signum, frame):
            if self._in_batch and not self._ctrl_c:
                self._ctrl_c = True
                return
            raise KeyboardInterrupt

        self._sigint_before = before
        signal.signal(signal.SIGINT, hold)

    def _restore_sigint(self) -> None:
        if self._sigint_before is not None:
            signal.signal(signal.SIGINT, self._sigint_before)
            self._sigint_before = None

    def _defer_requeue(self, trainer) -> None:
        """Lightning's SLURM auto-requeue handler saves a checkpoint from inside the signal handler, which may
        run in the middle of an optimizer step; here the signal is only noted, and the handler runs at the next
        optimizer-step boundary (on_train_batch_end). Lightning restores its handlers when fit ends."""
        from lightning_fabric.plugins.environments import SLURMEnvironment

        environment = trainer._accelerator_connector.cluster_environment
        if not (isinstance(environment, SLURMEnvironment) and environment.auto_requeue):
            return
        requeue_signal = environment.requeue_signal
        self._requeue = (signal.getsignal(requeue_signal), None)

        def note(signum, frame):
            self._requeue = (self._requeue[0], signum)

        signal.signal(requeue_signal, note)

    def _cause(self) -> str:
        try:
            last_good, _ = newest_checkpoint(self.run)
        except Exception:  # noqa: BLE001 -- only a hint in an error message
            last_good = None
        newest = f"the last good state is {last_good[1]}" if last_good else "no checkpoint was saved before"
        if self.precision in ("16-true", "16", "half"):
            return (
                f"{newest}. Likely cause: trainer.precision={self.precision} keeps the weights and AdamW's "
                "moments in fp16, where eps=1e-08 rounds to 0: use 16-mixed or bf16-mixed"
            )
        return f"{newest}. Try a lower optim.lr or more optim.warmup_steps, or check the data"


def _as_next_epoch_start(loops: dict) -> None:
    """Store a state taken between two epochs with the per-epoch counters the next epoch starts from.

    Lightning resets them when the next epoch starts; a checkpoint saved before that (a SIGTERM noticed
    after an epoch's last batch) kept the ended epoch's counts, and a run resumed from it took them for
    the new epoch's: that epoch trained one batch, and every accumulation after it was shifted.
    """

    def zero(counts: dict) -> None:
        for key, value in counts.items():
            if isinstance(value, dict):
                zero(value)
            elif isinstance(value, int) and not isinstance(value, bool):
                counts[key] = 0

    batches = loops["epoch_loop.batch_progress"]
    zero(batches["current"])
    batches["is_last_batch"] = False
    zero(loops["epoch_loop.scheduler_progress"]["current"])
    for counter in loops["epoch_loop.automatic_optimization.optim_progress"]["optimizer"].values():
        zero(counter["current"])
    zero(loops["epoch_loop.val_loop.batch_progress"]["total"])  # counts validation batches within an epoch


class StepCheckpoint(ModelCheckpoint):
    """Lightning's periodic checkpoint, which does not save again the step a run resumed from: Lightning
    does not restore when it last saved, so with gradient accumulation the first micro-batch after a resume
    at a multiple of ``every_n_train_steps`` wrote a second copy (``step-30-v1.ckpt``)."""

    def on_train_start(self, trainer, pl_module):
        super().on_train_start(trainer, pl_module)
        self._last_global_step_saved = trainer.global_step

    def _monitor_candidates(self, trainer):
        """The values a checkpoint is named and ranked by, its ``step`` the trainer's: pre-training logs the step of
        its last validation as ``step`` (the loggers' x-axis), which Lightning would take instead."""
        candidates = super()._monitor_candidates(trainer)
        candidates["step"] = torch.tensor(trainer.global_step)
        return candidates


class ExceptionCheckpoint(OnExceptionCheckpoint):
    """Lightning's on-exception checkpoint, saved only when it holds progress: never before training
    started or at the step it started from (it would replace a newer state with an older or emptier
    one), and never for a non-finite state."""

    def __init__(self, guard: RunGuard, dirpath: Path, filename: str = RunDir.INTERRUPTED):
        super().__init__(dirpath=dirpath, filename=filename)
        self.guard = guard
        self.saved = False
        self.exception: BaseException | None = None  # what stopped training, if anything

    def on_exception(self, trainer, pl_module, exception):
        self.exception = exception
        start = self.guard.start_step
        if isinstance(exception, NonFiniteLossError) or self.guard.first_non_finite_step() is not None:
            return  # the state is not finite: nothing of it is saved
        if start is None or trainer.global_step <= start:
            since = "before training started" if start is None else f"no optimizer step since step {start}"
            log.info("no checkpoint saved on %s: %s", type(exception).__name__, since)
            return
        trainer.save_checkpoint(self.ckpt_path, weights_only=False)
        self.saved = True


CLOSING_VALIDATION, SCORING = " in the closing validation", " while scoring"
AFTER_TRAINING = {CLOSING_VALIDATION: "validate", SCORING: "score"}  # where a stop after training came: the rerun's


class RunSafety:
    """The pieces a training entry point adds to its Trainer, and its ``fit``: run guard, on-exception
    checkpoint, atomic checkpoint writes, the cluster environment, the resume lookup and SIGTERM."""

    def __init__(self, cfg, run: RunDir):
        self.run, self.ckpt_path = run, cfg.ckpt_path
        self.guard = RunGuard(cfg.seed, cfg.trainer.precision, run)
        self.exception_checkpoint = ExceptionCheckpoint(self.guard, run.checkpoints)
        self.callbacks = [self.guard, self.exception_checkpoint]
        environment = cluster_environment(run)
        self.plugins = [AtomicCheckpointIO(), *([environment] if environment is not None else [])]

    def fit(self, trainer: pl.Trainer, module, datamodule) -> None:
        """``trainer.fit`` from the checkpoint to resume (if any), once the data module has accepted its state (before
        the logger or any callback writes); a SIGTERM ends in :class:`RunInterrupted`."""
        ckpt_path = resume_checkpoint(self.ckpt_path, self.run)
        if ckpt_path is not None and isinstance(datamodule, ResumableData):
            datamodule.check_resume(load_checkpoint(ckpt_path, mmap=True).get(type(datamodule).__qualname__))
        # Lightning cannot see that the data modules restore the data position themselves (ResumableData).
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
        # With no checkpoint Lightning looks for a "last" one itself (it finds none: every candidate was read
        # above) and warns that "the last model of the previous fit" will be used, which would mislead.
        warnings.filterwarnings("ignore", message=r".*\.fit\(ckpt_path=None\)` was called without a model.*")
        warnings.filterwarnings("ignore", message=r".*no last checkpoint available.*")
        # PretrainModule counts real tokens in on_before_batch_transfer; Lightning notes that a data module was passed
        # too, as if both defined the hook (ours do not): nothing for a user to act on.
        warnings.filterwarnings("ignore", message=r".*overridden `on_before_batch_transfer` in `LightningModule`.*")
        # Validation values are the same on every process: pre-training reduces its sums over the processes itself,
        # and each process of a fine-tuning run reads the whole dev set; the step and epoch logged with them are the
        # same too.
        warnings.filterwarnings("ignore", message=r".*use `self\.log\('((val|dev)/.*|step|epoch)', .*sync_dist=True.*")
        # Lightning logs every log_every_n_steps optimizer steps counted across epochs: its note that an epoch holds
        # fewer batches than that (a small corpus, a QA set) asks for a change no run needs.
        warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")
        if ckpt_path is not None:  # resuming in place: the directory is meant to hold checkpoints
            warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
        with self._stops_as_interrupted(trainer, ""):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)

    def validate(self, trainer: pl.Trainer, module, datamodule) -> None:
        """``trainer.validate`` after training (the final state is saved already): a SIGTERM or Ctrl-C ends in
        :class:`RunInterrupted` with its exit code, as in :meth:`fit`, not in a plain exit."""
        with self._stops_as_interrupted(trainer, CLOSING_VALIDATION):
            trainer.validate(module, datamodule=datamodule, verbose=False)

    def predict(self, trainer: pl.Trainer, module, dataloader) -> list:
        """``trainer.predict`` after training (a fine-tuning run's scoring): a SIGTERM or Ctrl-C ends in
        :class:`RunInterrupted`, as in :meth:`validate`. Lightning's prediction loop does not look at the SIGTERM its
        handler notes (fit's and validation's do): it is read here when the loop ends."""
        with self._stops_as_interrupted(trainer, SCORING):
            outputs = trainer.predict(module, dataloaders=dataloader)
            if trainer.received_sigterm:
                raise SIGTERMException
        return outputs

    @contextmanager
    def _stops_as_interrupted(self, trainer: pl.Trainer, where: str):
        """SIGTERM (Lightning's SIGTERMException) or Ctrl-C (Lightning's sys.exit(1) after its graceful shutdown)
        inside the block becomes :class:`RunInterrupted` with exit code 143 or 130; W&B is closed either way."""
        try:
            yield
        except BaseException as err:
            ctrl_c = isinstance(err, SystemExit) and isinstance(self.exception_checkpoint.exception, KeyboardInterrupt)
            # Terminated: SIGTERM while fit builds the data, before Lightning's handler is there (SigtermRaises)
            stopped = isinstance(err, (SIGTERMException, Terminated)) or ctrl_c
            if stopped and not ctrl_c:  # the state is saved: a second SIGTERM must not cut the report short
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            cause = "Ctrl-C" if ctrl_c else "SIGTERM"  # Lightning ends a Ctrl-C in SystemExit, not KeyboardInterrupt
            exit_code = STOP_EXIT_CODES[cause] if stopped else 1
            finish_wandb(exit_code)
            if not stopped:
                raise
            if where:  # after training, which wrote "finished": the run's results are not all there
                for metrics in (c for c in trainer.callbacks if isinstance(c, MetricsJson)):
                    metrics.write(trainer, "interrupted")
                checkpoint = self.run.last_checkpoint.relative_to(self.run.path)
                saved = f"training is complete and saved in {checkpoint}"
                then = f"run the same command with hydra.run.dir={self.run.path} to {AFTER_TRAINING[where]} it"
            else:
                checkpoint = self.run.interrupted_checkpoint.relative_to(self.run.path)
                checkpoint = checkpoint if self.exception_checkpoint.saved else None
                saved = (
                    f"its state is saved in {checkpoint}"
                    if checkpoint
                    else "no optimizer step since it started, so nothing new was saved"
                )
                then = f"run the same command with hydra.run.dir={self.run.path} to resume"
            raise RunInterrupted(
                f"stopped by {cause}{where} at step {trainer.global_step}: {saved}",
                then,
                self.run.path,
                exit_code,
                saved=str(checkpoint) if checkpoint else None,
            ) from None
