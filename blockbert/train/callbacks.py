"""Callbacks of our own: the run's plain ``metrics.json``, a progress bar that counts optimizer steps, and dev EM/F1
at every validation of a fine-tuning run."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.trainer.states import TrainerStatus
from pytorch_lightning.utilities.exceptions import SIGTERMException
from rich.progress import ProgressColumn
from rich.text import Text

from blockbert.data.cache import write_atomically
from blockbert.data.qa import QADataset
from blockbert.errors import Terminated
from blockbert.eval.qa_eval import AnswerSettings, evaluate_split

METRICS_EVERY_S = 1.0  # our choice: how often the progress bar reads the logged values


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
        write_atomically(self.path, lambda tmp: tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n"))

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
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt, Terminated)):
            self.write(trainer, "interrupted")
        else:
            self.write(trainer, "failed", f"{type(exception).__name__}: {exception}".splitlines()[0][:500])


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar counted in optimizer steps: its bar, count and rate are the run's optimizer steps
    (out of ``max_steps``, or what the epochs make), from the step a resumed run starts at; micro-batches (gradient
    accumulation) appear only in its label. Lightning's own bar counts micro-batches within an epoch.

    It shows the logged values named in SHOWN, under short labels, read at most every METRICS_EVERY_S seconds and
    after each validation and epoch. The training values are logged without ``prog_bar``: Lightning turns a
    ``prog_bar`` value into a Python number at the end of every batch, a host sync per step on a GPU."""

    SHOWN = {"val/ppl": "val ppl", "train/loss": "loss", "train/tokens_per_s": "tokens/s"}  # logged key: its label
    # a terminal narrower than this (columns) gets a shorter label and bar, the loss alone and no rate, so that the
    # bar stays on one line (our choice)
    NARROW = 160
    _metrics_shown_at = -math.inf

    def _narrow(self) -> bool:
        console = getattr(self, "_console", None)
        return console is not None and console.width < self.NARROW

    def get_metrics(self, trainer, pl_module) -> dict:
        logged = {**trainer.progress_bar_metrics, **trainer.callback_metrics}
        shown = {label: jsonable(logged[key]) for key, label in self.SHOWN.items() if key in logged}
        if "tokens/s" in shown:
            shown["tokens/s"] = f"{shown['tokens/s']:.0f}"
        if self._narrow():
            return {"loss": shown["loss"]} if "loss" in shown else {}
        return shown

    def on_train_epoch_start(self, trainer, pl_module):
        if self.is_disabled:
            return
        if self.progress is not None and self.train_progress_bar_id is None:
            self.train_progress_bar_id = self._add_task(1, "")  # one bar for the whole run: its rate is not reset
        self._show_steps(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.is_disabled and self.train_progress_bar_id is None:  # a run resumed mid-epoch
            self._initialize_train_progress_bar_id()
        now = time.monotonic()
        if now - self._metrics_shown_at >= METRICS_EVERY_S:  # reading the logged values is a host sync on a GPU
            self._update_metrics(trainer, pl_module)
            self._metrics_shown_at = now
        self._show_steps(trainer)

    def _show_steps(self, trainer) -> None:
        if self.progress is None or self.train_progress_bar_id is None:
            return
        total = trainer.estimated_stepping_batches  # max_steps, or fewer when the epochs end first
        description = self._get_train_description(trainer.current_epoch)
        self.progress.update(
            self.train_progress_bar_id, total=total, completed=trainer.global_step, description=description
        )
        self.refresh()

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        epochs = f"epoch {current_epoch + 1}/{trainer.max_epochs}, " if (trainer.max_epochs or 0) > 0 else ""
        accumulate = trainer.accumulate_grad_batches
        if self._narrow():
            return f"{epochs}steps" + (f" (x{accumulate})" if accumulate > 1 else "")
        return f"{epochs}optimizer steps" + (f" ({accumulate} micro-batches each)" if accumulate > 1 else "")

    def configure_columns(self, trainer) -> list:
        *columns, _ = super().configure_columns(trainer)  # the last: Lightning's rate in it/s
        columns[1].bar_width = 20 if self._narrow() else 30
        return columns if self._narrow() else [*columns, StepRate(self)]


class StepRate(ProgressColumn):
    """A bar's rate: optimizer steps per second on the training bar, batches per second on the others."""

    def __init__(self, bar: StepProgressBar):
        super().__init__()
        self.bar = bar

    def render(self, task) -> Text:
        unit = "steps/s" if task.id == self.bar.train_progress_bar_id else "it/s"
        speed = f"{task.speed:>.2f}" if task.speed is not None else "0.00"
        return Text(f"{speed} {unit}", style=self.bar.theme.processing_speed)


class DevEvaluation(pl.Callback):
    """EM/F1 on dev at every validation (not the sanity check), logged as ``dev/<metric>``: the logits that the
    module's ``validation_step`` returns are collected here and scored at the end of the validation."""

    def __init__(self, dataset: QADataset, windows: list, answers: AnswerSettings):
        self.dataset, self.windows, self.answers = dataset, windows, answers
        self.outputs: list = []

    def on_validation_epoch_start(self, trainer, pl_module):
        self.outputs = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.outputs.append(outputs)

    def on_validation_epoch_end(self, trainer, pl_module):
        outputs, self.outputs = self.outputs, []
        if trainer.sanity_checking:
            return
        scores, _ = evaluate_split(self.dataset, self.windows, outputs, self.answers)
        if scores is None:  # only part of dev was run (limit_val_batches): no EM/F1
            return
        pl_module.log_dict({f"dev/{k}": float(v) for k, v in scores.items()}, prog_bar=False)
