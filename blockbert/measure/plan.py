"""`blockbert plan`: what a run needs before it is spent: memory per device, the batch arithmetic, time.

Memory per device is what stays between optimizer steps (weights and AdamW's two moments; under DDP the gradient
buckets, under FSDP a shard of it all) plus the highest of the peaks a step's phases add (measured with
:func:`blockbert.measure.memory.step_peaks`):

- a micro-batch's forward + backward: ``c0 + a1·b·N + a2·b·N²`` for b sequences of N tokens per device, Table 1's
  O(N) and O(N²) parts (a2 is the attention's, divided by n for BlockBert); with gradient accumulation, the later
  micro-batches' peak, which holds the gradients too;
- the optimizer's step: the gradients and the step's temporaries.

The coefficients are fitted on the device from training steps of the same model cut to 1 and 2 layers, at the run's
micro-batch and half of it and at N and about N/2 (section 2.2's regression with the batch left free). Every layer
is the same layer, so each coefficient is taken as linear in the number of layers (our scaling law; the checks in
tests/test_plan.py and ``blockbert benchmark mode=plan`` measure how well it holds). Fits are kept per device kind in
``paths.plan_dir/<device>.json`` (by default in the cache) and reused; ``blockbert plan --calibrate`` fits (and
times) the paper's rows so that another machine can plan for that GPU (``--gpu``). The run planned, the fit and its
store are in :mod:`blockbert.measure.plan_fit`; this module holds the arithmetic, the table and the check.

Time: the same cut models' forward + backward at the run's N and optimizer step are timed on the device, in turns
(median of 5 after a warm-up), taken as linear in layers and in sequences per micro-batch; an optimizer step is
accumulation × micro-batch + optimizer step. Data loading, logging and DDP's gradient communication are outside it
(the plan says so).
"""

from __future__ import annotations

import logging
import os
import re

import torch
from omegaconf import DictConfig
from rich.table import Table

from blockbert.display import console
from blockbert.errors import ConfigError
from blockbert.measure.plan_fit import (
    GB,
    PRECISIONS,
    FitStore,
    Target,
    at_layers,
    device_name,
    fit_for,
    free_memory,
    parameter_count,
    precision_name,
    target_of,
)
from blockbert.model.config import BlockBertConfig
from blockbert.train.cluster import runs_on_gpu
from blockbert.train.settings import world_size

log = logging.getLogger(__name__)
USABLE = 0.95  # our choice: 5 % of the device's memory left to the allocator's fragmentation and the process


def size_text(nbytes: float) -> str:
    """Bytes as GB (10⁹) from 1 GB up, else MB (10⁶)."""
    return f"{nbytes / GB:.2f} GB" if abs(nbytes) >= GB else f"{nbytes / 1e6:.1f} MB"


def memory_of(target: Target, fit: dict, per_device: int | None = None) -> dict:
    """Bytes per device of the run (``per_device``: another micro-batch size): each part and the peak."""
    b = per_device or target.per_device
    layers, n = target.model.num_layers, target.seq_len
    parameters, largest_layer = parameter_count(target)
    width = torch.finfo(PRECISIONS[target.precision][0]).bits // 8
    weights = gradients = parameters * width
    states = 2 * parameters * width  # AdamW's two moments
    shards = target.devices if target.strategy == "fsdp" else 1
    phases = ("first", "accumulating") if target.accumulate > 1 else ("first",)  # gradients held: the later ones
    fitted = [{name: at_layers(values, layers) for name, values in fit["memory"][phase].items()} for phase in phases]
    coefficients = max(fitted, key=lambda c: c["c0"] + c["a1"] * b * n + c["a2"] * b * n * n)
    linear, quadratic = coefficients["a1"] * b * n, coefficients["a2"] * b * n * n
    optimizer_peak = at_layers(fit["memory"]["optimizer"], layers) / shards
    parts = {
        "weights": weights / shards,
        "optimizer_states": states / shards,
        "ddp_buckets": gradients if target.strategy == "ddp" else 0,  # torch DDP's default: a copy of the gradients
        "fsdp_gathered": 2 * largest_layer * width if target.strategy == "fsdp" else 0,  # a layer, the next prefetched
    }
    resident = sum(parts.values())
    forward_backward = coefficients["c0"] + linear + quadratic
    return {
        **parts,
        "gradients": gradients / shards,
        "activations_linear": linear,  # O(N)
        "activations_quadratic": quadratic,  # O(N^2)
        "step_constant": coefficients["c0"],
        "forward_backward_peak": resident + forward_backward,
        "optimizer_peak": resident + optimizer_peak,
        "peak": resident + max(forward_backward, optimizer_peak),
    }


def largest_batch(target: Target, fit: dict, capacity: float) -> int:
    """The largest micro-batch per device whose peak fits in ``capacity`` bytes (0: not even one sequence); the
    peak grows linearly in the micro-batch."""
    one = memory_of(target, fit, 1)
    if one["peak"] > capacity:
        return 0
    per_sequence = one["activations_linear"] + one["activations_quadratic"]
    if per_sequence <= 0:  # a fit that sees no cost per sequence: say the run's whole batch fits, nothing more
        return target.batch // target.devices
    largest = int((capacity - (one["forward_backward_peak"] - per_sequence)) // per_sequence)
    while largest > 1 and memory_of(target, fit, largest)["peak"] > capacity:  # rounding
        largest -= 1
    return max(1, largest)


def best_setting(target: Target, largest: int) -> tuple[int, int] | None:
    """The largest data.per_device_batch_size that fits and the accumulation it gives (the run splits its batch
    into equal micro-batches): None when not even one sequence fits."""
    per_device_total = target.batch // target.devices
    fitting = [b for b in range(1, min(largest, per_device_total) + 1) if per_device_total % b == 0]
    return (fitting[-1], per_device_total // fitting[-1]) if fitting else None


def time_of(target: Target, fit: dict) -> dict:
    timing = fit["time"]
    layers = target.model.num_layers
    micro = at_layers(timing["forward_backward_s"], layers) * target.per_device / timing["micro_batch"]
    step = target.accumulate * micro + at_layers(timing["optimizer_s"], layers)
    out = {"micro_batch_s": micro, "optimizer_step_s": step - target.accumulate * micro, "step_s": step}
    if target.max_steps:
        out["run_hours"] = step * target.max_steps / 3600
        out["device_hours"] = out["run_hours"] * target.devices
    return out


def plan(target: Target, fit: dict, source: str, capacity: float, device: dict, notes: tuple = ()) -> dict:
    """The plan of ``target`` (a JSON-ready dict): memory per device, whether it fits in ``capacity`` bytes and the
    largest per-device batch that does, the batch arithmetic, the time (when the fit is timed), and the
    assumptions with ``notes`` added."""
    timed = "time" in fit
    memory = memory_of(target, fit)
    usable = capacity * USABLE
    largest = largest_batch(target, fit, usable)
    setting = best_setting(target, largest)
    result = {
        "run": {
            "command": target.command,
            "model": _describe(target.model),
            "seq_len": target.seq_len,
            "precision": target.precision,
            "strategy": target.strategy,
            "devices": target.devices,
            "batch": target.batch,
            "per_device_batch": target.per_device,
            "accumulation": target.accumulate,
            "tokens_per_step": target.tokens_per_step,
            "max_steps": target.max_steps,
        },
        "device": {**device, "memory_gb": capacity / GB, "usable_gb": usable / GB},
        "memory_gb": {key: value / GB for key, value in memory.items()},
        "fits": memory["peak"] <= usable,
        "largest_per_device_batch": largest,
        "suggested_per_device_batch_size": setting[0] if setting else None,
        "suggested_accumulation": setting[1] if setting else None,
        "fit": {"source": source, "worst_residual": fit["worst_residual"], "measured": fit["measured"]},
        "assumptions": [*assumptions(target, fit, timed), *notes],
    }
    if timed:
        result["time"] = time_of(target, fit)
    return result


def _describe(config: BlockBertConfig) -> str:
    attention = config.attention + (f" {config.heads} (n={config.num_blocks})" if config.attention == "block" else "")
    return f"{config.num_layers} layers, hidden {config.hidden_size}, {config.num_heads} heads, {attention}"


def assumptions(target: Target, fit: dict, timed: bool) -> list[str]:
    lines = [
        "memory: weights, gradients and AdamW's two moments counted from the parameters; a step's peaks fitted on "
        "steps of the model cut to 1 and 2 layers (c0 + a1·b·N + a2·b·N² each, linear in the layers)",
        f"fits when the peak is at most {USABLE:.0%} of the device's memory (our margin)",
        "full sequences of N tokens and a vocabulary of the checkpoint's size, else the size asked of a trained "
        "tokenizer: an upper bound where batches are padded or a small corpus gives fewer pieces",
    ]
    if target.strategy == "ddp":
        lines.append("DDP: gradient buckets as large as the gradients (torch's default), not measured")
    if target.strategy == "fsdp":
        lines.append(
            "FSDP: weights, gradients and states sharded over the devices, two layers gathered, the step's activations"
            " as a single device's (an upper bound: their gradients are not sharded there); not measured"
        )
    if timed:
        lines.append(
            "time: forward + backward at N and the optimizer step measured on the cut models, linear in layers and in "
            "sequences per micro-batch; data loading, logging and gradient communication not included"
        )
    if target.precision == "16-mixed" and fit["measured"]["device"].startswith("cpu"):
        lines.append("fp16 autocast measured as bf16 on this CPU: the same tensor sizes, not the same speed")
    if target.max_steps is None:
        lines.append("no step limit (trainer.max_steps): the total follows from the epochs; give trainer.max_steps")
    return lines


def print_plan(result: dict) -> None:
    run, memory = result["run"], result["memory_gb"]
    table = Table(title=f"Plan: blockbert {run['command']}, {run['model']}, N={run['seq_len']}")
    table.add_column("")
    table.add_column("per device", justify="right")
    rows = [  # what stays between steps, then what each phase of a step adds at its peak
        ("weights", memory["weights"]),
        ("optimizer states (AdamW)", memory["optimizer_states"]),
        ("DDP gradient buckets", memory["ddp_buckets"]),
        ("FSDP gathered layers", memory["fsdp_gathered"]),
        ("  + activations O(N): a1·b·N", memory["activations_linear"]),
        ("  + activations O(N²): a2·b·N²", memory["activations_quadratic"]),
        ("  + step constant c0", memory["step_constant"]),
        ("  = peak in forward + backward", memory["forward_backward_peak"]),
        ("  gradients (within the optimizer step's peak)", memory["gradients"]),
        ("  = peak in the optimizer step", memory["optimizer_peak"]),
    ]
    for label, value in rows:
        if value or not label.startswith(("DDP", "FSDP")):  # the engine's rows only when it is used
            table.add_row(label, size_text(value * GB))
    device = result["device"]
    verdict = "[green]fits[/green]" if result["fits"] else "[red]does not fit[/red]"
    table.add_row(
        "[bold]peak[/bold]",
        f"[bold]{size_text(memory['peak'] * GB)}[/bold] of {size_text(device['usable_gb'] * GB)} usable: {verdict}",
    )
    table.add_row("largest micro-batch that fits", str(result["largest_per_device_batch"]))
    if result["suggested_per_device_batch_size"]:
        table.add_row(
            "largest data.per_device_batch_size that fits",
            f"{result['suggested_per_device_batch_size']} (accumulation {result['suggested_accumulation']})",
        )
    table.add_row(
        "batch",
        f"{run['batch']} sequences × {run['seq_len']} = {run['tokens_per_step']} tokens = {run['devices']} "
        f"device{'s' if run['devices'] > 1 else ''} × {run['per_device_batch']} × {run['accumulation']} accumulation",
    )
    if "time" in result:
        time = result["time"]
        table.add_row("seconds per optimizer step", f"{time['step_s']:.3g}")
        if "run_hours" in time:
            hours = f"{time['run_hours']:.3g} h wall-clock, {time['device_hours']:.4g} device-hours"
            table.add_row(f"{run['max_steps']} steps", hours)
    table.caption = f"{device['name']} ({device['source']}); fit: {result['fit']['source']}"
    console().print(table)
    for line in result["assumptions"]:
        console().print(f"  - {line}", highlight=False)


# --------------------------------------------------------------------------------- the check before a run


def check_fit(cfg: DictConfig, command: str) -> None:
    """Refuse a run whose plan says it does not fit in its device's memory (``fit_check=false``: run anyway), in one
    line naming the largest per-device batch that fits. A run that cannot be planned (a precision the plan does not
    model) is not checked, and says so."""
    if not cfg.get("fit_check", True):
        return
    try:
        precision_name(cfg.trainer.precision)
    except ConfigError as err:
        log.warning("plan: the memory check is skipped: %s", err)
        return
    device = run_device(cfg.trainer)
    target = target_of(cfg, command)
    fit, _ = fit_for(target, FitStore.for_device(cfg, device), device, timed=False)
    capacity = (
        parse_size(cfg.device_memory, "device_memory")
        if cfg.get("device_memory")
        else memory_per_device(device, cfg.trainer)
    )
    usable = capacity * USABLE
    peak = memory_of(target, fit)["peak"]
    if peak <= usable:
        log.info("plan: %s per device at its peak, of %s usable on %s", size_text(peak), size_text(usable), device)
        return
    setting = best_setting(target, largest_batch(target, fit, usable))
    where = f"the {size_text(usable)} usable on {device_name(device)}" + (
        f" (device_memory={cfg.device_memory})" if cfg.get("device_memory") else ""
    )
    if setting is None:
        options = [
            "shorten data.max_seq_length",
            *([] if target.model.gradient_checkpointing else ["use model.gradient_checkpointing=true"]),
            *([] if target.precision != "32-true" else ["trainer.precision=bf16-mixed"]),
            *([] if target.strategy == "fsdp" else ["trainer=fsdp on several GPUs"]),
        ]
        advice = "not even one sequence per device fits: " + ", ".join(options)
    else:
        advice = (
            f"the largest per-device batch that fits is {setting[0]} (accumulation {setting[1]}): set "
            f"data.per_device_batch_size={setting[0]}"
        )
    raise ConfigError(
        f"a micro-batch of {target.per_device} sequences of N={target.seq_len} (data.per_device_batch_size="
        f"{cfg.data.per_device_batch_size}) needs {size_text(peak)} per device at its peak, more than {where}; "
        f"{advice}, or fit_check=false to run anyway"
    )


def sharing_processes(device: torch.device, trainer_cfg: DictConfig, devices: int | None = None) -> int:
    """How many of the run's processes (``devices`` in all, else the trainer's) share ``device``'s memory: on a CPU,
    those of one machine (``trainer=ddp trainer.accelerator=cpu``, each holding a whole model); a GPU is one
    process's."""
    if device.type != "cpu":
        return 1
    return max(1, (devices or world_size(trainer_cfg)) // int(trainer_cfg.get("num_nodes", 1)))


def memory_per_device(device: torch.device, trainer_cfg: DictConfig, devices: int | None = None) -> int:
    """What one process of the run has: a GPU's free memory, or its share of the machine's available memory."""
    return free_memory(device) // sharing_processes(device, trainer_cfg, devices)


def run_device(trainer_cfg: DictConfig) -> torch.device:
    if runs_on_gpu(trainer_cfg.accelerator):
        local = int(os.environ.get("LOCAL_RANK") or os.environ.get("SLURM_LOCALID") or 0)  # each rank checks its own
        return torch.device("cuda", local if local < torch.cuda.device_count() else 0)  # one GPU visible per task
    return torch.device("cpu")


SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text, setting: str) -> float:
    """Bytes of ``16GB``, ``80GiB``, ``512MB`` or a number of bytes."""
    match = SIZE.match(str(text))
    size = float(match.group(1)) * UNITS[(match.group(2) or "B").lower()] if match else 0
    if size <= 0:
        raise ConfigError(f"{setting}={text!r} is not a memory size: give e.g. 16GB, 80GiB or 512MB")
    return size
