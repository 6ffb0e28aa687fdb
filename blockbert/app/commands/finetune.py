"""`blockbert finetune`: the Hydra entry point of extractive-QA fine-tuning (the run and its evaluation:
:mod:`blockbert.train.finetune`)."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from blockbert.app.run_config import check_paper_row, given_on_command_line, without_demo_defaults
from blockbert.formats.checkpoints import load_pretrain_run
from blockbert.formats.run_dir import RunDir
from blockbert.train.cluster import check_accelerator
from blockbert.train.finetune import finetune
from blockbert.train.resilience import run_lock


def main(cfg: DictConfig) -> dict:
    run = RunDir(HydraConfig.get().runtime.output_dir)
    # read once, here: its N decides the config; the run takes its weights and tokenizer (model.init_from beside it
    # is refused there)
    start = load_pretrain_run(cfg.init_from) if cfg.get("init_from") and not cfg.model.get("init_from") else None
    cfg = without_demo_defaults(cfg, "finetune", start[0].block_seq_len if start else None)
    check_accelerator(cfg.trainer)
    with run_lock(run):
        check_paper_row(cfg, "finetune")
        return finetune(cfg, run, start=start, heads_given=given_on_command_line("model.heads"))
