"""`blockbert finetune`: the Hydra entry point of extractive-QA fine-tuning and its evaluation."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from blockbert.checkpoints import import_model, load_pretrain_run, run_tokenizer
from blockbert.config import BlockBertConfig, ConfigError
from blockbert.data.qa_datamodule import QADataModule, load_task, qa_tokenizer
from blockbert.evaluation.qa_eval import AnswerSettings, DevEvaluation, evaluate_split
from blockbert.lightning.callbacks import MetricsJson
from blockbert.lightning.loggers import build_logger, finish_wandb
from blockbert.lightning.qa_module import QAModule
from blockbert.lightning.resilience import RunSafety, StepCheckpoint, run_lock
from blockbert.model import BlockBertForQuestionAnswering
from blockbert.tasks.cluster import check_accelerator
from blockbert.tasks.common import (
    check_paper_row,
    describe_model,
    given_on_command_line,
    model_config,
    split_batch,
    without_demo_defaults,
    world_size,
)

log = logging.getLogger(__name__)


def main(cfg: DictConfig) -> dict:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    cfg = without_demo_defaults(cfg, "finetune")
    check_accelerator(cfg.trainer)
    with run_lock(run_dir):
        return finetune(cfg, run_dir)


def finetune(cfg: DictConfig, run_dir: Path, callbacks: tuple = ()) -> dict:
    """The run and its evaluation; ``callbacks`` join the trainer's (the whole-run benchmark times the steps)."""
    check_paper_row(cfg, "finetune")
    cache_dir = Path(cfg.cache_dir).expanduser()
    if cfg.init_from and cfg.model.get("init_from"):
        raise ConfigError(
            f"init_from={cfg.init_from!r} and model.init_from={cfg.model.init_from!r}: give one "
            "(a blockbert pre-training run, or a Hugging Face checkpoint)"
        )
    seq_len = cfg.data.max_seq_length
    if cfg.init_from:
        config, encoder_state, tokenizer = load_pretrain_run(cfg.init_from)
    elif cfg.model.get("init_from"):
        config, state, tokenizer = import_model(
            BlockBertForQuestionAnswering, cfg.model, seq_len, heads_given=given_on_command_line("model.heads")
        )
        encoder_state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    else:
        model_config(cfg.model, block_seq_len=seq_len)  # validate before any data work
        config, encoder_state, tokenizer = None, None, None
    pl.seed_everything(cfg.seed, workers=True)
    data = load_task(cfg.task, cache_dir)
    if tokenizer is None:  # a fresh model: its blocks are cut from the fine-tuning length
        has_own = (run_dir / "tokenizer" / "tokenizer.json").is_file()  # a resume keeps the run's vocabulary
        tokenizer = run_tokenizer(run_dir) if has_own else qa_tokenizer(data, cfg.task.tokenizer_vocab_size, cache_dir)
        config = model_config(
            cfg.model, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, block_seq_len=seq_len
        )
    model = BlockBertConfig(**config)
    if seq_len > model.max_sequence_length:
        raise ConfigError(
            f"data.max_seq_length={seq_len} exceeds the model's {model.max_sequence_length} positions: "
            "fine-tune at the pre-training length or shorter (or import with model.init_from, which "
            "extends positions)"
        )
    if model.attention == "block" and seq_len > model.attention_length:  # a pre-trained model keeps its N
        raise ConfigError(
            f"data.max_seq_length={seq_len} exceeds block_seq_len={model.attention_length}, the length "
            "the model's blocks are cut from: fine-tune at that length or shorter"
        )
    world = world_size(cfg.trainer)
    if world > 1:
        raise ConfigError(f"fine-tuning runs on one device for now (trainer gives {world}): set trainer.devices=1")
    batch = cfg.optim.batch_size
    per_device, accumulate = split_batch(batch, cfg.data.per_device_batch_size, world)
    datamodule = QADataModule(data, tokenizer, cfg.data, per_device, seed=cfg.seed, cache_dir=cache_dir)
    datamodule.setup()
    module = QAModule(config, OmegaConf.to_container(cfg.optim, resolve=True))
    log.info(describe_model(module.model))
    if encoder_state is not None:
        module.model.encoder.load_state_dict(encoder_state)
    if cfg.compile:
        module.model.compile()
    version2 = data["dev"].format == "squad2"
    answers = AnswerSettings(cfg.data.n_best_size, cfg.data.max_answer_length)
    if pl.utilities.rank_zero_only.rank == 0 and not (run_dir / "tokenizer").is_dir():  # a resume keeps its files
        tokenizer.save_pretrained(str(run_dir / "tokenizer"))

    checkpoints = run_dir / "checkpoints"
    metrics = MetricsJson(
        run_dir / "metrics.json",
        {"run_dir": str(run_dir.resolve()), "task": cfg.task.name, "init_from": cfg.init_from, "batch_size": batch},
    )
    logger = build_logger(cfg, run_dir)
    trainer_args = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_args.pop("val_check_interval", None)  # fine-tuning validates once per epoch
    safety = RunSafety(cfg, run_dir)
    trainer = pl.Trainer(
        **trainer_args,
        accumulate_grad_batches=accumulate,
        default_root_dir=str(run_dir),
        logger=logger,
        enable_progress_bar=cfg.progress_bar,
        plugins=safety.plugins,
        callbacks=[
            StepCheckpoint(
                dirpath=checkpoints, save_last=True, save_top_k=0, every_n_train_steps=cfg.checkpoint_every_n_steps
            ),
            *callbacks,
            DevEvaluation(data["dev"], datamodule.windows["dev"], answers),
            *safety.callbacks,
            metrics,
        ],
    )
    safety.fit(trainer, module, datamodule)
    trainer.save_checkpoint(checkpoints / "last.ckpt", weights_only=False)

    results, threshold, timing = {}, None, {}
    for split in [s for s in ("dev", "test") if s in data]:
        start = time.perf_counter()
        outputs = trainer.predict(module, dataloaders=datamodule.eval_dataloader(split))
        scores, threshold = evaluate_split(
            data[split], datamodule.windows[split], outputs, answers, threshold, run_dir / split, split
        )
        seconds = time.perf_counter() - start  # windows scored in batches, then the n-best post-processing
        timing[split] = {"seconds": seconds, "questions_per_s": len(data[split].examples) / seconds}
        log.info("%s: %d questions evaluated in %.1f s", split, len(data[split].examples), seconds)
        results.update({f"{split}/{k}": v for k, v in scores.items()})
    if logger:
        logger.log_metrics(results, step=trainer.global_step)
        finish_wandb()  # now, so that the run directory stays the last line printed
    if trainer.global_rank == 0:
        metrics.extra.update(results, eval_timing=timing)  # wall time: not a metric to log or rank by
        metrics.write(trainer, "finished")
        print(" | ".join(f"{k}: {v:.2f}" for k, v in results.items() if k.endswith(("exact_match", "exact", "/f1"))))
        extra = ", null_odds.json" if version2 else ""
        print(f"results (metrics.json, dev/predictions.json{extra}, checkpoints/) are in:")
        print(run_dir.resolve())
    return results
