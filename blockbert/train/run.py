"""The skeleton both training runs share (:mod:`blockbert.train.pretrain`, :mod:`blockbert.train.finetune`): the
run's tokenizer, the model's log line and compilation, the Trainer with the run's safety pieces, checkpoints,
``metrics.json`` and logger, the fit from the checkpoint to resume, the final checkpoint and the closing lines.

Hydra is not imported here: the command's entry point (:mod:`blockbert.app.commands`) composes the config and hands
it over with the run directory.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.utilities import rank_zero_only

from blockbert.display import print_results
from blockbert.formats.checkpoints import run_tokenizer
from blockbert.formats.run_dir import RunDir
from blockbert.train.callbacks import MetricsJson
from blockbert.train.loggers import build_logger, finish_wandb, wandb_sync_hint
from blockbert.train.resilience import RunSafety, StepCheckpoint, resumes
from blockbert.train.settings import describe_model

log = logging.getLogger(__name__)


class TrainingRun:
    """One training run in ``run``; ``extra_callbacks`` join the trainer's first (the whole-run benchmark times steps
    with one). The Trainer and what comes with it (metrics.json, the logger, the safety pieces) exist once
    :meth:`build_trainer` has run."""

    def __init__(self, cfg: DictConfig, run: RunDir, extra_callbacks: tuple = ()):
        self.cfg, self.run, self.extra_callbacks = cfg, run, list(extra_callbacks)
        self.trainer: pl.Trainer | None = None
        self.metrics: MetricsJson | None = None
        self.logger = None
        self.safety: RunSafety | None = None

    def own_tokenizer(self):
        """The run's own tokenizer when it has one (a resume: a trained WordPiece is not reproducible, the run must
        read the ids it trained on), else None."""
        return run_tokenizer(self.run) if self.run.has_tokenizer() else None

    def resumes(self) -> bool:
        """Whether fit starts from a checkpoint (:func:`blockbert.train.resilience.resumes`): its weights replace any
        loaded before."""
        return resumes(self.cfg.get("ckpt_path"), self.run)

    def prepare(self, module: pl.LightningModule, tokenizer) -> None:
        """Log the model, set the float32 matmul precision, compile the model if asked, and keep the tokenizer in the
        run (a resumed run keeps its files)."""
        log.info(describe_model(module.model))
        if self.cfg.matmul_precision != torch.get_float32_matmul_precision():
            torch.set_float32_matmul_precision(self.cfg.matmul_precision)
            log.info(f"float32 matrix products at precision {self.cfg.matmul_precision!r} (matmul_precision)")
        if self.cfg.compile:
            module.model.compile()
        if rank_zero_only.rank == 0 and not self.run.tokenizer_dir.is_dir():
            tokenizer.save_pretrained(str(self.run.tokenizer_dir))

    def build_trainer(self, checkpoint: dict, metrics: dict, callbacks: list, trainer_args: dict, **settings):
        """The Trainer: ``trainer_args`` (the config's ``trainer`` node, adjusted) and ``settings``; the callbacks are
        the extra ones, the periodic checkpoint (``checkpoint``: its arguments), the command's ``callbacks``, the
        safety pieces, ``metrics.json`` (``metrics``: what it records besides the logged metrics) and, with a
        logger, the learning rate."""
        self.metrics = MetricsJson(self.run.metrics_file, {"run_dir": str(self.run.path.resolve()), **metrics})
        self.safety = RunSafety(self.cfg, self.run)
        self.logger = build_logger(self.cfg, self.run)
        learning_rate = [LearningRateMonitor(logging_interval="step")] if self.logger else []
        self.trainer = pl.Trainer(
            **trainer_args,
            default_root_dir=str(self.run.path),
            logger=self.logger,
            callbacks=[
                *self.extra_callbacks,
                StepCheckpoint(dirpath=self.run.checkpoints, save_last=True, **checkpoint),
                *callbacks,
                *self.safety.callbacks,
                self.metrics,
                *learning_rate,
            ],
            plugins=self.safety.plugins,
            enable_progress_bar=self.cfg.progress_bar,
            enable_model_summary=False,  # its FLOPs column reads 0 without an example input: describe_model instead
            **settings,
        )
        return self.trainer

    def trainer_args(self) -> dict:
        return OmegaConf.to_container(self.cfg.trainer, resolve=True)

    def fit(self, module: pl.LightningModule, datamodule) -> None:
        """Train from the checkpoint to resume (if any), then save the final state as checkpoints/last.ckpt (also
        between periodic saves)."""
        self.safety.fit(self.trainer, module, datamodule)
        self.save()

    def save(self) -> None:
        self.trainer.save_checkpoint(self.run.last_checkpoint, weights_only=False)

    def finish(self, lines: list[str], contents: str, results: dict | None = None) -> None:
        """Log ``results`` and close the logger, then (rank 0) print ``lines``, what the run directory holds
        (``contents``) and the directory itself, as the command's last line."""
        sync = wandb_sync_hint()
        if self.logger:
            if results:
                self.logger.log_metrics(results, step=self.trainer.global_step)
            self.logger.finalize("success")
            finish_wandb()  # now, so that the run directory stays the last line printed
        if self.trainer.global_rank == 0:
            for line in [*lines, *([sync] if sync else [])]:
                print(line)
            print_results(contents, self.run.path)
