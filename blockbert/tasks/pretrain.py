"""`blockbert pretrain`: the Hydra entry point of pre-training."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.utilities import rank_zero_only

from blockbert.checkpoints import import_model, run_tokenizer
from blockbert.config import ConfigError
from blockbert.data.pretrain_datamodule import PretrainDataModule
from blockbert.lightning.callbacks import MetricsJson, StepProgressBar
from blockbert.lightning.loggers import build_logger, finish_wandb
from blockbert.lightning.pretrain_module import PretrainModule
from blockbert.lightning.resilience import RunSafety, StepCheckpoint, run_lock
from blockbert.model import BlockBertForMaskedLM, BlockBertForPreTraining
from blockbert.tasks.cluster import check_accelerator
from blockbert.tasks.common import (
    check_paper_row,
    derive_batch,
    describe_model,
    given_on_command_line,
    model_config,
    without_demo_defaults,
    world_size,
)

log = logging.getLogger(__name__)


def main(cfg: DictConfig) -> dict:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    cfg = without_demo_defaults(cfg, "pretrain")
    check_accelerator(cfg.trainer)
    with run_lock(run_dir):
        return pretrain(cfg, run_dir)


def pretrain(cfg: DictConfig, run_dir: Path, callbacks: tuple = ()) -> dict:
    """The run; ``callbacks`` join the trainer's (the whole-run benchmark times the steps with one)."""
    check_paper_row(cfg, "pretrain")
    seq_len = cfg.data.max_seq_length
    if seq_len > cfg.model.max_position_embeddings and not cfg.model.get("init_from"):
        raise ConfigError(
            f"data.max_seq_length={seq_len} exceeds model.max_position_embeddings={cfg.model.max_position_embeddings}: "
            f"set model.max_position_embeddings={seq_len} or a shorter data.max_seq_length"
        )
    nsp = bool(cfg.model.next_sentence_prediction)
    init_config = init_state = init_tokenizer = None
    if cfg.model.get("init_from"):
        model_class = BlockBertForPreTraining if nsp else BlockBertForMaskedLM
        init_config, init_state, init_tokenizer = import_model(
            model_class, cfg.model, seq_len, heads_given=given_on_command_line("model.heads")
        )
    else:
        model_config(cfg.model, block_seq_len=seq_len)  # a bad head config fails here, before any data work
    pl.seed_everything(cfg.seed, workers=True)
    world = world_size(cfg.trainer)
    batch, per_device, accumulate = derive_batch(cfg.tokens_per_batch, seq_len, cfg.data.per_device_batch_size, world)
    log.info(
        "batch: %d sequences x %d tokens = %d = %d devices x %d per device x %d accumulation steps",
        batch,
        seq_len,
        batch * seq_len,
        world,
        per_device,
        accumulate,
    )

    if init_tokenizer is None and (run_dir / "tokenizer" / "tokenizer.json").is_file():
        init_tokenizer = run_tokenizer(run_dir)  # a resume: the run's own vocabulary, never a retrained one
    data = PretrainDataModule(
        cfg.data, nsp, per_device, cfg.seed, Path(cfg.data.cache_dir), world, tokenizer=init_tokenizer
    )
    data.prepare_data()  # builds the cache once (later processes and ranks only read it)
    data.setup("fit")
    tokenizer = data.tokenizer
    if init_config:
        config = init_config
    else:
        config = model_config(
            cfg.model, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, block_seq_len=seq_len
        )  # block attention cuts N = max_seq_length into n blocks
        if len(tokenizer) != cfg.model.vocab_size:
            log.info(
                "model.vocab_size follows the tokenizer: %d (config said %d)", len(tokenizer), cfg.model.vocab_size
            )
    module = PretrainModule(config, nsp, OmegaConf.to_container(cfg.optim, resolve=True), cfg.trainer.max_steps)
    log.info(describe_model(module.model))
    if init_state:
        module.model.load_state_dict(init_state, strict=False)  # a head the checkpoint lacks starts fresh
    if cfg.compile:
        module.model.compile()
    if rank_zero_only.rank == 0 and not (run_dir / "tokenizer").is_dir():  # a resumed run keeps its files
        tokenizer.save_pretrained(str(run_dir / "tokenizer"))

    checkpoints = run_dir / "checkpoints"
    metrics = MetricsJson(
        run_dir / "metrics.json",
        {
            "run_dir": str(run_dir.resolve()),
            "model": cfg.model.name,
            "batch_size": batch,
            "seq_len": seq_len,
            "sequence_fill": data.fill,
        },
    )
    safety = RunSafety(cfg, run_dir)
    callbacks = [
        *callbacks,
        StepCheckpoint(
            dirpath=checkpoints,
            filename="step-{step}",
            monitor="step",
            mode="max",
            save_top_k=cfg.checkpoint_keep,
            every_n_train_steps=cfg.checkpoint_every_n_steps,
            save_last=True,
            auto_insert_metric_name=False,
        ),
        *safety.callbacks,
        metrics,
    ]
    if cfg.progress_bar:
        callbacks.append(StepProgressBar())
    logger = build_logger(cfg, run_dir)
    if logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer_args = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_args["val_check_interval"] = trainer_args["val_check_interval"] * accumulate  # in micro-batches
    trainer = pl.Trainer(
        **trainer_args,
        accumulate_grad_batches=accumulate,
        max_epochs=-1,
        use_distributed_sampler=False,  # the data module's sampler splits over ranks itself
        check_val_every_n_epoch=None,
        default_root_dir=str(run_dir),
        logger=logger,
        callbacks=callbacks,
        plugins=safety.plugins,
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=False,  # its FLOPs column reads 0 without an example input: describe_model instead
    )
    safety.fit(trainer, module, data)
    last = checkpoints / "last.ckpt"  # the final state, also between periodic saves
    trainer.save_checkpoint(last, weights_only=False)
    validated = [step for step, _ in module.validation_history]
    if trainer.global_step and trainer.global_step not in validated:  # end with the perplexity the run reached
        trained = dict(trainer.callback_metrics)
        safety.validate(trainer, module, data)
        # validate() drops the training metrics: put them back; the file gets this run's validation in any case
        trainer.callback_metrics.update({k: v for k, v in trained.items() if k not in trainer.callback_metrics})
        metrics.write(trainer, "finished", latest=True)
        trainer.save_checkpoint(last, weights_only=False)  # with the validation history
    if logger:
        logger.finalize("success")
        finish_wandb()  # now, so that the run directory stays the last line printed
    if trainer.global_rank == 0:
        if module.validation_history:
            history = " -> ".join(f"{ppl:.2f} (step {step})" for step, ppl in module.validation_history)
            print(f"validation perplexity: {history}")
        accuracies = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/acc")}
        if accuracies:  # the last validation's masked-token accuracies (data=longrange: long-range and local)
            print("validation accuracy: " + ", ".join(f"{k[4:]} {float(v):.3f}" for k, v in sorted(accuracies.items())))
        print("results (metrics.json, checkpoints/, tokenizer/, .hydra/config.yaml) are in:")
        print(run_dir.resolve())
    return dict(trainer.callback_metrics)
