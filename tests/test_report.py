"""`blockbert report DIR` (and the summary a sweep ends with): every job listed with its status, a head plot that
never ends the summary, and a table readable in an 80-column terminal. The job directories are written here as the
commands write them (.hydra/overrides.yaml, metrics.json, error.txt, sweep.yaml, Hydra's multirun.yaml), except in
the one end-to-end test."""

import csv
import json
import os
import subprocess

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

import cli

runner = CliRunner()

TINY_JOB = [  # tests/test_sweeps.py's tiniest training job
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "logger=none",
    "progress_bar=false",
    "data.generated_documents=40",
]


def job(directory, name, overrides, metrics=None, error=None, config=None):
    """A job directory as a run leaves it: Hydra's .hydra/overrides.yaml (and config.yaml), then what the run wrote:
    ``metrics`` as metrics.json (MetricsJson), ``error`` as a job's error.txt (its first line, then the
    traceback)."""
    path = directory / name
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if config is not None:
        (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    if error is not None:
        (path / "error.txt").write_text(f"{error}\n\nTraceback (most recent call last):\n  ...\n")
    return path


def finished(ppl, **more):
    return {"val/ppl": ppl, "val/acc": 0.25, "step": 3, "status": "finished", **more}


def sweep_spec(directory, grid, name="heads"):
    """sweep.yaml as `blockbert sweep` writes it (blockbert/app/commands/sweep.py: write_spec)."""
    spec = {"name": name, "command": "pretrain", "metric": "val/ppl", "mode": "min", "select": {},
            "overrides": ["experiment=tiny"], "grid": grid, "config_dir": None}  # fmt: skip
    (directory / "sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def multirun_yaml(directory, task_overrides):
    """The part of Hydra's multirun.yaml (written by its basic sweeper before the first job) that records the jobs:
    the sweeper and the multirun's overrides, comma lists unexpanded."""
    config = {
        "hydra": {
            "sweep": {"dir": str(directory), "subdir": "${hydra.job.num}"},
            "sweeper": {
                "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                "max_batch_size": None,
                "params": None,
            },  # fmt: skip
            "overrides": {"hydra": [f"hydra.sweep.dir={directory}", "hydra.mode=MULTIRUN"], "task": task_overrides},
            "mode": "MULTIRUN",
        },
        "seed": 0,
    }
    (directory / "multirun.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def report(directory):
    """`blockbert report DIR` as a user runs it: (exit code, what it printed)."""
    result = runner.invoke(cli.app, ["report", str(directory)])
    return result.exit_code, result.output


def csv_rows(directory):
    with (directory / "summary.csv").open() as f:
        return list(csv.DictReader(f))


def table_rows(out):
    """The printed table's rows as lists of cells (each row on one line: the table is 160 columns wide here)."""
    return [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]


# ------------------------------------------------------------------------------------------ fault 1: the head plot
def test_a_head_sweep_over_two_and_three_blocks_is_summarised_and_plotted(tmp_path):
    """`blockbert sweep heads_n2 ... model.heads=3:1,2:1:1` ended, after both jobs had finished, in "list index out
    of range" (rc 1): the plot took every head config for n=3 when the best job's was. Each n is plotted."""
    sweep_dir = tmp_path / "sweep"
    heads = ["3:1", "2:1:1", "2:2"]
    for number, (config, ppl) in enumerate(zip(heads, [12.0, 10.0, 11.0])):  # 2:1:1 (n=3) best
        job(sweep_dir, str(number), ["experiment=tiny", f"model.heads={config}"], finished(ppl))
    sweep_spec(sweep_dir, {"model.heads": heads})
    code, out = report(sweep_dir)
    assert code == 0, out
    assert (sweep_dir / "summary.png").stat().st_size > 0
    assert "summary (summary.csv, summary.md, summary.png) is in:" in out
    assert [r["model.heads"] for r in csv_rows(sweep_dir)] == ["2:1:1", "2:2", "3:1"]


def test_runs_without_a_head_config_are_left_out_of_the_plot_in_one_line(tmp_path):
    """`blockbert report runs/pretrain` over runs with and without model.heads ended in "heads='' is not a head
    config" (rc 2) after writing summary.csv and summary.md."""
    runs = tmp_path / "pretrain"
    job(runs, "2026-12-05_18-21-05", ["model.heads=3:1"], finished(12.0), config={"model": {"name": "tiny"}})
    job(runs, "2026-12-05_18-25-40", ["model.heads=2:2"], finished(11.0), config={"model": {"name": "tiny"}})
    job(runs, "2026-12-05_18-30-12", [], finished(10.0), config={"model": {"name": "tiny"}})
    code, out = report(runs)
    assert code == 0, out
    assert "summary.png: 1 job without a head config (model.heads) left out: 2026-12-05_18-30-12" in out
    assert (runs / "summary.png").stat().st_size > 0
    assert len(csv_rows(runs)) == 3


def test_no_plot_without_a_finished_head_config_says_why(tmp_path):
    runs = tmp_path / "pretrain"
    job(runs, "0", ["model.heads=3:1"], {"status": "failed", "error": "RuntimeError: boom", "step": 0})
    job(runs, "1", [], finished(10.0))
    code, out = report(runs)
    assert code == 0, out
    assert "summary.png: not written: no finished job with a head config (model.heads) and val/ppl" in out
    assert not (runs / "summary.png").exists()


# ------------------------------------------------------------------------------------------ fault 2: every job
def test_a_failed_jobs_error_is_read_from_its_metrics_json(tmp_path):
    """A plain multirun's job that failed while training records its error in metrics.json (MetricsJson), not in
    error.txt (written only by a job that failed before it had a metrics.json): it was listed as failed with no
    error."""
    directory = tmp_path / "multirun"
    job(directory, "0", ["optim.lr=1e-3"], {"status": "failed", "error": "RuntimeError: CUDA error\nmore", "step": 1})
    job(directory, "1", ["optim.lr=3e-3"], finished(10.0))
    code, out = report(directory)
    assert code == 0, out
    rows = {row[0]: row for row in table_rows(out)}
    assert rows["0"][-2:] == ["failed", "RuntimeError: CUDA error"]
    assert "2 jobs: 1 finished, 1 failed" in out


@pytest.mark.parametrize("spec", [True, False], ids=["sweep", "multirun"])
def test_jobs_that_never_started_are_listed_from_multirun_yaml(tmp_path, spec):
    """After a SIGTERM in job 0 of a 2-job sweep, `blockbert report DIR` listed job 0 alone: job 1, which never
    started, is listed as not started with its values (from Hydra's multirun.yaml, a sweep's and a plain
    multirun's record of its jobs)."""
    directory = tmp_path / "sweep"
    job(directory, "0", ["experiment=tiny", "model.heads=3\\:1"], {"status": "interrupted", "step": 1})
    multirun_yaml(directory, ["experiment=tiny", "model.heads=3\\:1,2\\:2"])
    if spec:
        sweep_spec(directory, {"model.heads": ["3:1", "2:2"]})
    code, out = report(directory)
    assert code == 0, out
    rows = csv_rows(directory)
    assert [(r["job"], r["model.heads"], r["status"]) for r in rows] == [
        ("0", "3:1", "interrupted"),
        ("1", "2:2", "not started"),
    ]
    assert "2 jobs: 1 interrupted, 1 not started" in out


def test_a_job_that_left_no_record_is_counted_and_explained(tmp_path):
    """A job whose process ended before training without recording why (killed) has no metrics.json and no
    error.txt; it is listed as incomplete, and the line under the table says what that means."""
    directory = tmp_path / "multirun"
    job(directory, "0", ["data.files=other.txt"])
    job(directory, "1", ["data.files=corpus.txt"], finished(10.0))
    multirun_yaml(directory, ["data.files=other.txt,corpus.txt"])
    code, out = report(directory)
    assert code == 0, out
    assert [(r["job"], r["status"]) for r in csv_rows(directory)] == [("1", "finished"), ("0", "incomplete")]
    assert "2 jobs: 1 finished, 1 incomplete" in out
    assert "incomplete: no metrics.json or error.txt: the job is starting, or its process ended before training" in out


def measured_run(directory, name, command, overrides, results=None):
    """A benchmark's or profile's run directory: Hydra's files (hydra.yaml names the command's config), and
    ``results`` as its benchmark.json or profile.json."""
    mode = dict(o.split("=", 1) for o in overrides).get("mode", "model")
    path = job(directory, name, overrides, config={"mode": mode, "device": "auto"})
    (path / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"config_name": command}}}))
    if results is not None:
        (path / f"{command}.json").write_text(json.dumps(results))
    return path


def test_benchmark_and_profile_runs_are_listed_with_what_they_measured(tmp_path):
    """Before: `blockbert report runs/benchmark` listed every benchmark run as incomplete ("no metrics.json"), ranked
    by a validation perplexity no benchmark has. Now a row per run, in job order: what it measured, on which
    device, how many points, finished or interrupted (benchmark.json's ``complete``), and where its results are."""
    directory = tmp_path / "runs" / "benchmark"
    records = [{"status": "ok"}, {"status": "ok"}, {"status": "out of memory"}]
    measured_run(
        directory,
        "2026-12-06_08-00-08",
        "benchmark",
        ["mode=attention"],
        {"mode": "attention", "device": "cpu", "complete": True, "records": records},
    )
    measured_run(
        directory,
        "2026-12-06_09-00-00",
        "benchmark",
        ["mode=model"],
        {"mode": "model", "device": "cuda", "complete": False, "records": records[:1]},
    )
    measured_run(directory, "2026-12-06_10-00-00", "benchmark", ["mode=layout"])  # killed before its first point
    (directory / "2026-12-06_11-00-00").mkdir()  # no .hydra: not a run
    code, out = report(directory)
    assert code == 0, out
    cells = [(r["job"], r["mode"], r["device"], r["points"], r["status"]) for r in csv_rows(directory)]
    assert cells == [
        ("2026-12-06_08-00-08", "attention", "cpu", "2", "finished"),
        ("2026-12-06_09-00-00", "model", "cuda", "1", "interrupted"),
        ("2026-12-06_10-00-00", "layout", "auto", "", "incomplete"),  # the config's device: nothing was written
    ]
    assert "val/ppl" not in out and "measured" not in out  # the swept mode is what each measured
    assert "3 jobs: 1 finished, 1 interrupted, 1 incomplete" in out
    assert "each run's results are in its benchmark.json (and .png)" in " ".join(out.split())
    profiles = tmp_path / "runs" / "profile"
    measured_run(
        profiles, "a", "profile", [], {"device": "cpu", "models": {"x": {"rows": [{}, {}]}, "y": {"rows": [{}]}}}
    )
    code, out = report(profiles)
    assert code == 0, out
    assert [(r["measured"], r["points"], r["status"]) for r in csv_rows(profiles)] == [("memory", "3", "finished")]
    measured_run(profiles, "b", "benchmark", [], {"mode": "model", "records": []})
    code, out = report(profiles)
    assert code == 2 and "holds runs of benchmark and profile, which no one table compares" in out


def test_a_folder_of_multiruns_points_at_them(tmp_path):
    """`report multirun/pretrain` (a folder of multiruns) said only that it has no job directories."""
    job(tmp_path / "multirun" / "pretrain" / "2026-12-06_08-00-00", "0", ["seed=0"], finished(10.0))
    code, out = report(tmp_path / "multirun" / "pretrain")
    assert code == 2 and " ".join(out.split()).endswith(
        "found: it holds multiruns or sweeps, report one of them (e.g. "
        f"{tmp_path / 'multirun' / 'pretrain' / '2026-12-06_08-00-00'})"
    )


@pytest.mark.parametrize("command", ["report", "benchmark"])
def test_a_command_piped_to_a_closed_reader_ends_quietly_as_cat_does(tmp_path, command):
    """`blockbert report DIR | head` ended in "blockbert report: error: [Errno 32] Broken pipe"; every command now
    ends as `cat` does (exit code 141, nothing on stderr), as `evaluate` already did: one Hydra runs too (benchmark:
    no "Error executing job", no job recorded as failed)."""
    directory = tmp_path / "runs"
    job(directory, "0", ["optim.lr=1e-3"], finished(10.0))
    args = {
        "report": [str(directory)],
        "benchmark": ["mode=attention", "attention_seq_lengths=[32]", "attention_dropout=[0.0]", "repeats=1",
                      "warmup=0", f"hydra.run.dir={tmp_path / 'b'}"],
    }[command]  # fmt: skip
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    try:
        env = {**os.environ, "BLOCKBERT_CACHE": str(tmp_path / "cache")}
        out = subprocess.run(["blockbert", command, *args], stdout=write, stderr=subprocess.PIPE, env=env)
    finally:
        os.close(write)
    assert out.returncode == 141, out.stderr.decode()[-3000:]
    assert b"error" not in out.stderr.lower() and b"Traceback" not in out.stderr


def test_a_plain_multiruns_failed_job_records_its_error_for_the_report(tmp_path, monkeypatch, capsys):
    """Before: only a sweep's jobs wrote error.txt; a plain multirun's job that failed before training (a missing
    data file) was listed as incomplete, its error only on the terminal. A job whose directory holds a run
    (metrics.json: the same multirun run again with other values, its resume refused) leaves that run's record as
    it is."""
    from blockbert.app import launch
    from blockbert.errors import ConfigError

    def entry_point(task):
        def main(cfg):
            if cfg.seed == 0:
                raise ConfigError("data.files: no file matches 'missing.txt'")
            if cfg.seed == 1:
                raise RuntimeError("something broke")
            if cfg.seed == 3:
                raise ConfigError("resuming multi/3 with seed=3 (the run has seed=7)")

        main.__module__ = launch.ENTRY_POINTS[task]
        return main

    monkeypatch.setattr(launch, "_entry_point", entry_point)
    directory = tmp_path / "multi"
    (directory / "2").mkdir(parents=True)
    (directory / "2" / "error.txt").write_text("an earlier try's error\n")
    job(directory, "3", ["seed=7"], finished(9.0))
    code = launch.run_task("pretrain", ["-m", "seed=0,1,2,3", "logger=none", f"hydra.sweep.dir={directory}"])
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert err.splitlines()[-1] == (  # the job named (before: the error alone, as if of a single run)
        f"blockbert pretrain: error: job 0 ({directory / '0'}), the first of 3 failed jobs: data.files: no file "
        "matches 'missing.txt'"
    )
    first_lines = {n: (directory / n / "error.txt").read_text().splitlines()[0] for n in "01"}
    assert first_lines == {
        "0": "ConfigError: data.files: no file matches 'missing.txt'",
        "1": "RuntimeError: something broke",
    }
    assert not (directory / "2" / "error.txt").exists()  # job 2 ran without failing: the old error is gone
    _, out = report(directory)
    statuses = {r["job"]: (r["status"], r["error"]) for r in csv_rows(directory)}
    assert statuses["0"] == ("failed", "ConfigError: data.files: no file matches 'missing.txt'")
    assert statuses["1"] == ("failed", "RuntimeError: something broke") and statuses["2"][0] == "incomplete"
    assert statuses["3"] == ("finished", "") and not (directory / "3" / "error.txt").exists()


# ------------------------------------------------------------------------------------------ fault 3: the table
def test_the_table_fits_80_columns_without_cutting_a_job_or_a_key(tmp_path, monkeypatch, capsys):
    """In an 80-column terminal the job column read "2026-12-0…" and the keys "model.hea…": rows could not be told
    apart. Nothing is cut: a long cell folds onto more lines, dated job names lose the year they share (summary.csv
    and summary.md keep them whole)."""
    from blockbert.experiments import sweep_summary

    runs = tmp_path / "pretrain"
    names = ["2026-12-05_18-21-05", "2026-12-05_18-25-40", "2026-12-06_09-00-12"]
    for name, heads, length, ppl in zip(names, ["3:1", "2:2", "1:3"], [64, 128, 64], [12.0, 11.0, 10.5]):
        overrides = [f"model.heads={heads}", f"data.max_seq_length={length}", "trainer.max_steps=3"]
        job(runs, name, overrides, finished(ppl, **{"val/acc_longrange": 0.1, "val/acc_local": 0.2}))
    job(runs, "2026-12-06_10-00-00", ["model.heads=4:0"], {"status": "failed", "error": "ConfigError: " + "x " * 60})
    monkeypatch.setattr(sweep_summary, "make_console", lambda: Console(width=80))
    sweep_summary.summarize_sweep(runs)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(("┃", "│"))]
    assert lines and all(len(line) <= 80 for line in lines)
    assert "…" not in out
    first_cells = "".join(line.split("│")[1].strip() for line in lines if line.startswith("│"))
    for name in names:
        assert name[len("2026-") :] in first_cells
    headers = ["".join(cells) for cells in zip(*([c.strip() for c in line.split("┃")[1:-1]] for line in lines
                                                    if line.startswith("┃")))]  # fmt: skip
    assert headers[:3] == ["job", "data.max_seq_length", "model.heads"]
    assert [r["job"] for r in csv_rows(runs)][:3] == ["2026-12-06_09-00-12", "2026-12-05_18-25-40", names[0]]
    long_error = ("ConfigError: " + "x " * 60).strip()
    # under the table, whole, wrapped by the terminal (before: cut to 80 characters)
    assert f"job 12-06_10-00-00: {long_error}" in " ".join(out.split())
    assert long_error in (runs / "summary.md").read_text()


def test_dated_job_names_keep_the_year_when_the_jobs_differ_in_it():
    from blockbert.experiments.sweep_summary import shown_job_names

    assert shown_job_names(["2026-12-05_18-21-05", "2026-12-06_09-00-12"]) == ["12-05_18-21-05", "12-06_09-00-12"]
    assert shown_job_names(["2025-12-31_23-59-59", "2026-01-01_00-00-00"]) == [
        "2025-12-31_23-59-59",
        "2026-01-01_00-00-00",
    ]
    assert shown_job_names(["0", "1"]) == ["0", "1"]
    assert shown_job_names(["2026-12-05_18-21-05", "mine"]) == ["2026-12-05_18-21-05", "mine"]


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_a_sweep_over_two_and_three_blocks_ends_in_its_summary(blockbert, tmp_path):
    """The tester's command at the tiniest size: both jobs finish, the summary completes (rc 0) with the plot, and
    the jobs multirun.yaml planned are the jobs that ran (none listed twice as not started)."""
    spec = tmp_path / "mixed.yaml"
    spec.write_text(yaml.safe_dump({"command": "pretrain", "overrides": ["model=tiny"], "metric": "val/ppl",
                                    "parameters": {"model.heads": ["3:1", "2:1:1"]}}))  # fmt: skip
    sweep_dir = tmp_path / "sweep"
    out = blockbert(tmp_path, "sweep", str(spec), *TINY_JOB, "--dir", str(sweep_dir), check=False, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == str(sweep_dir.resolve())
    assert (sweep_dir / "summary.png").stat().st_size > 0
    assert sorted((r["job"], r["status"]) for r in csv_rows(sweep_dir)) == [("0", "finished"), ("1", "finished")]
    assert "not started" not in out.stdout and "jobs:" not in out.stdout  # counted only where a job did not finish
