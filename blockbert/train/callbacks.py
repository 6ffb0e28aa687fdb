"""Callbacks of our own: the run's plain ``metrics.json``, and a progress bar that counts optimizer steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.trainer.states import TrainerStatus
from pytorch_lightning.utilities.exceptions import SIGTERMException


def jsonable(value):
    try:
        value = value.item()
    except AttributeError:
        pass
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsJson(pl.Callback):
    """Keep RUN_DIR/metrics.json current: flat JSON of the latest logged metrics, the step and the status
    (running, finished, interrupted, failed), written at every validation and every checkpoint.

    A run that fails or is stopped before it trained a step changes only the status (and the error) of
    the file an earlier run wrote: progress recorded there is never replaced by an emptier state."""

    def __init__(self, path: Path, extra: dict):
        self.path, self.extra = Path(path), extra
        self.start_step: int | None = None
        self.finished = False

    def write(self, trainer: pl.Trainer, status: str, error: str | None = None, latest: bool = False) -> None:
        """``latest``: the trainer's metrics are newer than the file's even without a new training step (the
        closing validation): they are merged into it."""
        if trainer.global_rank != 0:
            return
        old = json.loads(self.path.read_text()) if self.path.is_file() else None
        if old is not None and not latest and (self.start_step is None or trainer.global_step <= self.start_step):
            metrics = old  # no newer training state to record than what is there
        else:
            metrics = {**(old or {}), **{k: jsonable(v) for k, v in trainer.callback_metrics.items()}}
            metrics.update(step=trainer.global_step, epoch=trainer.current_epoch)
        metrics.update(self.extra, status=status)
        if error is None:
            metrics.pop("error", None)
        else:
            metrics["error"] = error
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path)

    def on_train_start(self, trainer, pl_module):
        self.start_step, self.finished = trainer.global_step, False

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.write(trainer, "running")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.state.status == TrainerStatus.RUNNING:  # not the on-exception checkpoint
            self.write(trainer, "finished" if self.finished else "running")  # Lightning saves in on_train_end too

    def on_train_end(self, trainer, pl_module):
        self.finished = True
        self.write(trainer, "finished")

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            self.write(trainer, "interrupted")
        else:
            self.write(trainer, "failed", f"{type(exception).__name__}: {exception}".splitlines()[0][:500])


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar for a run bounded by steps (pre-training: ``max_epochs=-1``): its label says
    "Step 120/2400000" (optimizer steps out of ``max_steps``) instead of "Epoch 4/-2"."""

    def _get_train_description(self, current_epoch: int) -> str:
        return f"Step {self.trainer.global_step}/{self.trainer.max_steps}"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.progress is not None and self.train_progress_bar_id is not None:
            description = self._get_train_description(trainer.current_epoch)
            self.progress.update(self.train_progress_bar_id, description=description)
