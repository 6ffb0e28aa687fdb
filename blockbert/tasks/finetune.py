"""`blockbert finetune`: the Hydra entry point of extractive-QA fine-tuning and its evaluation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from blockbert.checkpoints import load_run
from blockbert.config import BlockBertConfig, ConfigError
from blockbert.data.qa_datamodule import QADataModule, load_task, qa_tokenizer
from blockbert.evaluation.postprocess import final_texts, predict_answers
from blockbert.evaluation.squad import score_v1, score_v2
from blockbert.model import BlockBertForQuestionAnswering
from blockbert.tasks.cluster import check_accelerator
from blockbert.tasks.common import (
    MetricsJson,
    build_logger,
    check_paper_row,
    import_model,
    model_config,
    run_tokenizer,
    split_batch,
    without_demo_defaults,
    world_size,
)
from blockbert.tasks.finetune_module import QAModule, gather_logits
from blockbert.tasks.resilience import RunSafety, StepCheckpoint, finish_wandb, run_lock

log = logging.getLogger(__name__)


def main(cfg: DictConfig) -> dict:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    cfg = without_demo_defaults(cfg, "finetune")
    check_accelerator(cfg.trainer)
    with run_lock(run_dir):
        return finetune(cfg, run_dir)


def finetune(cfg: DictConfig, run_dir: Path) -> dict:
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
        config, state, tokenizer = import_model(BlockBertForQuestionAnswering, cfg.model, seq_len)
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
    if encoder_state is not None:
        module.model.encoder.load_state_dict(encoder_state)
    if cfg.compile:
        module.model.compile()
    version2 = data["dev"].format == "squad2"
    module.evaluate_dev = lambda outputs: evaluate_split(cfg, data, datamodule, "dev", outputs, None)[0]
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
            *safety.callbacks,
            metrics,
        ],
    )
    safety.fit(trainer, module, datamodule)
    trainer.save_checkpoint(checkpoints / "last.ckpt", weights_only=False)

    results, threshold = {}, None
    for split in [s for s in ("dev", "test") if s in data]:
        outputs = trainer.predict(module, dataloaders=datamodule.eval_dataloader(split))
        scores, threshold = evaluate_split(cfg, data, datamodule, split, outputs, threshold, out_dir=run_dir / split)
        results.update({f"{split}/{k}": v for k, v in scores.items()})
    if logger:
        logger.log_metrics(results, step=trainer.global_step)
        finish_wandb()  # now, so that the run directory stays the last line printed
    if trainer.global_rank == 0:
        metrics.extra.update(results)
        metrics.write(trainer, "finished")
        print(" | ".join(f"{k}: {v:.2f}" for k, v in results.items() if k.endswith(("exact_match", "exact", "/f1"))))
        extra = ", null_odds.json" if version2 else ""
        print(f"results (metrics.json, dev/predictions.json{extra}, checkpoints/) are in:")
        print(run_dir.resolve())
    return results


def evaluate_split(cfg, data, datamodule, split, outputs, threshold, out_dir: Path | None = None):
    """Post-process one split's logits (the model's outputs per batch), score them and optionally write
    the prediction files. SQuAD 2.0: on dev the null threshold is the official best_f1_thresh; on test
    the dev one is used. Returns (metrics, the threshold used); (None, threshold) if windows are missing.
    """
    gathered = gather_logits(outputs, len(datamodule.windows[split]))
    if gathered is None:
        return None, threshold
    starts, ends = gathered
    dataset = data[split]
    predictions = predict_answers(
        dataset.examples, datamodule.windows[split], starts, ends, cfg.data.n_best_size, cfg.data.max_answer_length
    )
    odds = {qid: min(p.null_odds, 1e9) for qid, p in predictions.items()}
    if dataset.format == "squad2":
        search = score_v2(dataset.gold, final_texts(predictions, None), na_probs=odds)
        if threshold is None:
            threshold = search["best_f1_thresh"]
        texts = final_texts(predictions, threshold)
        scores = score_v2(dataset.gold, texts)
        scores.update(
            {k: search[k] for k in ("best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh")},
            null_threshold=threshold,
        )
    else:
        texts = final_texts(predictions, None)
        scores = score_v1(dataset.gold, texts)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "predictions.json").write_text(json.dumps(texts, indent=2, ensure_ascii=False))
        nbest = {qid: p.nbest for qid, p in predictions.items()}
        (out_dir / "nbest_predictions.json").write_text(json.dumps(nbest, indent=2, ensure_ascii=False))
        if dataset.format == "squad2":
            (out_dir / "null_odds.json").write_text(json.dumps(odds, indent=2))
        if split == "test" or dataset.path.endswith("#dev"):  # halves of an MRQA dev set: keep their gold
            (out_dir / "gold.json").write_text(json.dumps(dataset.gold, indent=2, ensure_ascii=False))
    return scores, threshold


def load_pretrain_run(init_from: str):
    """(model config, encoder weights, tokenizer) from a `blockbert pretrain` run directory or checkpoint."""
    ckpt, config, weights = load_run(init_from)
    encoder = {k[len("encoder.") :]: v for k, v in weights.items() if k.startswith("encoder.")}
    tokenizer_dir = ckpt.parent.parent / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"init_from={init_from!r}: no tokenizer/ next to {ckpt.parent}")
    log.info("fine-tuning from %s", ckpt)
    return config, encoder, run_tokenizer(ckpt.parent.parent)
