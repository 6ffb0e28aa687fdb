"""`blockbert pretrain`: the Hydra entry point of pre-training (the run itself: :mod:`blockbert.train.pretrain`)."""

from __future__ import annotations

from omegaconf import DictConfig

from blockbert.app.run_config import run_training


def main(cfg: DictConfig) -> dict:
    return run_training(cfg, "pretrain", _pretrain)


def _pretrain(cfg: DictConfig, run, **given):
    from blockbert.train.pretrain import pretrain  # Lightning: imported after the checks that need none of it

    return pretrain(cfg, run, **given)
