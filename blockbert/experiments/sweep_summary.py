"""Summaries of a sweep (or any multirun) directory: summary.csv, a table best first, and a plot."""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime
from pathlib import Path

from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from blockbert.display import console as make_console
from blockbert.display import counted, pyplot
from blockbert.errors import ConfigError
from blockbert.experiments.sweep_plan import shown
from blockbert.formats.run_dir import STAMP, RunDir, SweepDir, job_order
from blockbert.model.config import parse_heads

STATUS_ORDER = {"finished": 0, "running": 1, "interrupted": 2, "incomplete": 3, "failed": 4, "not started": 5}
"""A job's status, in the order the table lists the jobs without the metric: metrics.json's (running, interrupted,
failed, finished), failed for a job's error.txt, finished for a sweep job's done.json, incomplete for a job that wrote
none of them (:data:`INCOMPLETE`), not started for a job the multirun planned that has no directory."""

INCOMPLETE = (
    "incomplete: no metrics.json or error.txt: the job is starting, or its process ended before training without "
    "recording why (killed)"
)


def read_jobs(sweep_dir: Path, keys: list[str]) -> list[dict]:
    """A row per job directory (one with .hydra/overrides.yaml): its swept values, status, error and numeric
    metrics."""
    rows = []
    for job in SweepDir(sweep_dir).jobs():
        # a resumed run's values: those it started with, updated by what its last resume gave (a new max_steps).
        # What a resume keeps it must give the same (or be refused); a setting it may change and left out ran at
        # its default, which this shows as the started value
        values = override_values([job.overrides() or [], job.last_overrides() or []])
        metrics = job.metrics()
        row = job_row(job.path.name, values, keys, *job_status(job, metrics))
        row.update({k: v for k, v in metrics.items() if is_number(v)})
        rows.append(row)
    return rows


def job_row(name: str, values: dict[str, str], keys: list[str], status: str, error: str) -> dict:
    """A job's row before its metrics: its name, its overrides' values (``_overrides``, and each of ``keys``'), its
    status and error."""
    return {"job": name, "_overrides": values, **{k: values.get(k, "") for k in keys}, "status": status, "error": error}


def job_status(job: RunDir, metrics: dict) -> tuple[str, str]:
    """(the job's status, the first line of its error): failed with its error.txt (what a sweep's job that raised,
    or a multirun's that failed before it had a metrics.json, records), finished with a sweep job's done.json; else
    metrics.json's status (running, interrupted, finished, failed with its ``error``: a run that fails while training
    writes it there); a benchmark's or profile's run is finished with its results file (a benchmark stopped before
    its end interrupted: benchmark.json says so); incomplete without any of them."""
    if job.error_file.is_file():
        return "failed", first_line(job.error_file.read_text(errors="replace"))
    if job.done_file.is_file() or metrics.get("status") == "finished":
        return "finished", ""
    if not metrics and (job.benchmark_file.is_file() or job.profile_file.is_file()):
        return "interrupted" if job.benchmark().get("complete") is False else "finished", ""
    return str(metrics.get("status", "incomplete")), first_line(str(metrics.get("error", "")))


def first_line(text: str) -> str:
    return next(iter(text.strip().splitlines()), "")


def override_values(override_lists: list[list[str]]) -> dict[str, str]:
    """{key: value} of overrides (``key=value``), a later list's value replacing an earlier one's."""
    values = {}
    for overrides in override_lists:
        values |= {k: _unescape(v) for k, v in (str(o).split("=", 1) for o in overrides if "=" in str(o))}
    return values


def unstarted_rows(sweep: SweepDir, planned: list[list[str]], keys: list[str]) -> list[dict]:
    """A row (not started) per job of ``planned`` (each job's overrides, in job order) that has no directory: none
    named by its number (a sweep's and a default multirun's job directories are) and none that ran with its
    overrides (a multirun's job directories named otherwise: ``hydra.sweep.subdir``)."""
    jobs = sweep.jobs()
    names = {job.path.name for job in jobs}
    ran = {tuple(o) for job in jobs for o in (job.overrides(), *job.resume_overrides()) if o is not None}
    rows = []
    for number, overrides in enumerate(planned):
        if str(number) in names or tuple(overrides) in ran:
            continue
        rows.append(job_row(str(number), override_values([overrides]), keys, "not started", ""))
    return rows


def _unescape(value: str) -> str:
    """Hydra writes a sweep's values escaped (``3\\:1``) and sometimes quoted."""
    return shown(value).strip("'\"")


def rank(rows: list[dict], metric: str, mode: str) -> list[dict]:
    def key(row):
        value = row.get(metric)
        ok = row["status"] == "finished" and isinstance(value, (int, float)) and math.isfinite(value)
        return (0 if ok else 1, (value if mode == "min" else -value) if ok else 0, STATUS_ORDER.get(row["status"], 9))

    return sorted(rows, key=key)


def summarize_sweep(sweep_dir: Path, planned: list[list[str]] | None = None) -> list[dict]:
    """Write summary.csv (+ summary.md, selection.json, summary.png) into ``sweep_dir`` and print the table and how
    many jobs are in each status. ``planned``: every job's overrides as the multirun planned them, in job order (from
    Hydra's multirun.yaml: :mod:`blockbert.app.commands.report`); a planned job without a directory is listed as not
    started. Without it only the job directories are listed."""
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
    rows += unstarted_rows(sweep, planned or [], keys)
    if not rows:
        inside = sorted(path for path in sweep_dir.iterdir() if path.is_dir() and SweepDir(path).jobs())
        hint = f": it holds multiruns or sweeps, report one of them (e.g. {inside[-1]})" if inside else ""
        raise FileNotFoundError(f"{sweep_dir}: no job directories (with .hydra/overrides.yaml) found{hint}")
    if not keys:  # a plain multirun: the overrides whose values differ between jobs
        every = {k for r in rows for k in r["_overrides"]}
        keys = sorted(k for k in every if len({r["_overrides"].get(k) for r in rows}) > 1)
        for r in rows:
            r.update({k: r["_overrides"].get(k, "") for k in keys})
    if spec.get("from"):
        keys = join_pretraining(rows, Path(spec["from"]))
    kinds = set() if "metric" in spec else run_kinds(sweep_dir, rows)
    if kinds & MEASURED:
        summarize_measurements(console, sweep, rows, keys, kinds.pop())
        return rows
    metric, mode = (spec["metric"], spec.get("mode", "min")) if "metric" in spec else plain_metric(kinds)
    rows = rank(rows, metric, mode)
    order = "best first"
    if "metric" not in spec:  # runs of any commands' lines (runs/finetune): scores on other sets are not ranked as one
        column = scored_column(sweep_dir, rows, metric)
        if column:
            keys, order = [column, *keys], f"best first within each {column}"
            rows = sorted(rows, key=lambda row: within(row, column))  # stable: ranked within each
    metrics = shown_metrics(rows, metric)
    write_csv(rows, keys, metrics, sweep.summary(".csv"))
    if "seed" in keys and len({r["seed"] for r in rows}) > 1:
        settings = [k for k in keys if k != "seed"]
        groups = over_seeds(rows, settings, metric, mode)
        if order != "best first":
            groups = sorted(groups, key=lambda group: within(group, keys[0]))  # over_seeds ranks them all as one
        write_seed_csv(groups, sweep.seeds_summary)
        print_seed_table(console, groups, f"{spec.get('name', sweep_dir.name)}: mean ± std over seeds, {order}")
        print_counts(console, rows)
        write_seed_markdown(groups, settings, metric, sweep.summary(".md"))
        plotted = groups
    else:
        columns = table_columns(rows, keys, metrics)
        cells = table_cells(rows, columns)
        print_table(console, f"{spec.get('name', sweep_dir.name)}: {metric} ({mode}), {order}", columns, cells)
        print_counts(console, rows)
        write_table_markdown(columns, cells, sweep.summary(".md"))
        select_job(console, sweep, rows, keys, spec.get("select") or {}, mode)
        plotted = rows
    if "model.heads" in keys:
        plot_heads(console, plotted, metric, sweep.summary(".png"))
    return rows


def select_job(console, sweep: SweepDir, rows: list[dict], keys: list[str], select: dict, mode: str) -> None:
    """selection.json (a sweep with ``select``: finetune_grid): the job best by ``select["by"]`` and its
    ``select["report"]`` (the test score of the best dev score), when that job finished."""
    if not select:
        return
    chosen = rank(rows, select["by"], "max" if mode == "max" else "min")[0]
    if chosen["status"] != "finished":
        return
    selection = {
        "job": chosen["job"],
        **{k: chosen[k] for k in keys},
        select["by"]: chosen.get(select["by"]),
        select["report"]: chosen.get(select["report"]),
    }
    sweep.selection_file.write_text(json.dumps(selection, indent=2) + "\n")
    reported = chosen.get(select["report"])
    if reported is None:  # finetune_grid's test/f1 without a test set (the generated task; a dev file alone)
        no_test = select["report"].startswith("test/")
        reported = "not recorded by that job" + (": its task has no test set (task.test_file)" if no_test else "")
    else:
        reported = f"= {reported}"
    console.print(f"selected by {select['by']}: job {chosen['job']} -> {select['report']} {reported}", markup=False)


def print_table(console, title: str, columns: list[str], cells: list[list[str]]) -> None:
    """The summary table (``columns[0]`` the job), no cell cut: job names dated as a run directory's lose the year
    they share (:func:`shown_job_names`), the errors go under the table, a line each, where the table with them is
    wider than the terminal, and a cell still too long folds onto more lines. summary.csv and summary.md keep every
    value whole."""
    jobs = shown_job_names([row[0] for row in cells])
    rows = [[job, *row[1:]] for job, row in zip(jobs, cells)]
    table = plain_table(title, columns, rows)
    if "error" not in columns or natural_width(console, table) <= console.width:
        console.print(table)
        return
    at = columns.index("error")
    console.print(plain_table(title, columns[:at] + columns[at + 1 :], [row[:at] + row[at + 1 :] for row in rows]))
    for row in rows:
        if row[at]:
            console.print(f"job {row[0]}: {row[at]}", markup=False, highlight=False)


def natural_width(console, table: Table) -> int:
    """The table's width in a terminal wide enough for all of it."""
    return Measurement.get(console, console.options.update_width(10**6), table).maximum


def plain_table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    """A table whose cells are text as it is (not rich markup: an error's ``[...]`` stays) and fold, not cut."""
    table = Table(title=Text(title))
    for column in columns:
        table.add_column(Text(column), overflow="fold")
    for row in rows:
        table.add_row(*map(Text, row))
    return table


def shown_job_names(names: list[str]) -> list[str]:
    """The jobs' names as the printed table shows them: run directories named by their start (``runs/<command>/``'s
    ``2026-12-05_18-21-05``) without the year, when every job is one and they all share it (``12-05_18-21-05``);
    other names as they are."""
    years = {name[:4] for name in names if _dated(name)}
    if len(years) != 1 or not all(_dated(name) for name in names):
        return list(names)
    return [name.split("-", 1)[1] for name in names]


def _dated(name: str) -> bool:
    try:
        datetime.strptime(name, STAMP)
    except ValueError:
        return False
    return True


def print_counts(console, rows: list[dict]) -> None:
    """The line under the table where a job did not finish: how many jobs there are in each status (``4 jobs: 2
    finished, 1 failed, 1 not started``), and what incomplete means where a job is."""
    counts = {status: sum(r["status"] == status for r in rows) for status in {r["status"] for r in rows}}
    if set(counts) == {"finished"}:
        return
    ordered = sorted(counts, key=lambda status: (STATUS_ORDER.get(status, len(STATUS_ORDER)), status))
    console.print(
        f"{counted(len(rows), 'job')}: " + ", ".join(f"{counts[s]} {s}" for s in ordered),
        markup=False,
        highlight=False,
    )
    if "incomplete" in counts:
        console.print(INCOMPLETE, markup=False, highlight=False)


SEED_METRICS = ("val/ppl", "val/acc", "val/acc_longrange", "val/acc_local")
QA_METRICS = ("dev/exact_match", "dev/exact", "dev/f1", "test/exact_match", "test/exact", "test/f1")
"""EM and F1 by the keys a fine-tuning run writes: SQuAD 1.1 and MRQA ``exact_match``, SQuAD 2.0 the official
script's ``exact``; ``f1`` in both."""


def run_kinds(sweep_dir: Path, rows: list[dict]) -> set[str]:
    """The commands that wrote the jobs of a directory without sweep.yaml (a plain multirun, ``runs/<command>``), one
    at most: their results are ranked (or listed) as one kind's; an error for several."""
    kinds = {job_kind(RunDir(sweep_dir / row["job"]), row) for row in rows} - {None}
    if len(kinds) > 1:
        raise ConfigError(
            f"{sweep_dir}: holds runs of {' and '.join(sorted(kinds))}, which no one table compares: "
            "report each command's runs from a directory of their own"
        )
    return kinds


def plain_metric(kinds: set[str]) -> tuple[str, str]:
    """(metric, mode) of a directory without sweep.yaml: nothing names its metric, so it follows from what the runs
    are (:func:`run_kinds`) -- fine-tuning is ranked by dev F1 (SQuAD 1.1, 2.0 and MRQA all write ``dev/f1``, as
    sweeps/finetune_grid.yaml ranks), pre-training by validation perplexity."""
    return ("dev/f1", "max") if kinds == {"finetune"} else ("val/ppl", "min")


MEASURED = {"benchmark", "profile"}
"""The commands whose runs measure rather than train: no one number ranks them."""


def summarize_measurements(console, sweep: SweepDir, rows: list[dict], keys: list[str], kind: str) -> None:
    """The summary of benchmark or profile runs: a row per run, in job order (a dated run directory's is its start),
    with what it measured (a benchmark's mode), on which device, how many points, and its status; summary.csv and
    summary.md. Their results are each run's own (benchmark.json, profile.json); ``report --paper`` sets them beside
    the paper's numbers."""
    rows.sort(key=lambda row: job_order(row["job"]))  # those not started too (listed after the others)
    for row in rows:
        job = RunDir(sweep.path / row["job"])
        results = job.benchmark() if kind == "benchmark" else job.profile()
        config = job.config() or {}
        row["measured"] = results.get("mode", config.get("mode", "")) if kind == "benchmark" else "memory"
        row["device"] = str(results.get("device", config.get("device", "")))
        row["points"] = measured_points(results, kind) if results else ""
    shown = [*(["measured"] if "mode" not in keys else []), "device", "points"]  # a swept mode is what it measured
    columns = ["job", *keys, *shown, "status", *(["error"] if any(r.get("error") for r in rows) else [])]
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    print_table(console, f"{sweep.path.name}: {kind} runs", columns, cells)
    print_counts(console, rows)
    console.print(
        f"each run's results are in its {kind}.json (and .png); `blockbert report --paper {sweep.path}` sets them "
        "beside the paper's numbers",
        markup=False,
        highlight=False,
    )
    write_csv(rows, keys, shown, sweep.summary(".csv"))
    write_table_markdown(columns, cells, sweep.summary(".md"))


def measured_points(results: dict, kind: str) -> int:
    """How many points a benchmark or profile run measured: its records that ran (not those skipped or out of
    memory; a whole run or a plan's run that failed), or its models' rows."""
    if kind == "benchmark":  # a whole run's record that failed has an error and no status
        return sum(r.get("status", "ok") == "ok" and not r.get("error") for r in results.get("records", []))
    return sum(len(model.get("rows", [])) for model in results.get("models", {}).values())


def scored_column(sweep_dir: Path, rows: list[dict], metric: str) -> str | None:
    """A plain directory's runs scored on different sets: fine-tuning on other tasks or dev files, pre-training on
    other corpora, whose scores no one ranking compares. Each row gets the set it was scored on in a column of that
    name ("dev set", "corpus": not "data", the override that picks one, which may be a column of its own), returned
    to rank within it; None, and no column, when they share one (or none says)."""
    column = "dev set" if metric == "dev/f1" else "corpus"
    scored = {row["job"]: scored_on(RunDir(sweep_dir / row["job"]), column) for row in rows}
    if len(set(scored.values()) - {None}) < 2:
        return None
    for row in rows:
        row[column] = scored[row["job"]] or ""
    return column


def within(row: dict, column: str) -> tuple[bool, str]:
    """The sort key that keeps rows ranked within each set: by set, a row whose set is unknown (not started, no
    config) last, as :func:`rank` puts it."""
    return row[column] == "", row[column]


def scored_on(job: RunDir, column: str) -> str | None:
    """The set a run's scores are on, from its config: a fine-tuning run's task and dev file (the generated set's
    version and size; the first N questions of ``max_eval_samples``), a pre-training run's corpus and files; None
    without a readable config."""
    config = job.config()
    if config is None:
        return None
    node = (config.get("task") if column == "dev set" else config.get("data")) or {}
    files = node.get("dev_file") if column == "dev set" else node.get("files")
    files = [files] if isinstance(files, str) else list(files or [])
    parts = [str(node.get("name", "?")), *(Path(str(f)).name for f in files)]
    if column == "corpus" and node.get("source") == "hub":  # its name may be another source's (tiny_corpus, hub)
        parts.append(f"hub {node.get('hub_name')}")
    if column == "dev set" and not files and node.get("version"):  # the generated set: its version and size
        parts.append(f"v{node['version']}")
        if node.get("generated_questions"):
            parts.append(f"{node['generated_questions']} questions")
    if column == "dev set" and node.get("max_eval_samples"):
        parts.append(f"first {node['max_eval_samples']}")
    return " ".join(parts)


def job_kind(job: RunDir, row: dict) -> str | None:
    """The command that wrote the job (:meth:`RunDir.command`); without a readable config, told from the scores it
    wrote; None when nothing tells."""
    kind = job.command()
    if kind:
        return kind
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
    """Each row's cells as text: numbers at their column's decimals (:func:`column_format`), errors whole (their
    first line: the printed table folds them, or lists them under itself)."""
    formats = {column: column_format([row.get(column) for row in rows]) for column in columns}
    return [[formats[c](row.get(c)) for c in columns] for row in rows]


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
    decimals = {m: seed_decimals([g.get(m) for g in groups], [g.get(f"{m} std") for g in groups]) for m in metrics}
    rows = []
    for g in groups:
        cells = [f"{g[m]:.{decimals[m]}f} ± {g[m + ' std']:.{decimals[m]}f}" if m in g else "" for m in metrics]
        rows.append([*(str(g[k]) for k in keys), f"{g['seeds']}/{g['of']}", *cells])
    console.print(plain_table(title, [*keys, "seeds", *metrics], rows))


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
    numbers = {v for v in values if is_number(v) and math.isfinite(v)}
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


PLOTTED_BLOCKS = {2: (4.5, 3.8), 3: (5.0, 4.0)}
"""The numbers of blocks n whose head assignments are plotted, with the size (inches) of one panel of theirs."""


def plot_heads(console, rows: list[dict], metric: str, path: Path) -> None:
    """Figure 4 in summary.png: the metric by head assignment, beside the long-range and local accuracies where the
    runs have them; a row of panels per n (n=2: by head config, with error bars of one std for means over seeds;
    n=3: heatmaps over the two shifted counts). The finished jobs it cannot place (without a head config, another n)
    are left out, in one line each; with none to plot, no summary.png (an earlier one is removed) and one line why."""
    done = [r for r in rows if r["status"] == "finished" and is_number(r.get(metric))]
    groups, left_out = head_groups(done)
    for reason, labels in left_out.items():
        jobs = counted(len(labels), "job")
        console.print(f"summary.png: {jobs} {reason} left out: {', '.join(labels)}", markup=False, highlight=False)
    if not groups:
        path.unlink(missing_ok=True)
        console.print(
            f"summary.png: not written: no finished job with a head config (model.heads) and {metric}",
            markup=False,
            highlight=False,
        )
        return
    draw_heads(groups, metric, path)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def head_groups(rows: list[dict]) -> tuple[dict[int, list[tuple[tuple[int, ...], dict]]], dict[str, list[str]]]:
    """({n: [(head counts, row)] for the plotted n, fewest blocks first}, {why: the labels of the rows left out})."""
    groups: dict[int, list] = {}
    left_out: dict[str, list[str]] = {}
    for row in rows:
        counts = _head_counts(row.get("model.heads"))
        if counts is None:
            left_out.setdefault("without a head config (model.heads)", []).append(_label(row))
        elif len(counts) not in PLOTTED_BLOCKS:
            n = ", ".join(f"n={k}" for k in PLOTTED_BLOCKS)
            left_out.setdefault(f"with n={len(counts)} blocks (plotted: {n})", []).append(_label(row))
        else:
            groups.setdefault(len(counts), []).append((counts, row))
    return dict(sorted(groups.items())), left_out


def _head_counts(heads) -> tuple[int, ...] | None:
    """The head counts of a head config, None where there is none (a run without model.heads) or it is not one."""
    try:
        return parse_heads(heads) if heads not in (None, "") else None
    except ConfigError:
        return None


def _label(row: dict) -> str:
    """A row named in a line: its job, or for a mean over seeds its head config."""
    return str(row.get("job", row.get("model.heads", "?")))


def draw_heads(groups: dict[int, list[tuple[tuple[int, ...], dict]]], metric: str, path: Path) -> None:
    """summary.png: a row of panels per n (``groups``), one per metric the n's rows all have."""
    plt = pyplot()
    panels = {n: head_panels([row for _, row in pairs], metric) for n, pairs in groups.items()}
    columns = max(len(metrics) for metrics in panels.values())
    width = max(PLOTTED_BLOCKS[n][0] for n in groups) * columns
    height = sum(PLOTTED_BLOCKS[n][1] for n in groups)
    fig, axes = plt.subplots(len(groups), columns, figsize=(width, height), squeeze=False)
    for row_axes, (n, pairs) in zip(axes, groups.items()):
        prefix = f"n={n}: " if len(groups) > 1 else ""
        draw = draw_heads_n3 if n == 3 else draw_heads_n2
        draw(fig, row_axes[: len(panels[n])], pairs, panels[n], prefix)
        for ax in row_axes[len(panels[n]) :]:
            ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def head_panels(rows: list[dict], metric: str) -> list[str]:
    """The metrics plotted: ``metric``, then the long-range and local accuracies where every row has them."""
    return [metric] + [m for m in ("val/acc_longrange", "val/acc_local") if all(m in r for r in rows)]


def draw_heads_n3(fig, axes, pairs: list[tuple[tuple[int, ...], dict]], metrics: list[str], prefix: str) -> None:
    """n=3: one heatmap per metric over the shift-1 and shift-2 head counts (the identity count is the rest)."""
    import numpy as np

    size = max(max(counts[1], counts[2]) for counts, _ in pairs) + 1
    for ax, metric in zip(axes, metrics):
        grid = np.full((size, size), np.nan)
        for counts, row in pairs:
            grid[counts[1], counts[2]] = row[metric]
        image = ax.imshow(grid, origin="lower", cmap="viridis" if "acc" in metric else "viridis_r")
        fig.colorbar(image, ax=ax, label=metric)
        ax.set_xlabel("heads with shift 2")
        ax.set_ylabel("heads with shift 1")
        ax.set_title(f"{prefix}{metric} by head assignment")


def draw_heads_n2(fig, axes, pairs: list[tuple[tuple[int, ...], dict]], metrics: list[str], prefix: str) -> None:
    """n=2: one panel per metric by head config (identity : shifted); error bars where the rows have a std."""
    order = sorted(pairs, key=lambda pair: pair[0][1])
    labels = [":".join(map(str, counts)) for counts, _ in order]
    for ax, metric in zip(axes, metrics):
        ax.errorbar(range(len(order)), [r[metric] for _, r in order],
                    yerr=[r.get(f"{metric} std", 0) for _, r in order], fmt="o-", capsize=3)  # fmt: skip
        ax.set_xticks(range(len(order)), labels)  # labels, not times ("12:0")
        ax.set_title(f"{prefix}{metric}")
        ax.set_xlabel("head config (identity : shifted)")
        ax.tick_params(axis="x", labelrotation=60)
