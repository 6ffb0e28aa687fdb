"""Table 1 (`blockbert profile`): activation memory split into O(N) and O(N^2) parts by regression, from the
tensors saved for backward and, on CUDA, also by Appendix A.2's estimate (peak allocated - model - optimizer)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from blockbert.display import MiB, console, print_results, pyplot
from blockbert.errors import ConfigError
from blockbert.formats.presets import with_heads
from blockbert.formats.run_dir import RunDir
from blockbert.measure.device import autocast_for, pick_device, pick_dtype
from blockbert.measure.memory import a2_activation_bytes, fit_linear_quadratic, measure_step
from blockbert.measure.models import build, check_heads, heads_of, random_batch

log = logging.getLogger(__name__)
A2_NA = "n/a (CUDA only)"


def profile(cfg: DictConfig, run: RunDir) -> dict:
    """Table 1's measurement of ``cfg`` (the composed profile config), written to ``run``'s profile.json/.png."""
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    autocast = autocast_for(dtype, device)
    a2 = device.type == "cuda"
    if a2 and cfg.a2_warmup_steps < 1:
        raise ConfigError(f"a2_warmup_steps={cfg.a2_warmup_steps} must be at least 1: A.2 measures after warm-up")
    size = OmegaConf.to_container(cfg.size, resolve=True)
    heads = OmegaConf.to_container(cfg.heads, resolve=True)
    lengths = list(cfg.seq_lengths)
    if len(set(lengths)) < 2:
        raise ConfigError(
            f"seq_lengths={lengths}: give at least two different lengths, which the fit of activation memory into an "
            "O(N) and an O(N²) part needs"
        )
    check_heads(heads, list(cfg.models), size)
    results = {
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "attention_impl": cfg.attention_impl,
        "tokens_per_device": cfg.tokens_per_device,
        "a2_warmup_steps": cfg.a2_warmup_steps if a2 else A2_NA,
        "size": size,
        "models": {},
    }
    for name in cfg.models:
        rows, used = [], {}
        for n in lengths:
            b = cfg.tokens_per_device // n
            if b < 1:
                raise ConfigError(
                    f"tokens_per_device={cfg.tokens_per_device} is smaller than N={n}: "
                    f"give at least {max(lengths)} tokens per device"
                )
            torch.manual_seed(cfg.seed)
            model = build(name, size, heads, n, cfg.attention_impl).to(device).train()  # a model of length N
            batch = random_batch(b, n, model.config.vocab_size, device)
            with autocast:
                step = measure_step(model, batch)
            a2_bytes = a2_activation_bytes(model, batch, cfg.a2_warmup_steps, autocast) if a2 else None
            used = heads_of(name, model)
            del model
            rows.append(
                dict(
                    seq_len=n,
                    batch_size=b,
                    model_mb=step.model_bytes / MiB,
                    optimizer_mb=step.optimizer_bytes / MiB,
                    activation_mb=step.activation_bytes / MiB,
                    cuda_peak_mb=None if step.cuda_peak_bytes is None else step.cuda_peak_bytes / MiB,
                    a2_activation_mb=None if a2_bytes is None else a2_bytes / MiB,
                )
            )
            log.info("%s N=%d b=%d: activation %.1f MiB", name, n, b, rows[-1]["activation_mb"])
        results["models"][name] = {
            **used,  # a block model's heads and its preset's
            "rows": rows,
            "fit": _fit(rows, lengths, ""),
            "fit_a2": _fit(rows, lengths, "a2_") if a2 else None,
        }
    run.profile_file.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results, lengths)
    plot(results, run.profile_plot)
    print_results("profile.json, profile.png", run.path)
    return results


def _fit(rows: list[dict], lengths: list[int], prefix: str) -> dict:
    """Section 2.2's fit of ``{prefix}activation_mb``; each row gets its O(N) and O(N²) parts."""
    fit = fit_linear_quadratic(lengths, [r[f"{prefix}activation_mb"] for r in rows])
    for r in rows:
        r[f"{prefix}linear_part_mb"] = fit.linear_part()
        r[f"{prefix}quadratic_part_mb"] = fit.quadratic_part(r["seq_len"])
    # two lengths fit exactly: an R² of 1 would say nothing
    return {
        "intercept_mb": fit.intercept,
        "slope_mb_per_token": fit.slope,
        "r2": fit.r2 if len(set(lengths)) > 2 else None,
    }


def print_table(results: dict, lengths: list[int]) -> None:
    a2 = results["a2_warmup_steps"] != A2_NA
    caption = (
        f"saved: tensors saved for backward; A.2: peak allocated − model − optimizer after "
        f"{results['a2_warmup_steps']} warm-up steps"
        if a2
        else f"saved: tensors saved for backward; A.2 (peak allocated − model − optimizer): {A2_NA}"
    )
    table = Table(
        title=f"Activation memory, MiB: O(N) / O(N²) parts (b·N ≤ {results['tokens_per_device']} tokens per device, "
        f"attention {results['attention_impl']}, {results['device']}, {results['dtype']})",
        caption=caption,
    )
    table.add_column("model")
    table.add_column("estimate")
    for n in lengths:
        table.add_column(f"N={n}", justify="right")
    table.add_column("R²", justify="right")
    for name, entry in results["models"].items():
        for estimate, prefix, fit in (("saved", "", entry["fit"]), ("A.2", "a2_", entry["fit_a2"])):
            if fit is not None:
                cells = [
                    f"{r[prefix + 'linear_part_mb']:.1f} / {r[prefix + 'quadratic_part_mb']:.1f}" for r in entry["rows"]
                ]
                r2 = "n/a (2 lengths)" if fit["r2"] is None else f"{fit['r2']:.4f}"
                table.add_row(with_heads(name, entry), estimate, *cells, r2)
    console().print(table)
    breakdown = Table(
        title="One training step's memory, MiB: model (parameters), optimizer (gradients + Adam moments), activations"
    )
    columns = ("", "N", "b", "model", "optimizer", "activations", "CUDA peak") + (("A.2 activations",) if a2 else ())
    for column in columns:
        breakdown.add_column(column, justify="left" if not column else "right")
    for name, entry in results["models"].items():
        for r in entry["rows"]:
            peak = "" if r["cuda_peak_mb"] is None else f"{r['cuda_peak_mb']:.1f}"
            breakdown.add_row(
                with_heads(name, entry),
                str(r["seq_len"]),
                str(r["batch_size"]),
                f"{r['model_mb']:.1f}",
                f"{r['optimizer_mb']:.1f}",
                f"{r['activation_mb']:.1f}",
                peak,
                *([f"{r['a2_activation_mb']:.1f}"] if a2 else []),
            )
    console().print(breakdown)
    if results["attention_impl"] == "sdpa":
        console().print(
            "[yellow]attention_impl=sdpa: a fused kernel stores no N×N matrix where it is used, so the "
            "quadratic part shrinks for the dense baseline too; use attention_impl=eager for the "
            "paper's setting.[/yellow]"
        )


def plot(results: dict, path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, entry in results["models"].items():
        xs = [r["seq_len"] for r in entry["rows"]]
        (points,) = ax.plot(xs, [r["activation_mb"] for r in entry["rows"]], "o", label=with_heads(name, entry))
        color = points.get_color()  # the model's fit line and A.2 points in its points' colour
        fit = entry["fit"]
        ax.plot(xs, [fit["intercept_mb"] + fit["slope_mb_per_token"] * x for x in xs], "-", color=color, alpha=0.6)
        if entry["fit_a2"] is not None:
            a2 = [r["a2_activation_mb"] for r in entry["rows"]]
            ax.plot(xs, a2, "x", color=color, label=f"{with_heads(name, entry)} (A.2)")
    ax.set_xlabel("sequence length N (tokens per device fixed)")
    ax.set_ylabel("activation memory (MiB)")
    ax.set_title(f"Activation memory vs N ({results['attention_impl']}, {results['device']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
