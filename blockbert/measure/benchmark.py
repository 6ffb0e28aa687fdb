"""`blockbert benchmark`'s measurements, as ratios to each baseline measured in the same run: inference and
training-step time and memory side by side (Tables 2 and 5); one attention layer alone (mode=attention); each model
in each layout on padded batches (mode=layout); mode=data: pre-training preprocessing against a plain tokenizer map
(:mod:`blockbert.measure.data_benchmark`); mode=pretrain | finetune: whole runs against the Hugging Face Trainer and
a bare loop (:mod:`blockbert.measure.run_benchmark`).

benchmark.json is written after every measured point, with ``"complete": false`` until the last: a benchmark stopped
by Ctrl-C (or a scheduler's time limit: SIGINT, SIGTERM, even SIGKILL) keeps every row it measured. Ctrl-C and
SIGTERM also print the table of those rows and the line saying so, and end with exit code 130 or 143 (before, SIGTERM
ended it silently). A rerun measures everything again: rows measured at different times are not side by side, so a
stopped benchmark is not resumed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from blockbert.data.cache import cache_dir, write_atomically
from blockbert.display import MiB, console, print_results, pyplot
from blockbert.errors import STOP_EXIT_CODES, ConfigError, RunInterrupted, SigtermRaises, Terminated, stop_name
from blockbert.formats.presets import with_heads
from blockbert.formats.run_dir import RunDir
from blockbert.formats.schema import BENCHMARK_MODES
from blockbert.measure import data_benchmark, plan, plan_fit, run_benchmark
from blockbert.measure.device import autocast_for, pick_device, pick_dtype, where
from blockbert.measure.memory import measure_step
from blockbert.measure.models import NO_ATTENTION, build, check_heads, check_model, encoder_of, heads_of, random_batch
from blockbert.measure.timing import OOM, is_oom, time_side_by_side, timing_summary
from blockbert.model.attention import SelfAttention
from blockbert.model.blocks import blocks_of
from blockbert.model.config import BlockBertConfig
from blockbert.model.jagged import packing

log = logging.getLogger(__name__)
HEADS_READ_BY = {"model": "models", "layout": "layout.models"}  # mode -> the models whose heads `heads` sets
ATTENTION_KINDS = {  # label -> BlockBertConfig overrides
    "dense": dict(attention="dense"),
    "sparse (mask)": dict(attention="sparse", sparse_stride=128, sparse_expressivity=32),
    "sparse (blocks)": dict(attention="sparse", sparse_stride=128, sparse_expressivity=32, sparse_impl="blocks"),
    "block n=2 (10:2)": dict(attention="block", heads="10:2"),
    "block n=3 (8:2:2)": dict(attention="block", heads="8:2:2"),
    "identity-only n=2 (12:0)": dict(attention="block", heads="12:0"),
    "identity-only n=3 (12:0:0)": dict(attention="block", heads="12:0:0"),
    # the jagged layout: real tokens packed, the blocks as one variable-length batch per head group; its projections
    # run on the real tokens only, and the packing is not timed (a model computes it once per forward for all layers)
    "dense jagged": dict(attention="dense", layout="jagged"),
    "block n=2 (10:2) jagged": dict(attention="block", heads="10:2", layout="jagged"),
    "block n=3 (8:2:2) jagged": dict(attention="block", heads="8:2:2", layout="jagged"),
}
# the blockwise lower bound: the same shapes with every head at shift 0 (no permutation at all)
BOUNDS = {
    "block n=2 (10:2)": "identity-only n=2 (12:0)",
    "block n=3 (8:2:2)": "identity-only n=3 (12:0:0)",
    "block n=2 (10:2) jagged": "identity-only n=2 (12:0)",
    "block n=3 (8:2:2) jagged": "identity-only n=3 (12:0:0)",
}
FLEX_KINDS = {  # the peer to beat: FlexAttention with the pattern's block mask (compiled; CUDA, no dropout only)
    "flex block mask n=2 (10:2)": dict(attention="block", heads="10:2", attention_impl="flex"),
    "flex block mask n=3 (8:2:2)": dict(attention="block", heads="8:2:2", attention_impl="flex"),
}
# time ÷ dense can go no lower than 1/n: each query block attends to one of n key blocks
FLOORS = {label: 1 / len(kind["heads"].split(":")) for label, kind in {**ATTENTION_KINDS, **FLEX_KINDS}.items()
          if kind["attention"] == "block"}  # fmt: skip


def benchmark(cfg: DictConfig, run: RunDir) -> dict:
    """The measurement ``cfg.mode`` asks for (the composed benchmark config), written to ``run``'s benchmark.json."""
    if cfg.mode not in BENCHMARK_MODES:
        raise ConfigError(f"mode={cfg.mode!r} is unknown: accepted are {', '.join(BENCHMARK_MODES)}")
    check_mode_heads(cfg)
    if cfg.mode == "data":
        return benchmark_data(cfg, run)
    if cfg.mode == "plan":
        return benchmark_plan(cfg, run)
    if cfg.mode in ("pretrain", "finetune"):
        return benchmark_run(cfg, run)
    baselines = {"model": baselines_of(cfg), "layout": ["padded"]}.get(cfg.mode, ["dense"])
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    autocast = autocast_for(dtype, device)
    header = {
        "mode": cfg.mode,
        **where(device),
        "dtype": str(dtype).replace("torch.", ""),
        "repeats": cfg.repeats,
        "warmup": cfg.warmup,
        "baselines": baselines,
        "ratio_of": cfg.ratio_of,  # the statistic each ratio divides
        "lm_head": cfg.lm_head,  # inference timed with the LM head (or the encoder alone)
    }
    measure = {"model": benchmark_models, "attention": benchmark_attention, "layout": benchmark_layouts}[cfg.mode]
    results, stopped = measured(run, header, measure(cfg, baselines, device, autocast))
    if results["records"]:
        print_table(results)
        plot(results, run.benchmark_plot)
    end(run, results, stopped, "benchmark.json, benchmark.png")
    return results


def check_mode_heads(cfg) -> None:
    """``heads`` (``+heads.NAME=...``) checked before anything is measured: against the models the mode builds, and
    refused by a mode that builds none (mode=attention times fixed head configs, 10:2 and 8:2:2)."""
    heads = OmegaConf.to_container(cfg.heads, resolve=True)
    if cfg.mode not in HEADS_READ_BY:
        if heads:
            key, value = next(iter(heads.items()))
            fixed = " (it times the fixed head configs 10:2 and 8:2:2)" if cfg.mode == "attention" else ""
            raise ConfigError(
                f"heads.{key}={str(value)!r} is not read by mode={cfg.mode}{fixed}: heads is read by "
                f"{' and '.join(f'mode={mode}' for mode in HEADS_READ_BY)}; give 'heads={{}}' to clear heads a bench= "
                "preset sets (bench=table5's)"
            )
        return
    setting = HEADS_READ_BY[cfg.mode]
    check_heads(heads, list(OmegaConf.select(cfg, setting)), OmegaConf.to_container(cfg.size, resolve=True), setting)


def measured(run: RunDir, header: dict, points, derive=None) -> tuple[dict, str | None]:
    """``header`` with the records of ``points`` (an iterable of lists of records, one list per measured point),
    written to benchmark.json after each point (``derive``, if given, first recomputes what is derived from all
    records so far); and what stopped the measurement: "Ctrl-C", "SIGTERM" or None."""
    results = {**header, "complete": False, "records": []}
    stopped = None
    try:
        with SigtermRaises():
            for rows in points:
                results["records"] += rows
                if derive:
                    derive(results)
                _write(run, results)
    except (KeyboardInterrupt, Terminated) as stop:
        stopped = stop_name(stop)
    results["complete"] = stopped is None
    _write(run, results)
    return results, stopped


def _write(run: RunDir, results: dict) -> None:
    """benchmark.json replaced whole: a stop while writing leaves the last one."""
    write_atomically(run.benchmark_file, lambda tmp: tmp.write_text(json.dumps(results, indent=2) + "\n"))


def end(run: RunDir, results: dict, stopped: str | None, contents: str) -> None:
    """The command's last lines: where the results are, or (``stopped``: by Ctrl-C or SIGTERM) the interruption and
    what it kept."""
    if stopped:
        rows = len(results["records"])
        kept = f"{run.benchmark_file.name} holds them" if rows else f"{run.benchmark_file.name} holds none"
        raise RunInterrupted(
            f"stopped by {stopped} after {rows} measured rows; {kept}",
            "a rerun measures everything again",
            run.path,
            STOP_EXIT_CODES[stopped],
            resumable=False,
        )
    print_results(contents, run.path)


def data_dir(cfg) -> Path:
    """Where the generated corpora of mode=data (and the whole runs' caches) are kept for reuse."""
    return cache_dir(cfg) / "benchmark-data"


def benchmark_data(cfg, run: RunDir) -> dict:
    """Preprocessing MiB/s and peak RSS, ours against the floor, per corpus size."""
    settings = dict(max_seq_length=cfg.data.max_seq_length, nsp=cfg.data.nsp, num_proc=cfg.data.num_proc)
    points = data_benchmark.run(
        cfg.data.sizes_mb,
        data_dir(cfg),
        settings,
        cfg.data.repeats,
        cfg.data.tokenizers_parallelism,
        log=log.info,
    )
    cpu = where(torch.device("cpu"))  # the pipeline runs on the CPU: its machine and the date
    header = {
        "mode": "data",
        "machine": cpu["machine"],
        "cpus": os.cpu_count(),
        "date": cpu["date"],
        "settings": settings,
        "tokenizers_parallelism": cfg.data.tokenizers_parallelism,
        "repeats": cfg.data.repeats,
    }

    def summarise(results):
        results["summary"] = data_benchmark.summary(results["records"])

    results, stopped = measured(run, header, ([record] for record in points), summarise)
    if results["records"]:
        data_benchmark.print_table(results)
    end(run, results, stopped, "benchmark.json")
    return results


def benchmark_run(cfg, run: RunDir) -> dict:
    """Whole-run throughput of our models' runs against the Hugging Face Trainer and a bare loop. The precision is
    fixed: fp32 on CPU, bf16 autocast on CUDA (``dtype`` and ``compile`` apply to the other modes); a loop that fails
    is a row of the table and an exit code of 1."""
    mode = cfg.mode
    device = pick_device(cfg.device)
    settings = OmegaConf.to_container(cfg[mode], resolve=True)
    spec = whole_run_spec(cfg, device, {k: v for k, v in settings.items() if k != "models"})
    header = {
        "mode": mode,
        **where(device),
        "dtype": "bfloat16 (autocast)" if device.type == "cuda" else "float32",
        "settings": spec,
    }
    loops = ([record] for record in run_benchmark.run(mode, list(settings["models"]), spec, log=log.info))
    results, stopped = measured(run, header, loops, lambda results: run_benchmark.with_ratios(results["records"]))
    records = results["records"]
    if records:
        print_run_table(results)
    failed = [r for r in records if r.get("error")]
    if failed and not stopped:
        raise RuntimeError(
            f"{len(failed)} of {len(records)} loops failed (first: {failed[0]['loop']} {failed[0]['model']}: "
            f"{failed[0]['error']}); the others are in {run.benchmark_file}"
        )
    end(run, results, stopped, "benchmark.json")
    return results


def whole_run_spec(cfg, device: torch.device, settings: dict) -> dict:
    """What a whole run in its own process (:mod:`blockbert.measure.run_benchmark`) is given: ``settings`` (N,
    batch, steps, data) with the sizes, warm-up, seed, device and cache; bf16 autocast on CUDA, fp32 on CPU."""
    return {
        **settings,
        "size": OmegaConf.to_container(cfg.size, resolve=True),
        "warmup": cfg.warmup,
        "seed": cfg.seed,
        "accelerator": "gpu" if device.type == "cuda" else "cpu",
        "precision": "bf16-mixed" if device.type == "cuda" else "32-true",
        "cache_dir": str(cache_dir(cfg)),
    }


def benchmark_plan(cfg, run: RunDir) -> dict:
    """``blockbert plan``'s predictions against pre-training runs: for each of ``plan.runs``, the plan from a fit
    measured now on this device, then a run of ``plan.steps`` optimizer steps after ``warmup`` (the blockbert loop of
    mode=pretrain, in its own process): predicted ÷ measured median step time, and on CUDA the predicted peak ÷ the
    allocator's peak in the run (on a CPU the run's peak RSS holds the whole process: not compared)."""
    device = pick_device(cfg.device)
    settings = OmegaConf.to_container(cfg.plan, resolve=True)
    header = {
        "mode": "plan",
        **where(device),
        "settings": {**settings, "size": OmegaConf.to_container(cfg.size, resolve=True)},
    }
    results, stopped = measured(run, header, ([record] for record in _plans_against_runs(cfg, settings, device)))
    if results["records"]:
        print_plan_table(results, settings["steps"], cfg.warmup, device)
    end(run, results, stopped, "benchmark.json")
    return results


def _plans_against_runs(cfg, settings: dict, device: torch.device) -> Iterator[dict]:
    """One record per planned run: the plan's prediction and the run's measurement."""
    for planned in settings["runs"]:
        run_settings = {key: settings[key] for key in ("steps", "documents", "rows_per_document")}
        spec = whole_run_spec(cfg, device, {**{k: v for k, v in planned.items() if k != "model"}, **run_settings})
        target = plan_fit.target_of(run_benchmark.composed("pretrain", planned["model"], spec), "pretrain")
        fit = plan_fit.measure_fit(target, device, timed=True)
        predicted = {
            "step_s": plan.time_of(target, fit)["step_s"],
            "peak_mb": plan.memory_of(target, fit)["peak"] / MiB,
        }
        run_measured = run_benchmark.in_child("pretrain", "blockbert", planned["model"], spec)
        record = {**planned, "predicted": predicted, "measured": run_measured}
        if run_measured.get("median_s"):
            record["time_ratio"] = predicted["step_s"] / run_measured["median_s"]
            if device.type == "cuda":
                record["memory_ratio"] = predicted["peak_mb"] / run_measured["peak_memory_mb"]
        measured_s = run_measured.get("median_s")
        log.info(
            "%s: predicted %.3f, measured %s s/step",
            planned["model"],
            predicted["step_s"],
            "nothing (the run failed)" if measured_s is None else f"{measured_s:.3f}",
        )
        yield record


def print_plan_table(results: dict, steps: int, warmup: int, device: torch.device) -> None:
    table = Table(
        title=f"blockbert benchmark (plan): predicted ÷ measured, {results['machine']}, {results['device']}, "
        f"{results['threads']} threads, {results['date']}; {steps} steps after {warmup}"
    )
    for column in ("model", "N", "micro-batch", "accumulation", "predicted s/step", "measured s/step", "time ratio"):
        table.add_column(column, justify="left" if column == "model" else "right")
    if device.type == "cuda":
        table.add_column("memory ratio", justify="right")
    for r in results["records"]:
        seconds = r["measured"].get("median_s")
        cells = [r["model"], str(r["seq_len"]), str(r["batch_size"]), str(r["accumulate"])]
        cells += [f"{r['predicted']['step_s']:.3f}", "failed" if seconds is None else f"{seconds:.3f}"]
        cells.append(f"{r['time_ratio']:.3f}" if "time_ratio" in r else "")
        if device.type == "cuda":
            cells.append(f"{r['memory_ratio']:.3f}" if "memory_ratio" in r else "")
        table.add_row(*cells)
    console().print(table)


def print_run_table(results: dict) -> None:
    spec = results["settings"]
    size = spec["size"]
    unit = "tokens/s" if results["mode"] == "pretrain" else "examples/s"
    table = Table(
        title=f"blockbert benchmark ({results['mode']}, whole run): {results['machine']}, {results['device']}, "
        f"{results['dtype']}, {results['threads']} threads, {results['date']}; hidden {size['hidden_size']}, "
        f"{size['num_layers']} layers, N={spec['seq_len']}, batch {spec['batch_size']}, {spec['steps']} steps "
        f"after {spec['warmup']}"
    )
    # the Trainer's ratio is of throughput (above 1: faster), unlike the time ratios (×) of the other modes' tables
    for column in ("loop", "model", "median s/step", "IQR s", unit, f"{unit} × HF Trainer", "step ÷ bare", "peak MiB"):
        table.add_column(column, justify="left" if column in ("loop", "model") else "right")
    if results["mode"] == "finetune":
        table.add_column("dev questions/s", justify="right")
    for r in results["records"]:
        if r.get("error"):
            table.add_row(r["loop"], r["model"], f"failed: {r['error']}")
            continue
        cells = [
            r["loop"],
            r["model"],
            f"{r['median_s']:.3f}",
            f"{r['iqr_s']:.3f}",
            f"{r['throughput']:.1f}",
            "" if r["vs_peer"] is None else f"{r['vs_peer']:.2f}",
            "" if r["vs_bare"] is None else f"{r['vs_bare']:.3f}",
            f"{r['peak_memory_mb']:.0f}",
        ]
        if results["mode"] == "finetune":
            cells.append(f"{r['eval_questions_per_s']:.0f}" if r.get("eval_questions_per_s") else "")
        table.add_row(*cells)
    console().print(table)
    for r in results["records"]:
        if r.get("parts_s"):
            parts = ", ".join(f"{part} {seconds:.3f} s" for part, seconds in r["parts_s"].items())
            print(f"where a step of {r['model']} goes (bare loop, medians): {parts}")
            if r.get("fill") is not None:
                print(f"  its batches' real tokens fill {r['fill']:.0%} of their positions (the rest: padding)")


def baselines_of(cfg) -> list[str]:
    """``baseline``: one model or a list of them, each among ``models``; every model gets a ratio to each."""
    for name in cfg.models:  # first: a bad name in models is the error, not the baseline missing from them
        check_model(name)
    baselines = list(cfg.baseline) if OmegaConf.is_list(cfg.baseline) else [cfg.baseline]
    for name in baselines or ["[]"]:
        if name not in cfg.models:
            raise ConfigError(f"baseline={name} is not among models: accepted are {', '.join(cfg.models)}")
    return baselines


def benchmark_models(cfg, baselines, device, autocast) -> Iterator[list[dict]]:
    """Each model's inference and training step at each N and batch size: one list of records per point."""
    size = OmegaConf.to_container(cfg.size, resolve=True)
    heads = OmegaConf.to_container(cfg.heads, resolve=True)
    for seq_len in cfg.seq_lengths:  # models of length N: block attention cuts N into its blocks
        torch.manual_seed(cfg.seed)
        names = list(cfg.models)
        bounded = cfg.inference_bound and "roberta_1seq" in names and "inference" in cfg.phases
        models = {name: build(name, size, heads, seq_len).to(device) for name in names + [NO_ATTENTION] * bounded}
        if cfg.compile:
            for model in models.values():
                model.compile()
        vocab = min(m.config.vocab_size for m in models.values())
        optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-5) for name, m in models.items()}
        for batch_size in cfg.batch_sizes:
            batch = random_batch(batch_size, seq_len, vocab, device)
            for phase in cfg.phases:
                timed = {n: m for n, m in models.items() if n != NO_ATTENTION or phase == "inference"}
                calls = {
                    name: _call(model, optimizers[name], batch, phase, autocast, cfg.lm_head)
                    for name, model in timed.items()
                }
                times = time_side_by_side(calls, device, cfg.warmup, cfg.repeats)
                peaks = {
                    name: _memory(model, batch, device, autocast) if phase == "train" else None
                    for name, model in timed.items()
                }
                point = dict(phase=phase, batch_size=batch_size, seq_len=seq_len)
                rows = _records(times, baselines, point, peaks, cfg.ratio_of)
                for r in rows:
                    r.update(heads_of(r["model"], models[r["model"]]))
                if NO_ATTENTION in times:
                    inference_bounds(rows, models)
                log.info("B=%d N=%d %s done", batch_size, seq_len, phase)
                yield rows
        del models, optimizers


def inference_bounds(rows: list[dict], models: dict) -> None:
    """Blockwise inference's own limit, t_rest + t_attention / n: t_rest is the model without its attention kernel
    (``no_attention``), t_attention the dense fused kernel's time (``roberta_1seq`` minus t_rest), both measured in
    this run. Each block model's record gets ``bound_s`` and ``ratio_to_bound``."""
    medians = {r["model"]: r["median_s"] for r in rows}
    rest, dense = medians.get(NO_ATTENTION), medians.get("roberta_1seq")
    if not rest or not dense:
        return
    for r in rows:
        config = getattr(models[r["model"]], "config", None)
        if getattr(config, "attention", None) == "block" and r["median_s"]:
            r["bound_s"] = rest + (dense - rest) / config.num_blocks
            r["ratio_to_bound"] = r["median_s"] / r["bound_s"]


def _call(model, optimizer, batch, phase, autocast, lm_head: bool = True):
    """The timed call: inference under no_grad, of the whole masked-LM model or (``lm_head`` false: Table 5 as the
    Hugging Face benchmark script times it) its encoder alone; or a training step."""
    if phase == "inference":
        target = model if lm_head else encoder_of(model)

        def infer():
            target.eval()
            with torch.no_grad(), autocast:
                target(batch["input_ids"], batch["attention_mask"])

        return infer

    def train_step():
        model.train()
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train_step


def _memory(model, batch, device, autocast) -> float | str | None:
    """Training-step memory, MiB: the CUDA allocator's peak, or on CPU model + optimizer + saved activations."""
    try:
        model.train()
        with autocast:
            step = measure_step(model, batch)
    except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
        if not is_oom(err):
            raise
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return OOM
    if step.cuda_peak_bytes is not None:
        return step.cuda_peak_bytes / MiB
    return (step.model_bytes + step.optimizer_bytes + step.activation_bytes) / MiB


def benchmark_layouts(cfg, baselines, device, autocast) -> Iterator[list[dict]]:
    """Each model's training step and inference in each of ``layout.layouts`` on the same weights, on batches whose
    real tokens fill ``layout.fills`` of the positions: time ÷ the padded layout's, side by side in one run; one
    list of records per point."""
    settings = cfg.layout
    size = OmegaConf.to_container(cfg.size, resolve=True)
    for name in settings.models:
        torch.manual_seed(cfg.seed)
        model = build(name, size, OmegaConf.to_container(cfg.heads, resolve=True), settings.seq_len).to(device)
        if model.config.attention == "sparse" and "jagged" in settings.layouts:
            raise ConfigError(f"layout=jagged computes dense or block attention, not {name}'s sparse attention")
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        for fill in settings.fills:
            batch = random_batch(settings.batch_size, settings.seq_len, model.config.vocab_size, device, fill=fill)
            real = float(batch["attention_mask"].float().mean())
            for phase in cfg.phases:
                calls = {
                    layout: _in_layout(model, layout, _call(model, optimizer, batch, phase, autocast, cfg.lm_head))
                    for layout in settings.layouts
                }
                times = time_side_by_side(calls, device, cfg.warmup, cfg.repeats)
                point = dict(phase=f"{phase} fill={real:.2f}", batch_size=settings.batch_size, seq_len=settings.seq_len)
                yield [
                    {**r, "model": f"{name} {r['model']}", "layout": r["model"], "fill": real, **heads_of(name, model)}
                    for r in _records(times, baselines, point, {}, cfg.ratio_of)
                ]
            log.info("%s fill=%.2f done", name, real)


def _in_layout(model, layout: str, call):
    """``call`` with the model's layout set to ``layout`` (its modules share one config)."""

    def run():
        model.config.layout = layout
        call()

    return run


def benchmark_attention(cfg, baselines, device, autocast) -> Iterator[list[dict]]:
    """One attention layer's forward and backward, each kind beside dense SDPA, per dropout and N: one list of
    records per point."""
    dropouts = cfg.attention_dropout if OmegaConf.is_list(cfg.attention_dropout) else [cfg.attention_dropout]
    for dropout in dropouts:
        for seq_len in cfg.attention_seq_lengths:
            x = torch.randn(cfg.attention_batch_size, seq_len, 768, device=device, requires_grad=True)
            key_mask = None
            if cfg.attention_padding:
                key_mask = torch.ones(cfg.attention_batch_size, seq_len, dtype=torch.bool, device=device)
                key_mask[:, seq_len - int(cfg.attention_padding * seq_len) :] = False
            kinds = {**ATTENTION_KINDS, **(FLEX_KINDS if device.type == "cuda" and dropout == 0 else {})}
            calls = {
                label: _attention_step(overrides, seq_len, dropout, x, key_mask, device, autocast)
                for label, overrides in kinds.items()
            }
            times = time_side_by_side(calls, device, cfg.warmup, cfg.repeats)
            point = dict(
                phase=f"attention fwd+bwd p={dropout:g}"
                + (f" pad={cfg.attention_padding:g}" if cfg.attention_padding else ""),
                batch_size=cfg.attention_batch_size,
                seq_len=seq_len,
            )
            rows = _records(times, ["dense"], point, {})
            medians = {r["model"]: r["median_s"] for r in rows}
            for r in rows:
                bound = medians.get(BOUNDS.get(r["model"]))
                r["ratio_to_bound"] = r["median_s"] / bound if bound and r["median_s"] else None
                r["floor"] = FLOORS.get(r["model"])
            log.info("N=%d dropout %g done (%d kernels)", seq_len, dropout, len(calls))  # before: silent until the end
            yield rows


def _attention_step(overrides, seq_len, dropout, x, key_mask, device, autocast):
    config = BlockBertConfig(
        hidden_size=768, num_heads=12, max_position_embeddings=seq_len, attention_dropout=dropout, **overrides
    )
    layer = SelfAttention(config).to(device).train()
    B, N = x.shape[:2]
    layout = None
    if config.layout == "jagged":
        layout = packing(key_mask, B, N, config.head_counts, config.block_seq_len, True, device)
        x = layout.pack(x.detach()).requires_grad_()  # [T, hidden]
    elif config.block_major:  # the layer as a model runs it: on hidden states laid out block-major once per forward
        layout = blocks_of(key_mask, B, N, config.num_blocks, config.block_seq_len)
        x, key_mask = layout.to_blocks(x.detach()).requires_grad_(), None  # [b, B, m, hidden]

    def step():
        with autocast:
            out = layer(x, key_mask, layout)
        out.float().sum().backward()
        layer.zero_grad(set_to_none=True)
        x.grad = None

    return step


def _records(times, baselines, point, peaks, ratio_of: str = "median") -> list[dict]:
    """One record per model; ``ratios`` maps each baseline to the model's time / the baseline's, both the median
    or both the mean (``ratio_of``; None where either has none), and ``ratio_to_baseline`` is the first one's."""
    summaries = {name: timing_summary(t) for name, t in times.items()}
    key = f"{ratio_of}_s"
    centres = {name: s[key] for name, s in summaries.items()}
    out = []
    for name, s in summaries.items():
        ratios = {b: s[key] / centres[b] if centres.get(b) and s[key] else None for b in baselines}
        out.append(
            {
                **point,
                "model": name,
                **s,
                "ratio_to_baseline": ratios[baselines[0]],
                "baseline": baselines[0],
                "ratios": ratios,
                "memory_mb": peaks.get(name),
            }
        )
    return out


def print_table(results: dict) -> None:
    table = Table(
        title=f"blockbert benchmark ({results['mode']}): {results['machine']}, {results['device']}, "
        f"{results['dtype']}, {results['threads']} threads, {results['date']}"
    )
    bounded = any(r.get("ratio_to_bound") for r in results["records"])
    floored = any(r.get("floor") for r in results["records"])
    baselines = results["baselines"]
    measured_memory = any(r["memory_mb"] is not None for r in results["records"])  # none: attention, layout on CPU
    columns = ("phase", "B", "N", "model", "median s", "mean s", "IQR s", *(f"× {b}" for b in baselines))
    columns += ("memory MiB",) if measured_memory else ()
    for column in columns + (("× bound",) if bounded else ()) + (("1/n floor",) if floored else ()):
        table.add_column(column, justify="left" if column in ("phase", "model") else "right")
    for r in results["records"]:
        memory = r["memory_mb"]
        table.add_row(
            r["phase"],
            str(r["batch_size"]),
            str(r["seq_len"]),
            with_heads(r["model"], r),
            OOM if r["status"] == OOM else f"{r['median_s']:.4f}",
            "" if r.get("mean_s") is None else f"{r['mean_s']:.4f}",
            "" if r["iqr_s"] is None else f"{r['iqr_s']:.4f}",
            *("" if r["ratios"][b] is None else f"{r['ratios'][b]:.3f}" for b in baselines),
            *(
                ["" if memory is None else memory if isinstance(memory, str) else f"{memory:.0f}"]
                if measured_memory
                else []
            ),
            *([f"{r['ratio_to_bound']:.3f}" if r.get("ratio_to_bound") else ""] if bounded else []),
            *([f"{r['floor']:.3f}" if r.get("floor") else ""] if floored else []),
        )
    console().print(table)


def plot(results: dict, path: Path) -> None:
    plt = pyplot()

    records = [r for r in results["records"] if r["ratio_to_baseline"] is not None]
    points = sorted({(r["phase"], r["batch_size"], r["seq_len"]) for r in records})
    models = list(dict.fromkeys(with_heads(r["model"], r) for r in records))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(points) + 2), 4))
    width = 0.8 / max(1, len(models))
    for m, model in enumerate(models):
        ys = [
            next(
                (
                    r["ratio_to_baseline"]
                    for r in records
                    if (r["phase"], r["batch_size"], r["seq_len"]) == p and with_heads(r["model"], r) == model
                ),
                0.0,
            )
            for p in points
        ]
        ax.bar([i + m * width for i in range(len(points))], ys, width, label=model)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(points))])
    ax.set_xticklabels([f"{p[0]}\nB={p[1]} N={p[2]}" for p in points], fontsize=7)
    ax.set_ylabel(f"time / {results['baselines'][0]} (median)")
    ax.set_title(f"{results['mode']} benchmark, {results['device']} {results['dtype']}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, not over them
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
