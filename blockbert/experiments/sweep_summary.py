"""Summaries of a sweep (or any multirun) directory: summary.csv, a table best first, and a plot."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

from rich.table import Table

from blockbert.display import console as make_console
from blockbert.display import pyplot
from blockbert.errors import ConfigError
from blockbert.formats.run_dir import RunDir, SweepDir
from blockbert.model.config import parse_heads

STATUS_ORDER = {"finished": 0, "running": 1, "incomplete": 2, "failed": 3}


def read_jobs(sweep_dir: Path, keys: list[str]) -> list[dict]:
    """A row per job directory (one with .hydra/overrides.yaml): its swept values, status and numeric metrics."""
    rows = []
    for job in SweepDir(sweep_dir).jobs():
        # a resumed run's values: those it started with, updated by what its last resume gave (a new max_steps).
        # What a resume keeps it must give the same (or be refused); a setting it may change and left out ran at
        # its default, which this shows as the started value
        values = {}
        for overrides in (job.overrides() or [], job.last_overrides() or []):
            values |= {k: _unescape(v) for k, v in (o.split("=", 1) for o in overrides if "=" in o)}
        metrics = job.metrics()
        row = {"job": job.path.name, "_overrides": values, **{k: values.get(k, "") for k in keys}}
        if job.error_file.is_file():
            row.update(status="failed", error=job.error_file.read_text().splitlines()[0])
        else:
            finished = job.done_file.is_file() or metrics.get("status") == "finished"
            row.update(status="finished" if finished else metrics.get("status", "incomplete"), error="")
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
    sweep = SweepDir(sweep_dir)
    spec = sweep.spec()
    keys = list(spec.get("grid", {}))
    rows = read_jobs(sweep_dir, keys)
    if not rows and RunDir(sweep_dir).overrides_file.is_file():
        raise ConfigError(
            f"{sweep_dir} is one run, not a sweep or multirun of them: `blockbert report --paper {sweep_dir}` sets a "
            "run beside the paper's numbers"
        )
    if not rows:
        raise FileNotFoundError(f"{sweep_dir}: no job directories (with .hydra/overrides.yaml) found")
    if not keys:  # a plain multirun: the overrides whose values differ between jobs
        every = {k for r in rows for k in r["_overrides"]}
        keys = sorted(k for k in every if len({r["_overrides"].get(k) for r in rows}) > 1)
        for r in rows:
            r.update({k: r["_overrides"].get(k, "") for k in keys})
    if spec.get("from"):
        keys = join_pretraining(rows, Path(spec["from"]))
    metric, mode = (spec["metric"], spec.get("mode", "min")) if "metric" in spec else plain_metric(sweep_dir, rows)
    rows = rank(rows, metric, mode)
    metrics = shown_metrics(rows, metric)
    write_csv(rows, keys, metrics, sweep.summary(".csv"))
    if "seed" in keys and len({r["seed"] for r in rows}) > 1:
        groups = over_seeds(rows, [k for k in keys if k != "seed"], metric, mode)
        write_seed_csv(groups, sweep.seeds_summary)
        print_seed_table(console, groups, f"{spec.get('name', sweep_dir.name)}: mean ± std over seeds, best first")
        write_seed_markdown(groups, [k for k in keys if k != "seed"], metric, sweep.summary(".md"))
        if "model.heads" in keys:
            plot_heads(groups, metric, sweep.summary(".png"))
        return rows
    columns = table_columns(rows, keys, metrics)
    cells = table_cells(rows, columns)
    table = Table(title=f"{spec.get('name', sweep_dir.name)}: {metric} ({mode}), best first")
    for column in columns:
        table.add_column(column)
    for row in cells:
        table.add_row(*row)
    console.print(table)
    write_table_markdown(columns, cells, sweep.summary(".md"))
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
            sweep.selection_file.write_text(json.dumps(selection, indent=2) + "\n")
            console.print(
                f"selected by {select['by']}: job {chosen['job']} -> {select['report']} = "
                f"{chosen.get(select['report'])}"
            )
    if "model.heads" in keys:
        plot_heads(rows, metric, sweep.summary(".png"))
    return rows


SEED_METRICS = ("val/ppl", "val/acc", "val/acc_longrange", "val/acc_local")
QA_METRICS = ("dev/exact_match", "dev/exact", "dev/f1", "test/exact_match", "test/exact", "test/f1")
"""EM and F1 by the keys a fine-tuning run writes: SQuAD 1.1 and MRQA ``exact_match``, SQuAD 2.0 the official
script's ``exact``; ``f1`` in both."""


def plain_metric(sweep_dir: Path, rows: list[dict]) -> tuple[str, str]:
    """(metric, mode) of a directory without sweep.yaml (a plain multirun, ``runs/<command>``): nothing names its
    metric, so it follows from what the runs are -- fine-tuning is ranked by dev F1 (SQuAD 1.1, 2.0 and MRQA all
    write ``dev/f1``, as sweeps/finetune_grid.yaml ranks), pre-training by validation perplexity."""
    kinds = {job_kind(RunDir(sweep_dir / row["job"]), row) for row in rows} - {None}
    if len(kinds) > 1:
        raise ConfigError(
            f"{sweep_dir}: holds both pre-training and fine-tuning runs, which no one metric ranks: "
            "report each command's runs from a directory of their own"
        )
    return ("dev/f1", "max") if kinds == {"finetune"} else ("val/ppl", "min")


def job_kind(job: RunDir, row: dict) -> str | None:
    """finetune or pretrain: a fine-tuning config has a ``task`` (as ``report --paper`` tells them); without a
    readable config, the scores the job wrote; None when neither tells."""
    config = job.config()
    if config is not None:
        return "finetune" if "task" in config else "pretrain"
    if any(key.startswith(("dev/", "test/")) for key in row):
        return "finetune"
    return "pretrain" if any(key.startswith("val/") for key in row) else None


def shown_metrics(rows: list[dict], metric: str) -> list[str]:
    """The metric the rows are ranked by, then the validation or EM/F1 scores the rows have beside it."""
    return list(dict.fromkeys([metric, *(m for m in (*SEED_METRICS, *QA_METRICS) if any(m in r for r in rows))]))


def table_columns(rows: list[dict], keys: list[str], metrics: list[str]) -> list[str]:
    """The summary table's columns, one list for the printed table and summary.md so that they cannot drift: the
    job, the swept values, the metrics, the status, and the error where a job has one."""
    return ["job", *keys, *metrics, "status", *(["error"] if any(r.get("error") for r in rows) else [])]


def table_cells(rows: list[dict], columns: list[str]) -> list[list[str]]:
    """Each row's cells as text: numbers at their column's decimals (:func:`column_format`), errors cut to 80
    characters."""
    formats = {column: column_format([row.get(column) for row in rows]) for column in columns}
    return [[formats[c](row.get(c))[: 80 if c == "error" else None] for c in columns] for row in rows]


def write_table_markdown(columns: list[str], cells: list[list[str]], path: Path) -> None:
    """summary.md: the printed table as Markdown, every row best first (a ``|`` in a cell escaped)."""
    lines = [_md_row(columns), _md_row(["---"] * len(columns)), *(_md_row(row) for row in cells)]
    path.write_text("\n".join(lines) + "\n")


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def over_seeds(rows: list[dict], keys: list[str], metric: str, mode: str) -> list[dict]:
    """One row per setting (the values of ``keys``): mean and sample std over its finished seeds of the metric
    and the validation metrics, best mean first."""
    import statistics

    settings: dict[tuple, list[dict]] = {}
    for row in rows:
        settings.setdefault(tuple(row[k] for k in keys), []).append(row)
    groups = []
    for values, members in settings.items():
        done = [r for r in members if r["status"] == "finished"]
        group = {**dict(zip(keys, values)), "seeds": len(done), "of": len(members), "status": "finished"}
        for name in dict.fromkeys((metric, *SEED_METRICS)):
            numbers = [r[name] for r in done if isinstance(r.get(name), (int, float)) and math.isfinite(r[name])]
            if numbers:
                group[name] = statistics.fmean(numbers)
                group[f"{name} std"] = statistics.stdev(numbers) if len(numbers) > 1 else 0.0
        group["status"] = "finished" if done else "failed"
        group["error"] = ""
        groups.append(group)
    return rank(groups, metric, mode)


def write_seed_csv(groups: list[dict], path: Path) -> None:
    columns = list(dict.fromkeys(k for g in groups for k in g if k not in ("status", "error")))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(groups)


def print_seed_table(console, groups: list[dict], title: str) -> None:
    keys = [k for k in groups[0] if k not in ("seeds", "of", "status", "error") and not _is_metric(k)]
    metrics = [m for m in dict.fromkeys(k for g in groups for k in g if _is_metric(k) and not k.endswith(" std"))]
    table = Table(title=title)
    for column in (*keys, "seeds", *metrics):
        table.add_column(column)
    decimals = {m: seed_decimals([g.get(m) for g in groups], [g.get(f"{m} std") for g in groups]) for m in metrics}
    for g in groups:
        cells = [f"{g[m]:.{decimals[m]}f} ± {g[m + ' std']:.{decimals[m]}f}" if m in g else "" for m in metrics]
        table.add_row(*(str(g[k]) for k in keys), f"{g['seeds']}/{g['of']}", *cells)
    console.print(table)


def write_seed_markdown(groups: list[dict], keys: list[str], metric: str, path: Path) -> None:
    """summary.md of a sweep over seeds: the settings with a finished seed, best first, as a Markdown table of mean ±
    std over their seeds, with the validation metrics they have: the seed table printed, as docs/figure4.md shows
    it."""
    done = [g for g in groups if g["status"] == "finished"]
    metrics = [m for m in dict.fromkeys((metric, *SEED_METRICS)) if any(m in g for g in done)]
    head = [*keys, "seeds", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for g in done:
        cells = [str(g[k]) for k in keys] + [f"{g['seeds']}/{g['of']}"]
        for m in metrics:
            value = g.get(m)
            spread = f" ± {g[m + ' std']:.3f}" if m + " std" in g else ""
            cells.append("" if value is None else f"{value:.3f}{spread}")
        lines.append("| " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def _is_metric(key: str) -> bool:
    return "/" in key


def join_pretraining(rows: list[dict], source: Path) -> list[str]:
    """finetune_each: give each fine-tuning job the swept values and the metric of the pre-training job it
    started from (its init_from), so that one table holds both of Figure 4's columns. The table's keys."""
    if not SweepDir(source).spec_file.is_file():
        raise FileNotFoundError(
            f"from={source} in sweep.yaml: the pre-training sweep is not there any more (moved?): "
            "put it back, or edit 'from' in this sweep's sweep.yaml"
        )
    spec = SweepDir(source).spec()
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


def column_decimals(values, significant: int = 4, most: int = 12) -> int:
    """The decimals one table column shows its numbers with: ``significant`` digits of the largest, and more (at
    most ``most``) until numbers that differ look different (perplexities 227.659 and 227.748: 227.66, 227.75)."""
    numbers = {v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    largest = max((abs(v) for v in numbers), default=0)
    decimals = significant - 1 - (math.floor(math.log10(largest)) if largest else 0)
    decimals = min(most, max(0, decimals))
    while decimals < most and len({f"{v:.{decimals}f}" for v in numbers}) < len(numbers):
        decimals += 1
    return decimals


def seed_decimals(means, stds, most: int = 12) -> int:
    """The decimals of a column of means ± stds (both at the same): :func:`column_decimals` of the means, and
    more where the smallest std (not 0) needs them to show two significant digits."""
    spreads = [v for v in stds if isinstance(v, float) and math.isfinite(v) and v > 0]
    wanted = 1 - math.floor(math.log10(min(spreads))) if spreads else 0
    return max(column_decimals(means, most=most), min(most, wanted))


def column_format(values):
    """How one table column writes its cells: floats at the column's :func:`column_decimals`, the rest as text."""
    decimals = column_decimals([v for v in values if isinstance(v, float)])

    def cell(value) -> str:
        if value is None:
            return ""
        return f"{value:.{decimals}f}" if isinstance(value, float) and math.isfinite(value) else str(value)

    return cell


def write_csv(rows: list[dict], keys: list[str], metrics: list[str], path: Path) -> None:
    """summary.csv: the table's columns first, then every other number the jobs wrote."""
    extra = sorted({k for r in rows for k in r} - {"job", "status", "error", "_overrides", *metrics, *keys})
    columns = ["job", *keys, *metrics, "status", "error", *extra]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot_heads(rows: list[dict], metric: str, path: Path) -> None:
    """Figure 4: the metric by head assignment, beside the long-range and local accuracies where the runs have them
    (n=2: a panel per metric by head config, with error bars of one std for means over seeds; n=3: heatmaps over
    the two shifted counts)."""
    done = [r for r in rows if r["status"] == "finished" and r.get(metric) is not None]
    if not done:
        return
    counts = [list(parse_heads(r["model.heads"])) for r in done]
    panels = [metric] + [m for m in ("val/acc_longrange", "val/acc_local") if all(m in r for r in done)]
    plot = plot_heads_n3 if len(counts[0]) == 3 else plot_heads_n2
    plot(done, counts, panels, path)


def plot_heads_n3(rows: list[dict], counts: list[list[int]], metrics: list[str], path: Path) -> None:
    """n=3: one heatmap per metric over the shift-1 and shift-2 head counts (the identity count is the rest)."""
    plt = pyplot()
    import numpy as np

    size = max(max(c[1], c[2]) for c in counts) + 1
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        grid = np.full((size, size), np.nan)
        for c, r in zip(counts, rows):
            grid[c[1], c[2]] = r[metric]
        image = ax.imshow(grid, origin="lower", cmap="viridis" if "acc" in metric else "viridis_r")
        fig.colorbar(image, ax=ax, label=metric)
        ax.set_xlabel("heads with shift 2")
        ax.set_ylabel("heads with shift 1")
        ax.set_title(f"{metric} by head assignment")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_heads_n2(rows: list[dict], counts: list[list[int]], metrics: list[str], path: Path) -> None:
    """n=2: one panel per metric by head config (identity : shifted); error bars where the rows have a std."""
    plt = pyplot()
    order = sorted(zip(counts, rows), key=lambda x: x[0][1])
    labels = [":".join(map(str, c)) for c, _ in order]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        ax.errorbar(range(len(order)), [r[metric] for _, r in order],
                    yerr=[r.get(f"{metric} std", 0) for _, r in order], fmt="o-", capsize=3)  # fmt: skip
        ax.set_xticks(range(len(order)), labels)  # labels, not times ("12:0")
        ax.set_title(metric)
        ax.set_xlabel("head config (identity : shifted)")
        ax.tick_params(axis="x", labelrotation=60)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
