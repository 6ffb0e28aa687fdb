"""Summaries of a sweep (or any multirun) directory: summary.csv, a table best first, and a plot."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import yaml
from rich.table import Table

from blockbert.tools.display import console as make_console
from blockbert.tools.display import pyplot

STATUS_ORDER = {"finished": 0, "running": 1, "incomplete": 2, "failed": 3}


def read_jobs(sweep_dir: Path, keys: list[str]) -> list[dict]:
    rows = []
    for job in sorted(
        (d for d in sweep_dir.iterdir() if (d / ".hydra" / "overrides.yaml").is_file()),
        key=lambda d: (len(d.name), d.name),
    ):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
        values = {k: _unescape(v) for k, v in (o.split("=", 1) for o in overrides if "=" in o)}
        metrics = json.loads((job / "metrics.json").read_text()) if (job / "metrics.json").is_file() else {}
        row = {"job": job.name, "_overrides": values, **{k: values.get(k, "") for k in keys}}
        if (job / "error.txt").is_file():
            row.update(status="failed", error=(job / "error.txt").read_text().splitlines()[0])
        else:
            row.update(
                status="finished"
                if (job / "done.json").is_file() or metrics.get("status") == "finished"
                else metrics.get("status", "incomplete"),
                error="",
            )
        row.update({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        rows.append(row)
    return rows


def _unescape(value: str) -> str:
    """Hydra writes a sweep's values escaped (``3\\:1``) and sometimes quoted."""
    return re.sub(r"\\(.)", r"\1", value).strip("'\"")


def rank(rows: list[dict], metric: str, mode: str) -> list[dict]:
    def key(row):
        value = row.get(metric)
        ok = row["status"] == "finished" and isinstance(value, (int, float)) and math.isfinite(value)
        return (0 if ok else 1, (value if mode == "min" else -value) if ok else 0, STATUS_ORDER.get(row["status"], 9))

    return sorted(rows, key=key)


def summarize_sweep(sweep_dir: Path) -> list[dict]:
    """Write summary.csv (+ selection.json, summary.png) into ``sweep_dir`` and print the table."""
    console = make_console()
    spec = yaml.safe_load((sweep_dir / "sweep.yaml").read_text()) if (sweep_dir / "sweep.yaml").is_file() else {}
    keys = list(spec.get("grid", {}))
    metric, mode = spec.get("metric", "val/ppl"), spec.get("mode", "min")
    rows = read_jobs(sweep_dir, keys)
    if not rows:
        raise FileNotFoundError(f"{sweep_dir}: no job directories (with .hydra/overrides.yaml) found")
    if not keys:  # a plain multirun: the overrides whose values differ between jobs
        every = {k for r in rows for k in r["_overrides"]}
        keys = sorted(k for k in every if len({r["_overrides"].get(k) for r in rows}) > 1)
        for r in rows:
            r.update({k: r["_overrides"].get(k, "") for k in keys})
    if spec.get("from"):
        keys = join_pretraining(rows, Path(spec["from"]))
    rows = rank(rows, metric, mode)
    write_csv(rows, keys, metric, sweep_dir / "summary.csv")
    table = Table(title=f"{spec.get('name', sweep_dir.name)}: {metric} ({mode}), best first")
    for column in ("job", *keys, metric, "status", "error"):
        table.add_column(column)
    for row in rows:
        value = row.get(metric)
        table.add_row(row["job"], *(_cell(row[k]) for k in keys), _cell(value), row["status"], row["error"][:80])
    console.print(table)
    select = spec.get("select") or {}
    if select:
        chosen = rank(rows, select["by"], "max" if mode == "max" else "min")[0]
        if chosen["status"] == "finished":
            selection = {
                "job": chosen["job"],
                **{k: chosen[k] for k in keys},
                select["by"]: chosen.get(select["by"]),
                select["report"]: chosen.get(select["report"]),
            }
            (sweep_dir / "selection.json").write_text(json.dumps(selection, indent=2) + "\n")
            console.print(
                f"selected by {select['by']}: job {chosen['job']} -> {select['report']} = "
                f"{chosen.get(select['report'])}"
            )
    if "model.heads" in keys:
        plot_heads(rows, metric, sweep_dir / "summary.png")
    return rows


def join_pretraining(rows: list[dict], source: Path) -> list[str]:
    """finetune_each: give each fine-tuning job the swept values and the metric of the pre-training job it
    started from (its init_from), so that one table holds both of Figure 4's columns. The table's keys."""
    if not (source / "sweep.yaml").is_file():
        raise FileNotFoundError(
            f"from={source} in sweep.yaml: the pre-training sweep is not there any more (moved?): "
            "put it back, or edit 'from' in this sweep's sweep.yaml"
        )
    spec = yaml.safe_load((source / "sweep.yaml").read_text())
    keys, metric = list(spec.get("grid", {})), spec.get("metric", "val/ppl")
    pretrained = {str((source / r["job"]).resolve()): r for r in read_jobs(source, keys)}
    for row in rows:
        origin = pretrained.get(row.get("init_from", ""), {})
        row.update(
            {
                "pretrain job": origin.get("job", ""),
                **{k: origin.get(k, "") for k in keys},
                f"pretrain {metric}": origin.get(metric),
            }
        )
    return ["pretrain job", *keys, f"pretrain {metric}"]


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_csv(rows: list[dict], keys: list[str], metric: str, path: Path) -> None:
    extra = sorted({k for r in rows for k in r} - {"job", "status", "error", "_overrides", metric, *keys})
    columns = ["job", *keys, metric, "status", "error", *extra]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot_heads(rows: list[dict], metric: str, path: Path) -> None:
    """Figure 4: the metric by head assignment (n=2: per config; n=3: heatmap of the two shifted counts)."""
    plt = pyplot()
    import numpy as np

    done = [r for r in rows if r["status"] == "finished" and r.get(metric) is not None]
    counts = [[int(c) for c in str(r["model.heads"]).split(":")] for r in done]
    fig, ax = plt.subplots(figsize=(6, 4))
    if counts and len(counts[0]) == 3:
        size = max(max(c[1], c[2]) for c in counts) + 1
        grid = np.full((size, size), np.nan)
        for c, r in zip(counts, done):
            grid[c[1], c[2]] = r[metric]
        image = ax.imshow(grid, origin="lower", cmap="viridis_r")
        fig.colorbar(image, ax=ax, label=metric)
        ax.set_xlabel("heads with shift 2")
        ax.set_ylabel("heads with shift 1")
    else:
        order = sorted(zip(counts, done), key=lambda x: x[0][1:] if x[0] else [])
        ax.plot([":".join(map(str, c)) for c, _ in order], [r[metric] for _, r in order], "o-")
        ax.set_xlabel("head config (identity : shifted)")
        ax.set_ylabel(metric)
        ax.tick_params(axis="x", labelrotation=60)
    ax.set_title(f"{metric} by head assignment")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
