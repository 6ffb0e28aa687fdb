"""Pre-training: masked LM (+ next-sentence prediction) on the run's corpus, N x B tokens per optimizer step, ending
with a validation at the last step (the perplexity the run reached)."""

from __future__ import annotations

import logging

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from blockbert.data.cache import cache_dir
from blockbert.data.pretrain_datamodule import PretrainDataModule
from blockbert.display import counted
from blockbert.formats.checkpoints import import_model
from blockbert.formats.convert import load_announced
from blockbert.formats.pretrained import BlockBertForMaskedLM, BlockBertForPreTraining
from blockbert.formats.run_dir import RunDir
from blockbert.train.callbacks import StepProgressBar
from blockbert.train.pretrain_module import PretrainModule
from blockbert.train.run import TrainingRun
from blockbert.train.settings import derive_batch, fresh_config, model_config, world_size

log = logging.getLogger(__name__)
CONTENTS = "metrics.json, checkpoints/, tokenizer/, .hydra/config.yaml"


def pretrain(cfg: DictConfig, run: RunDir, heads_given: bool = True, callbacks: tuple = ()) -> dict:
    """The run in ``run`` (its directory), from the composed config; ``heads_given``: the command line set
    ``model.heads`` (it must fit an imported checkpoint, else the split is scaled to it); ``callbacks`` join the
    trainer's. Returns the last logged metrics."""
    seq_len = cfg.data.max_seq_length
    nsp = bool(cfg.model.next_sentence_prediction)
    state = tokenizer = None
    if cfg.model.get("init_from"):
        model_class = BlockBertForPreTraining if nsp else BlockBertForMaskedLM
        config, state, tokenizer = import_model(model_class, cfg.model, seq_len, heads_given=heads_given)
        log.info("tokenizer: the checkpoint's, a vocabulary of %d (data.tokenizer is not read)", len(tokenizer))
    else:  # model.* (a bad head config or length fails here, before any data work); the vocabulary comes later
        config = model_config(cfg.model)
        config.check_sequence_length(seq_len, "data.max_seq_length")
    pl.seed_everything(cfg.seed, workers=True)
    world = world_size(cfg.trainer)
    batch, per_device, accumulate = derive_batch(cfg.tokens_per_batch, seq_len, cfg.data.per_device_batch_size, world)
    log.info(
        "batch: %d sequences x %d tokens = %d = %s x %d per device x %s",
        *(batch, seq_len, batch * seq_len, counted(world, "device"), per_device),
        counted(accumulate, "accumulation step"),
    )
    training = TrainingRun(cfg, run, callbacks)
    if tokenizer is None:  # a resume reads its own; else the data module trains or loads one
        tokenizer = training.own_tokenizer()
    data = PretrainDataModule(
        cfg.data, nsp, per_device, cfg.seed, cache_dir(cfg), world, tokenizer=tokenizer, accumulate=accumulate
    )
    data.prepare_data()  # builds the cache once (later processes and ranks only read it)
    data.setup("fit")
    if state is None:
        config = fresh_config(config, data.tokenizer, seq_len)
    module = PretrainModule(config, nsp, OmegaConf.to_container(cfg.optim, resolve=True), cfg.trainer.max_steps)
    if state:
        source = f"model.init_from={cfg.model.init_from}"  # a missing head starts fresh
        load_announced(module.model, state, source, resuming=training.resumes())
    training.prepare(module, data.tokenizer)
    trainer_args = training.trainer_args()
    trainer_args["val_check_interval"] *= accumulate  # in micro-batches
    trainer = training.build_trainer(
        checkpoint=dict(
            filename=RunDir.STEP_CHECKPOINT,
            monitor="step",
            mode="max",
            save_top_k=cfg.checkpoint_keep,
            every_n_train_steps=cfg.checkpoint_every_n_steps,
            auto_insert_metric_name=False,
        ),
        metrics=dict(model=cfg.model.name, batch_size=batch, seq_len=seq_len, sequence_fill=data.fill),
        callbacks=[StepProgressBar()] if cfg.progress_bar else [],
        trainer_args=trainer_args,
        accumulate_grad_batches=accumulate,
        max_epochs=-1,
        use_distributed_sampler=False,  # the data module's sampler splits over ranks itself
        check_val_every_n_epoch=None,
    )
    training.fit(module, data)
    close_with_validation(training, module, data)
    training.finish(summary_lines(trainer, module), CONTENTS)
    return dict(trainer.callback_metrics)


def close_with_validation(training: TrainingRun, module: PretrainModule, data) -> None:
    """End with the perplexity the run reached: a validation at the last step when it had none."""
    trainer = training.trainer
    if not trainer.global_step or trainer.global_step in [step for step, _ in module.validation_history]:
        return
    trained = dict(trainer.callback_metrics)
    training.safety.validate(trainer, module, data)
    # validate() drops the training metrics: put them back; the file gets this run's validation in any case
    trainer.callback_metrics.update({k: v for k, v in trained.items() if k not in trainer.callback_metrics})
    training.metrics.write(trainer, "finished", latest=True)
    training.save()  # with the validation history


def summary_lines(trainer: pl.Trainer, module: PretrainModule) -> list[str]:
    """The validation perplexities of the run and the last validation's masked-token accuracies (data=longrange:
    long-range and local too)."""
    lines = []
    if module.validation_history:
        history = " -> ".join(f"{ppl:.2f} (step {step})" for step, ppl in module.validation_history)
        lines.append(f"validation perplexity: {history}")
    accuracies = sorted((k[4:], float(v)) for k, v in trainer.callback_metrics.items() if k.startswith("val/acc"))
    if accuracies:
        lines.append("validation accuracy: " + ", ".join(f"{name} {value:.3f}" for name, value in accuracies))
    return lines
