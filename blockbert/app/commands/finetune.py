"""`blockbert finetune`: the Hydra entry point of extractive-QA fine-tuning (the run and its evaluation:
:mod:`blockbert.train.finetune`)."""

from __future__ import annotations

from omegaconf import DictConfig

from blockbert.app.run_config import run_training


def main(cfg: DictConfig) -> dict:
    return run_training(cfg, "finetune", _finetune)


def _finetune(cfg: DictConfig, run, **given):
    from blockbert.train.finetune import finetune  # Lightning: imported after the checks that need none of it

    return finetune(cfg, run, **given)
