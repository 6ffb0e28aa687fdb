"""Fine-tuning on extractive QA (SQuAD, MRQA): from a pre-training run, a Hugging Face checkpoint or scratch, with
dev EM/F1 at every validation, then each split scored and its predictions written."""

from __future__ import annotations

import dataclasses
import logging
import time

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from blockbert.data.cache import cache_dir
from blockbert.data.qa_datamodule import QADataModule, load_task, qa_tokenizer
from blockbert.eval.qa_eval import AnswerSettings, evaluate_split
from blockbert.formats.checkpoints import import_model, load_pretrain_run
from blockbert.formats.convert import load_announced
from blockbert.formats.pretrained import BlockBertForQuestionAnswering
from blockbert.formats.run_dir import RunDir
from blockbert.model.config import MAY_DIFFER_FROM_RUN, BlockBertConfig
from blockbert.train.callbacks import DevEvaluation, StepProgressBar
from blockbert.train.qa_module import QAModule
from blockbert.train.run import TrainingRun
from blockbert.train.settings import fresh_config, model_config, split_batch, world_size

log = logging.getLogger(__name__)


def finetune(cfg: DictConfig, run: RunDir, heads_given: bool = True, callbacks: tuple = ()) -> dict:
    """The run in ``run`` and its evaluation, from the composed config. ``heads_given``: the command line set
    ``model.heads``; ``callbacks`` join the trainer's. Returns the metrics of every split."""
    seq_len = cfg.data.max_seq_length
    cache = cache_dir(cfg)
    config, encoder, tokenizer = starting_point(cfg, heads_given)
    if tokenizer is not None:
        log.info("tokenizer: the checkpoint's, a vocabulary of %d (task.tokenizer_vocab_size unread)", len(tokenizer))
    pretrained = encoder is not None  # a pre-trained model keeps its positions and N
    hint = "fine-tune at the model's length or shorter (an import with model.init_from extends its positions)"
    config.check_sequence_length(seq_len, "data.max_seq_length", hint if pretrained else None)
    world = world_size(cfg.trainer)
    pl.seed_everything(cfg.seed, workers=True)
    data = load_task(cfg.task, cache)
    training = TrainingRun(cfg, run, callbacks)
    if tokenizer is None:  # a fresh model: its vocabulary from the task's text, its blocks cut from this length
        tokenizer = training.own_tokenizer()
        if tokenizer is None:
            tokenizer = qa_tokenizer(data, cfg.task.tokenizer_vocab_size, cache)
        config = fresh_config(config, tokenizer, seq_len)
    batch = cfg.optim.batch_size
    per_device, accumulate = split_batch(batch, cfg.data.per_device_batch_size, world)
    datamodule = QADataModule(data, tokenizer, cfg.data, per_device, seed=cfg.seed, cache_dir=cache, world_size=world)
    datamodule.setup()
    module = QAModule(config, OmegaConf.to_container(cfg.optim, resolve=True))
    if encoder is not None:
        source = f"init_from={cfg.init_from}" if cfg.get("init_from") else f"model.init_from={cfg.model.init_from}"
        encoder = {f"encoder.{k}": v for k, v in encoder.items()}
        load_announced(module.model, encoder, source, task_head="qa", resuming=training.resumes())
    training.prepare(module, tokenizer)
    answers = AnswerSettings(cfg.data.n_best_size, cfg.data.max_answer_length)
    trainer_args = training.trainer_args()
    trainer_args.pop("val_check_interval", None)  # fine-tuning validates once per epoch
    training.build_trainer(
        checkpoint=dict(save_top_k=0, every_n_train_steps=cfg.checkpoint_every_n_steps),
        metrics=dict(task=cfg.task.name, init_from=cfg.init_from, batch_size=batch),
        callbacks=[DevEvaluation(data["dev"], datamodule.windows["dev"], answers)]
        + ([StepProgressBar()] if cfg.progress_bar else []),
        trainer_args=trainer_args,
        accumulate_grad_batches=accumulate,
        use_distributed_sampler=False,  # the data module splits training over ranks itself; dev is read whole
    )
    training.fit(module, datamodule)
    results, timing = evaluate(training, module, datamodule, data, answers)
    if training.trainer.global_rank == 0:
        training.metrics.extra.update(results, eval_timing=timing)  # wall time: not a metric to log or rank by
        training.metrics.write(training.trainer, "finished")
    scores = " | ".join(f"{k}: {v:.2f}" for k, v in results.items() if k.endswith(("exact_match", "exact", "/f1")))
    extra = ", dev/null_odds.json" if data["dev"].format == "squad2" else ""
    extra += ", test/" if "test" in data else ""  # MRQA's split dev set, or task.test_file
    training.finish([scores], f"metrics.json, dev/predictions.json{extra}, checkpoints/", results)
    return results


def starting_point(cfg: DictConfig, heads_given: bool) -> tuple[BlockBertConfig, dict, object]:
    """(model config, encoder weights, tokenizer) to fine-tune: a pre-training run's (``init_from``), a Hugging Face
    checkpoint's (``model.init_from``), or model.* from scratch (no weights, no tokenizer yet: both come from the
    task). The composed config already holds the checkpoint's model (:func:`blockbert.formats.compose.finish`)."""
    if cfg.get("init_from"):
        config, encoder, tokenizer = load_pretrain_run(cfg.init_from)
        chosen = {key: cfg.model[key] for key in MAY_DIFFER_FROM_RUN if key in cfg.model}  # the command line's
        return dataclasses.replace(config, **chosen), encoder, tokenizer
    if cfg.model.get("init_from"):
        config, state, tokenizer = import_model(
            BlockBertForQuestionAnswering, cfg.model, cfg.data.max_seq_length, heads_given=heads_given
        )
        return config, {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}, tokenizer
    return model_config(cfg.model), None, None


def evaluate(training: TrainingRun, module: QAModule, datamodule, data: dict, answers) -> tuple[dict, dict]:
    """Each split scored (SQuAD 2.0's null threshold tuned on dev, applied to test), its prediction files written
    into the run directory; (metrics as ``split/metric``, seconds and questions/s per split)."""
    results, threshold, timing = {}, None, {}
    for split in [s for s in ("dev", "test") if s in data]:
        start = time.perf_counter()
        outputs = training.safety.predict(training.trainer, module, datamodule.eval_dataloader(split))
        # every process scores the whole split (the same scores); rank 0 writes the files
        out_dir = training.run.predictions_dir(split) if training.trainer.global_rank == 0 else None
        scores, threshold = evaluate_split(
            data[split], datamodule.windows[split], outputs, answers, threshold, out_dir, split
        )
        seconds = time.perf_counter() - start  # windows scored in batches, then the n-best post-processing
        timing[split] = {"seconds": seconds, "questions_per_s": len(data[split].examples) / seconds}
        if out_dir is not None:  # rank 0's line: another rank's could follow the run directory, the last line
            log.info("%s: %d questions evaluated in %.1f s", split, len(data[split].examples), seconds)
        results.update({f"{split}/{k}": v for k, v in scores.items()}, **{f"{split}/loss": split_loss(outputs)})
    return results, timing


def split_loss(outputs: list) -> float:
    """The mean loss over a split's windows, from the prediction batches, as Lightning's validation averages dev/loss
    (weighted by batch size): scored again with the final weights, so that a finished run re-scored on another dev
    file does not keep the loss of the first one (it did)."""
    total = sum(float(loss) * len(idx) for idx, _, _, loss in outputs)
    return total / sum(len(idx) for idx, *_ in outputs)
