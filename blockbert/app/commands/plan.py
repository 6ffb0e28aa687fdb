"""`blockbert plan`: a run's (or a sweep's) memory per device, batch arithmetic and time, before it is spent
(:mod:`blockbert.measure.plan`); ``--calibrate`` fits the paper's rows on this GPU for planning elsewhere."""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path

import torch
from rich.table import Table

from blockbert.app.commands.sweep import config_dirs_of, expanded_sweep
from blockbert.display import console, print_results
from blockbert.errors import STOP_EXIT_CODES, ConfigError, Terminated, one_line_errors, print_interrupted, stop_name
from blockbert.experiments.sweep_plan import job_overrides, shown
from blockbert.formats.compose import compose
from blockbert.formats.run_dir import check_writable, new_run_path
from blockbert.measure import plan as planner
from blockbert.measure import plan_fit

COMMANDS = ("pretrain", "finetune")
CALIBRATED_ROWS = [  # plan --calibrate: the paper's pre-training rows, at their N and the run's micro-batch
    f"experiment={name}"
    for name in ("roberta_1seq_512", "blockbert_n2_512", "blockbert_n3_512", "sparsebert_512")
    + ("roberta_1seq_1024", "blockbert_n2_1024", "blockbert_n3_1024", "sparsebert_1024")
]


@one_line_errors("plan")
def run_plan(
    overrides: list[str],
    command: str | None = None,
    gpus: int | None = None,
    gpu_memory: str | None = None,
    gpu: str | None = None,
    sweep: str | None = None,
    calibrate: bool = False,
    out: str | None = None,
    source: str | None = None,
    config_dir: str | None = None,
) -> int:
    if command not in (None, *COMMANDS):
        raise ConfigError(f"--command {command!r}: accepted are {', '.join(COMMANDS)}")
    if gpus is not None and gpus < 1:
        raise ConfigError(f"--gpus {gpus}: give at least 1")
    if source and not sweep:
        raise ConfigError(f"--from {source}: give it with --sweep finetune_each (the sweep that fine-tunes its jobs)")
    out_dir = Path(out or new_run_path("plan")).resolve()
    if out:
        check_writable(out, "--out")  # before the fit, not after
    config_dirs = config_dirs_of(config_dir)
    if calibrate:
        if gpu or gpu_memory or gpus or sweep:
            raise ConfigError("--calibrate measures this device: --gpu, --gpu-memory, --gpus and --sweep do not apply")
        with _progress_shown():
            return _calibrate(overrides, out_dir, config_dirs)
    jobs = [(command or "pretrain", overrides)]
    if sweep:
        source_dir = Path(source).expanduser().resolve() if source else None
        spec, grid, texts = expanded_sweep(sweep, overrides, source_dir, config_dirs)
        if command not in (None, spec.command):
            raise ConfigError(f"--command {command} with --sweep {sweep}: that sweep runs {spec.command}")
        jobs = [(spec.command, [*spec.overrides, *job]) for job in job_overrides(grid, texts)]
    results = []
    for job_command, job in jobs:
        cfg = compose(job_command, [o for o in job if not o.startswith("hydra.")], config_dirs, finished=True)
        target = plan_fit.target_of(cfg, job_command, devices=gpus)
        device, store, described, capacity, notes = _where(cfg, gpu, gpus)
        if gpu_memory:
            capacity = planner.parse_size(gpu_memory, "--gpu-memory")
            described["source"] += f"; --gpu-memory {gpu_memory}"
        elif capacity is None:
            raise ConfigError(
                "the run asks for GPUs and this machine has none: give --gpu-memory (e.g. 16GiB) to plan against, or "
                "--gpu NAME to plan from that GPU's calibration"
                if device is not None
                else f"the calibration of {store.kind} does not say its memory: give --gpu-memory"
            )
        if cfg.get("compile"):
            notes = (*notes, "compile=true is not modelled: the plan measures the model uncompiled")
        try:
            with _progress_shown():
                fit, source = plan_fit.fit_for(target, store, device, timed=True)
        except (KeyboardInterrupt, Terminated) as stop:  # before: exit 130 without a word (SIGTERM: no "while fitting")
            print_interrupted(
                "plan", f"stopped by {stop_name(stop)} while fitting: nothing was stored; a rerun fits again"
            )
            return STOP_EXIT_CODES[stop_name(stop)]
        result = planner.plan(target, fit, source, capacity, described, notes)
        result["overrides"] = job
        results.append(result)
        planner.print_plan(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"jobs": results}
    if sweep:
        summary["sweep"] = sweep
        summary["device_hours"] = _sweep_total(results)
    (out_dir / "plan.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_results("plan.json", out_dir)
    return 0


@contextmanager
def _progress_shown():
    """blockbert's log lines on stderr meanwhile, as the training commands show them through Hydra's logging, which
    `plan` runs without: a fit measured now says what it measures (minutes on a CPU at a long N; before: nothing was
    shown). Removed after, so that nothing writes to this stderr once it is gone."""
    logger = logging.getLogger("blockbert")
    handler, level, propagate = logging.StreamHandler(), logger.level, logger.propagate
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # not twice where the root logger has a handler too
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _where(cfg, gpu: str | None, gpus: int | None = None):
    """(the device to measure on: None for a named GPU's calibration; its fits; its description; its memory; notes
    for the plan)."""
    if gpu:
        store = plan_fit.named_store(plan_fit.plan_dir(cfg), gpu)
        device = store.data["device"]
        described = {"name": device.get("name", store.kind), "source": f"calibration {store.kind}"}
        return None, store, described, device.get("memory_bytes"), ()
    device = planner.run_device(cfg.trainer)
    if device.type == "cuda" and not torch.cuda.is_available():  # measured on this CPU; its memory is not the GPU's
        device = torch.device("cpu")
        store = plan_fit.FitStore.for_device(cfg, device)
        notes = (
            "the trainer asks for GPUs and this machine has none: memory and time are measured on this CPU, with "
            "its kernels; `--gpu NAME` plans from a GPU's calibration",
        )
        return device, store, {"name": plan_fit.device_name(device), "source": "this CPU, for a GPU run"}, None, notes
    store = plan_fit.FitStore.for_device(cfg, device)
    memory = "free memory" if device.type == "cuda" else "available memory"
    capacity = planner.memory_per_device(device, cfg.trainer, gpus)
    shared = planner.sharing_processes(device, cfg.trainer, gpus)
    if shared > 1:
        memory += f" shared by the run's {shared} processes"
    described = {"name": plan_fit.device_name(device), "source": f"this machine, its {memory}"}
    return device, store, described, capacity, ()


def _sweep_total(results: list[dict]) -> float | None:
    hours = [r.get("time", {}).get("device_hours") for r in results]
    total = None if None in hours else sum(hours)
    table = Table(title=f"Sweep: {len(results)} jobs")
    for column in ("job", "fits", "peak GB", "s/step", "device-h"):
        table.add_column(column, justify="right" if column != "job" else "left")
    for r, h in zip(results, hours):
        table.add_row(
            " ".join(map(shown, r["overrides"][-3:])),
            "yes" if r["fits"] else "NO",
            f"{r['memory_gb']['peak']:.2f}",
            f"{r['time']['step_s']:.3g}",
            "?" if h is None else f"{h:.4g}",
        )
    table.caption = "total: " + ("unknown (a job has no step limit)" if total is None else f"{total:.4g} device-hours")
    console().print(table)
    return total


def _calibrate(overrides: list[str], out_dir: Path, config_dirs: tuple[str, ...]) -> int:
    """Fits with times, on this device, of the run the overrides give, or without overrides of the paper's
    pre-training rows; stored in this device kind's file, copied to ``out_dir``."""
    if not torch.cuda.is_available():
        console().print("[yellow]no GPU here: the calibration is of this CPU[/yellow]")
    trainer = ["trainer=gpu"] if torch.cuda.is_available() else []  # the GPU unless the overrides say otherwise
    if any(o.split("=")[0].lstrip("+~") == "trainer" for o in overrides):
        trainer = []
    jobs = [[*trainer, *overrides]] if overrides else [[row, *trainer] for row in CALIBRATED_ROWS]
    store = None
    for job in jobs:
        cfg = compose("pretrain", job, config_dirs, finished=True)
        target = plan_fit.target_of(cfg, "pretrain")
        device = planner.run_device(cfg.trainer)
        store = plan_fit.FitStore.for_device(cfg, device)
        _, source = plan_fit.fit_for(target, store, device, timed=True)
        console().print(f"{' '.join(job)}: {source}", highlight=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    copy = out_dir / store.path.name
    copy.write_text(store.path.read_text())
    print(
        f"calibration of {store.kind}: copy {copy.name} into the plan directory of the machine that plans "
        f"(paths.plan_dir, by default ~/.cache/blockbert/plan/), then `blockbert plan --gpu {store.kind} ...`"
    )
    print_results(copy.name, out_dir)
    return 0
