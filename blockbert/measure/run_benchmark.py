"""Whole-run throughput, side by side: what a user feels of pre-training and fine-tuning, not one kernel.

For each model, three loops train on the same data (the generated corpus or QA set, tokenised once by our
pipeline), at the same sizes, batch, N and number of steps:

- ``blockbert``: the ``blockbert pretrain`` / ``blockbert finetune`` run (the command's composed config and its
  run function: Lightning, our data modules and callbacks, checkpointing at the end; not the Hydra job around it),
  with a callback timing the steps;
- ``hf_trainer``: the peer a user would pick, a Hugging Face ``Trainer`` on ``BertForMaskedLM`` (with
  ``DataCollatorForLanguageModeling`` over the same token sequences) or ``BertForQuestionAnswering`` (over the
  same windows), SDPA attention, dense: it is compared with each of our models;
- ``bare``: our model in a plain PyTorch loop over our data loader (AdamW, warm-up schedule, clipping 1.0):
  the floor for our loop's overhead.

Each loop runs in a fresh process (so peak memory is its own: the process's peak RSS on CPU, the CUDA
allocator's peak on GPU). A step's time is the wall time between two optimizer steps, everything included
(data, forward, backward, optimizer, logging); the first ``warmup`` steps are dropped. Throughput is the real
(non-padding) tokens for pre-training, or examples (windows) for fine-tuning, that each loop counted in its timed
steps over their total time; the median step and the interquartile range of the step times show the spread.
Neither loop logs to an external service (``logger=none``, ``report_to="none"``) and neither draws a progress
bar.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from blockbert.measure.data_benchmark import peak_rss_mb
from blockbert.measure.timing import StepClock, synchronize, timing_summary

PEER = "hf_trainer"


def run(mode: str, models: list[str], spec: dict, log=print) -> Iterator[dict]:
    """One record per (model, loop), as each loop ends: the peer once (dense BERT), then ours; each loop in its own
    process. :func:`with_ratios` relates them."""
    jobs = [(PEER, "hf_bert")] + [(loop, model) for model in models for loop in ("blockbert", "bare")]
    for loop, model in jobs:
        start = time.perf_counter()
        record = in_child(mode, loop, model, spec)
        log(
            f"{mode} {loop} {model}: {record.get('median_s') or record.get('error')} s/step "
            f"({time.perf_counter() - start:.0f} s in all)"
        )
        yield record


def with_ratios(records: list[dict]) -> list[dict]:
    """Adds ``vs_peer`` (throughput / the HF Trainer's: above 1 is faster) and ``vs_bare`` (the blockbert loop's
    median step time / the bare loop's, same model: our loop's overhead; above 1 is slower)."""
    peer = next((r for r in records if r["loop"] == PEER and r.get("throughput")), None)
    bare = {r["model"]: r for r in records if r["loop"] == "bare" and r.get("median_s")}
    for r in records:
        r["vs_peer"] = r["throughput"] / peer["throughput"] if peer and r.get("throughput") else None
        floor = bare.get(r["model"])
        r["vs_bare"] = (
            r["median_s"] / floor["median_s"] if r["loop"] == "blockbert" and floor and r.get("median_s") else None
        )
    return records


def in_child(mode: str, loop: str, model: str, spec: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        args = [sys.executable, "-m", "blockbert.measure.run_benchmark", mode, loop, model, json.dumps(spec), str(out)]
        done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
        if done.returncode or not out.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"mode": mode, "loop": loop, "model": model, "error": tail[0][:300]}
        return json.loads(out.read_text())


def summary(mode: str, loop: str, model: str, times: list[float], units: list[int], spec: dict) -> dict:
    """After warm-up: the median step and its IQR, and the throughput: the real tokens (pre-training) or examples
    (fine-tuning) the loop counted in its timed steps over their total time."""
    kept, counted = times[spec["warmup"] :], units[spec["warmup"] :]
    stats = timing_summary(kept)
    return {
        "mode": mode,
        "loop": loop,
        "model": model,
        "steps": len(kept),
        "median_s": stats["median_s"],
        "iqr_s": stats["iqr_s"],
        "unit": "tokens" if mode == "pretrain" else "examples",
        "per_step": sum(counted) / len(counted),
        "throughput": sum(counted) / sum(kept),
        "peak_memory_mb": peak_memory_mb(),
    }


def peak_memory_mb() -> float:
    """The loop's peak memory, MiB: the CUDA allocator's peak on a GPU, else the process's peak RSS."""
    import torch

    if torch.cuda.is_available() and torch.cuda.max_memory_allocated():
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mb()


# ---------------------------------------------------------------- in the child process


def composed(mode: str, model: str, spec: dict):
    """The command's own config (``conf/pretrain.yaml`` or ``finetune.yaml``) with the benchmark's settings."""
    from blockbert.formats.compose import compose

    n, batch, steps = spec["seq_len"], spec["batch_size"], spec["warmup"] + spec["steps"]
    sizes = [f"model.{key}={value}" for key, value in spec["size"].items()]
    common = [
        f"model={model}",
        *sizes,
        f"model.max_position_embeddings={max(n, 512)}",
        f"data.max_seq_length={n}",
        f"data.per_device_batch_size={batch}",
        f"trainer.max_steps={steps}",
        f"trainer.accelerator={spec['accelerator']}",
        f"trainer.precision={spec['precision']}",
        "logger=none",
        "progress_bar=false",
        f"checkpoint_every_n_steps={10 * steps}",
        f"seed={spec['seed']}",
        f"paths.cache_dir={spec['cache_dir']}",
    ]
    if mode == "pretrain":
        extra = [
            f"tokens_per_batch={batch * n * spec.get('accumulate', 1)}",  # accumulate: micro-batches per step
            f"trainer.val_check_interval={10 * steps}",
            f"data.generated_documents={spec['documents']}",
            f"data.rows_per_document={spec['rows_per_document']}",
        ]
    else:
        extra = [
            f"optim.batch_size={batch}",
            f"task.generated_questions={spec['questions']}",
            *([f"task.generated_people=[{','.join(map(str, spec['people']))}]"] if spec.get("people") else []),
            "trainer.max_epochs=1000",
        ]
    return compose(mode, [*common, *extra, "~experiment"])


def child(mode: str, loop: str, model: str, spec: dict, out: Path) -> None:
    import torch

    torch.manual_seed(spec["seed"])
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        extra = {}
        if loop == "blockbert":
            times, units, extra = blockbert_loop(mode, model, spec, run_dir)
        elif loop == "bare":
            times, units, extra = bare_loop(mode, model, spec, run_dir)
        else:
            times, units = trainer_loop(mode, spec, run_dir)
        record = summary(mode, loop, model, times, units, spec)  # the peak memory before anything else runs
    out.write_text(json.dumps({**record, **extra}))


def units_of(mode: str, batch: dict) -> int:
    """What a step counts: real (non-padding) tokens for pre-training, examples (windows) for fine-tuning."""
    return int(batch["attention_mask"].sum()) if mode == "pretrain" else len(batch["input_ids"])


def blockbert_loop(mode: str, model: str, spec: dict, run_dir: Path):
    import pytorch_lightning as pl

    from blockbert.formats.run_dir import RunDir

    class Steps(pl.Callback):
        def __init__(self):
            self.clock, self.step, self.tokens = StepClock(), 0, 0

        def on_train_start(self, trainer, pl_module):
            self.clock.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if mode == "pretrain":  # counted by the module on the host (summing the mask here would be a host sync)
                self.clock.count(pl_module.real_tokens - self.tokens)
                self.tokens = pl_module.real_tokens
            else:
                self.clock.count(units_of(mode, batch))  # examples: a shape, no sync
            if trainer.global_step != self.step:  # else inside a gradient accumulation
                self.clock.step()
                self.step = trainer.global_step

    timer, cfg, run = Steps(), composed(mode, model, spec), RunDir(run_dir)
    if mode == "pretrain":
        from blockbert.train.pretrain import pretrain

        pretrain(cfg, run, callbacks=(timer,))
        return timer.clock.times, timer.clock.units, {}
    from blockbert.train.finetune import finetune

    finetune(cfg, run, callbacks=(timer,))  # then dev: windows in batches, n-best post-processing
    timing = run.metrics()["eval_timing"]["dev"]
    extra = {"eval_s": timing["seconds"], "eval_questions_per_s": timing["questions_per_s"]}
    return timer.clock.times, timer.clock.units, extra


def _our_data(mode: str, cfg, spec: dict):
    """(data module, model config) built as the blockbert run builds them."""
    from blockbert.data.cache import cache_dir
    from blockbert.train.settings import fresh_config, model_config

    cache = cache_dir(cfg)
    if mode == "pretrain":
        from blockbert.data.pretrain_datamodule import PretrainDataModule

        data = PretrainDataModule(cfg.data, False, spec["batch_size"], cfg.seed, cache)
        data.prepare_data()
        data.setup("fit")
    else:
        from blockbert.data.qa_datamodule import QADataModule, load_task, qa_tokenizer

        task = load_task(cfg.task, cache)
        tokenizer = qa_tokenizer(task, cfg.task.tokenizer_vocab_size, cache)
        data = QADataModule(task, tokenizer, cfg.data, spec["batch_size"], seed=cfg.seed, cache_dir=cache)
        data.setup()
    tokenizer = data.tokenizer
    config = fresh_config(model_config(cfg.model), tokenizer, spec["seq_len"])
    return data, config


def _batches(loader, count: int):
    """``count`` batches, passing over the data again as often as needed."""
    while True:
        for batch in loader:
            yield batch
            count -= 1
            if count == 0:
                return


def bare_loop(mode: str, model: str, spec: dict, run_dir: Path):
    import torch

    from blockbert.model.modeling import BlockBertForMaskedLM, BlockBertForQuestionAnswering
    from blockbert.train.optim import adamw_with_warmup

    cfg = composed(mode, model, spec)
    data, config = _our_data(mode, cfg, spec)
    device = torch.device("cuda" if spec["accelerator"] == "gpu" else "cpu")
    net = (BlockBertForMaskedLM if mode == "pretrain" else BlockBertForQuestionAnswering)(config).to(device).train()
    steps = spec["warmup"] + spec["steps"]
    optim = dict(cfg.optim)
    warmup = optim["warmup_steps"] if mode == "pretrain" else int(optim["warmup_proportion"] * steps)
    setup = adamw_with_warmup(net, optim, warmup, steps)
    optimizer, schedule = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec["precision"].startswith("bf16"))
    clock, parts = StepClock(), {part: [] for part in STEP_PARTS}
    clock.start()
    real = positions = 0
    for step, batch in enumerate(_batches(data.train_dataloader(), steps)):
        units, mask = units_of(mode, batch), batch["attention_mask"]  # on the host, before the batch moves
        if step >= spec["warmup"]:
            real, positions = real + int(mask.sum()), positions + mask.numel()
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "window_index"}
        marks = [clock.last, time.perf_counter()]  # the data part ends here
        with autocast:
            loss = net(**batch, masked_only=True).loss if mode == "pretrain" else net(**batch).loss
        float(loss)  # a host sync, as a loop that watches its loss does (and the end of the forward on a GPU)
        marks.append(time.perf_counter())
        loss.backward()
        synchronize(device)
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        clock.count(units)
        marks.append(clock.step())
        for part, begin, end in zip(STEP_PARTS, marks, marks[1:]):
            parts[part].append(end - begin)
    kept = {part: statistics.median(values[spec["warmup"] :]) for part, values in parts.items()}
    fill = real / positions if positions else None  # real tokens' share of the timed batches' positions
    return clock.times, clock.units, {"parts_s": kept, "fill": fill}  # where a step's time goes


STEP_PARTS = ("data", "forward", "backward", "optimizer")


def trainer_loop(mode: str, spec: dict, run_dir: Path):
    """Hugging Face's Trainer on BERT with SDPA attention, over exactly our sequences (pre-training: the token
    ids, masked by DataCollatorForLanguageModeling; fine-tuning: our padded windows)."""
    import datasets
    import transformers

    from blockbert.data.sampler import default_workers
    from blockbert.formats.convert import hf_config_values

    cfg = composed(mode, "roberta_1seq", spec)
    data, config = _our_data(mode, cfg, spec)
    hf_config = transformers.BertConfig(**hf_config_values(config), attn_implementation="sdpa")
    steps = spec["warmup"] + spec["steps"]
    if mode == "pretrain":
        model = transformers.BertForMaskedLM(hf_config)
        train = data.train_set.select_columns(["input_ids"])
        collator = transformers.DataCollatorForLanguageModeling(data.tokenizer, mlm_probability=0.15)
        warmup = cfg.optim.warmup_steps
    else:
        model = transformers.BertForQuestionAnswering(hf_config)
        windows = data.windows["train"]
        train = datasets.Dataset.from_dict(
            {
                "input_ids": [w.input_ids for w in windows],
                "token_type_ids": [w.token_type_ids for w in windows],
                "attention_mask": [[1] * len(w.input_ids) for w in windows],
                "start_positions": [w.start_position for w in windows],
                "end_positions": [w.end_position for w in windows],
            }
        )
        collator = transformers.DataCollatorWithPadding(data.tokenizer)
        warmup = int(cfg.optim.warmup_proportion * steps)
    timer = _trainer_steps()
    collator = _Counting(collator, mode, timer.clock)
    workers = default_workers(spec["accelerator"] == "gpu")
    args = transformers.TrainingArguments(
        output_dir=str(run_dir / "hf"),
        per_device_train_batch_size=spec["batch_size"],
        max_steps=steps,
        learning_rate=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        warmup_steps=warmup,
        max_grad_norm=1.0,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=spec["accelerator"] == "cpu",
        dataloader_num_workers=workers,  # as our loaders have them (data.num_workers null)
        dataloader_persistent_workers=workers > 0,
        bf16=spec["precision"].startswith("bf16"),
        seed=spec["seed"],
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=train, data_collator=collator, callbacks=[timer]
    )
    trainer.train()
    return timer.clock.times, timer.clock.units


def _trainer_steps():
    """A TrainerCallback with a :class:`StepClock` of the optimizer steps (the first from the train start)."""
    import transformers

    class Steps(transformers.TrainerCallback):
        def __init__(self):
            self.clock = StepClock()

        def on_train_begin(self, args, state, control, **kwargs):
            self.clock.start()

        def on_step_end(self, args, state, control, **kwargs):
            self.clock.step()

    return Steps()


class _Counting:
    """The Trainer's collator, counting what each batch it builds holds. Accelerate's loader builds one batch
    ahead, so a step is credited with the next step's batch: over the timed steps, as many batches all the same."""

    def __init__(self, collator, mode: str, clock):
        self.collator, self.mode, self.clock = collator, mode, clock

    def __call__(self, features):
        batch = self.collator(features)
        self.clock.count(units_of(self.mode, batch))
        return batch


if __name__ == "__main__":
    mode_, loop_, model_, spec_, out_ = sys.argv[1:6]
    child(mode_, loop_, model_, json.loads(spec_), Path(out_))
