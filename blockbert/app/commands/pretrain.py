"""`blockbert pretrain`: the Hydra entry point of pre-training (the run itself: :mod:`blockbert.train.pretrain`)."""

from __future__ import annotations

from omegaconf import DictConfig

from blockbert.app.run_config import run_training
from blockbert.train.pretrain import pretrain


def main(cfg: DictConfig) -> dict:
    return run_training(cfg, "pretrain", pretrain)
