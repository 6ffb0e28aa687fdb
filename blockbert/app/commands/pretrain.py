"""`blockbert pretrain`: the Hydra entry point of pre-training (the run itself: :mod:`blockbert.train.pretrain`)."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from blockbert.app.run_config import check_paper_row, given_on_command_line, locked, log_starting_point
from blockbert.formats.run_dir import RunDir
from blockbert.train.cluster import check_accelerator
from blockbert.train.pretrain import pretrain


def main(cfg: DictConfig) -> dict:
    run = RunDir(HydraConfig.get().runtime.output_dir)
    check_accelerator(cfg.trainer)
    with locked(run):
        log_starting_point(cfg, "pretrain")
        check_paper_row(cfg, "pretrain")
        return pretrain(cfg, run, heads_given=given_on_command_line("model.heads"))
