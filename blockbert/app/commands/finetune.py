"""`blockbert finetune`: the Hydra entry point of extractive-QA fine-tuning (the run and its evaluation:
:mod:`blockbert.train.finetune`)."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from blockbert.app.run_config import check_paper_row, given_on_command_line, locked, log_starting_point
from blockbert.formats.run_dir import RunDir
from blockbert.train.cluster import check_accelerator
from blockbert.train.finetune import finetune


def main(cfg: DictConfig) -> dict:
    run = RunDir(HydraConfig.get().runtime.output_dir)
    check_accelerator(cfg.trainer)
    with locked(run):
        log_starting_point(cfg, "finetune")
        check_paper_row(cfg, "finetune")
        return finetune(cfg, run, heads_given=given_on_command_line("model.heads"))
