"""Sweep files, generated grids, a real tiny sweep (basic and submitit_local launchers) and its summary."""

import csv
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from typer.testing import CliRunner

import cli
from blockbert.errors import ConfigError
from blockbert.experiments.sweep_plan import (
    available,
    expand,
    head_assignments,
    jobs,
    load_sweep,
    merge_overrides,
    sweeps_dir,
    wandb_sweep,
)
from blockbert.paths import config_dir
from blockbert.train.settings import model_config

runner = CliRunner()


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BLOCKBERT_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_head_grids_have_the_paper_sizes_and_sum_to_the_heads():
    assert len(head_assignments(12, 2)) == 13 and len(head_assignments(12, 3)) == 91
    for blocks in (2, 3):
        for heads in head_assignments(12, blocks):
            counts = [int(c) for c in heads.split(":")]
            assert len(counts) == blocks and sum(counts) == 12 and min(counts) >= 0
    restricted = head_assignments(12, 3, min_identity=8)
    assert len(restricted) == 15 and all(int(h.split(":")[0]) >= 8 for h in restricted)
    assert len(set(head_assignments(12, 3))) == 91


def compose_job(command, overrides):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=command, overrides=overrides)


@pytest.mark.parametrize("name", ["heads_n2", "heads_n3", "finetune_grid", "blocks_seqlen"])
def test_every_sweep_job_composes_into_a_valid_config(name):
    sweep = load_sweep(name)
    grid = expand(sweep, 12)
    planned = jobs(grid)
    assert len(planned) == {"heads_n2": 13, "heads_n3": 91, "finetune_grid": 10, "blocks_seqlen": 6}[name]
    for job in planned:
        cfg = compose_job(sweep.command, [*sweep.overrides, *(f"{k}={v}" for k, v in job.items())])
        model_config(cfg.model)
        if name.startswith("heads"):  # Figure 4 at the paper's setting (section 4.3)
            assert (cfg.model.num_heads, cfg.data.max_seq_length, cfg.data.name) == (12, 512, "wiki_book")
            assert cfg.trainer.max_steps == 1_200_000 and sweep.metric == "val/best_ppl"


def test_command_line_overrides_replace_the_sweep_files_own():
    """The laptop form documented in the head sweeps: the later experiment/data/max_steps replace the file's."""
    sweep = load_sweep("heads_n3")
    laptop = ["experiment=tiny", "data=tiny_corpus", "trainer.max_steps=300", "optim.schedule_steps=600"]
    overrides = merge_overrides(sweep.overrides, laptop)
    assert overrides == laptop
    cfg = compose_job("pretrain", overrides)
    assert (cfg.model.num_heads, cfg.data.max_seq_length, cfg.trainer.max_steps) == (4, 128, 300)
    assert cfg.optim.schedule_steps == 600  # the first half of the schedule, as the paper-scale form
    assert len(expand(sweep, cfg.model.num_heads)["model.heads"]) == 15  # 4 heads over 3 shifts
    assert merge_overrides(["~experiment", "task=squad11"], ["experiment=tiny"]) == ["task=squad11", "experiment=tiny"]


@pytest.mark.parametrize("name", ["heads_n2", "heads_n3", "finetune_grid", "blocks_seqlen"])
def test_wandb_sweep_files_match_and_reference_existing_keys(name):
    sweep = load_sweep(name)
    grid = expand(sweep, 12)
    committed = yaml.safe_load((sweeps_dir() / f"{name}.wandb.yaml").read_text())
    assert committed == yaml.safe_load(yaml.safe_dump(wandb_sweep(sweep, grid)))
    first = [f"{k}={v['value'] if 'value' in v else v['values'][0]}" for k, v in committed["parameters"].items()]
    compose_job(committed["command"][2], first)  # raises on an unknown key


def test_available_sweeps():
    assert available() == [
        "blocks_seqlen",
        "finetune_each",
        "finetune_grid",
        "heads_n2",
        "heads_n3",
        "longrange_n2",
        "longrange_n3",
    ]


@pytest.fixture(scope="session")
def run(blockbert):
    """A sweep takes longer than one run."""
    return lambda tmp_path, *args, check=True: blockbert(tmp_path, *args, check=check, timeout=900)


NO_TOKENIZER = "no/such/tokenizer"
TINY_JOB = [
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "logger=none",
    "progress_bar=false",
    "data.generated_documents=40",
]


def test_tiny_sweep_with_a_failing_job_then_resume_and_report(run, tmp_path):
    spec = tmp_path / "tiny_heads.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "command": "pretrain",
                "overrides": ["model=tiny"],
                "metric": "val/ppl",
                "mode": "min",
                "parameters": {"model.heads": ["3:1", "2:2"], "data.tokenizer": ["train", NO_TOKENIZER]},
            }
        )
    )  # jobs 2 and 3 (the keys sorted) fail as they start; a config error stops a sweep before any job starts
    sweep_dir = tmp_path / "sweep"
    out = run(tmp_path, "sweep", str(spec), *TINY_JOB, "--dir", str(sweep_dir), check=False)
    assert out.returncode == 2 and "blockbert sweep: error: 2 of 4 jobs failed" in out.stderr, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == str(sweep_dir.resolve())
    with (sweep_dir / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["finished", "finished", "failed", "failed"]  # best first, failures last
    assert rows[2]["data.tokenizer"] == NO_TOKENIZER and NO_TOKENIZER in rows[2]["error"]
    assert float(rows[0]["val/ppl"]) <= float(rows[1]["val/ppl"])
    assert (sweep_dir / "summary.png").stat().st_size > 0
    assert (sweep_dir / "2" / "error.txt").is_file()
    again = run(tmp_path, "sweep", str(spec), *TINY_JOB, "--dir", str(sweep_dir), check=False)
    assert again.returncode == 2 and "skipping job 0" in again.stdout and "skipping job 1" in again.stdout
    # a skipped job keeps no config of a start that never ran (an export's card counted it as a resume)
    assert not list(sweep_dir.glob("[01]/.hydra/resume-*")) and (sweep_dir / "0" / ".hydra" / "config.yaml").is_file()
    report = run(tmp_path, "report", str(sweep_dir))
    assert NO_TOKENIZER in report.stdout and "failed" in report.stdout


def test_sweep_through_submitit_local(run, tmp_path):
    spec = tmp_path / "two.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "command": "pretrain",
                "overrides": ["model=tiny"],
                "metric": "val/ppl",
                "parameters": {"model.heads": ["3:1", "1:3"]},
            }
        )
    )
    sweep_dir = tmp_path / "sweep"
    run(tmp_path, "sweep", str(spec), *TINY_JOB, "cluster=submitit_local", "--dir", str(sweep_dir))
    for job in ("0", "1"):
        assert json.loads((sweep_dir / job / "metrics.json").read_text())["status"] == "finished"
    assert (sweep_dir / "summary.csv").is_file()
    assert list(Path(sweep_dir).glob(".submitit/*"))  # really went through submitit


def test_finetune_grid_selects_best_dev_and_reports_test(tmp_path, capsys):
    from blockbert.experiments.sweep_summary import summarize_sweep

    sweep_dir = tmp_path / "grid"
    for job, (lr, dev, test) in enumerate([(1e-5, 70.0, 60.0), (3e-5, 80.0, 75.0), (5e-5, 78.0, 79.0)]):
        (sweep_dir / str(job) / ".hydra").mkdir(parents=True)
        (sweep_dir / str(job) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"optim.lr={lr}"]))
        (sweep_dir / str(job) / "metrics.json").write_text(
            json.dumps({"dev/f1": dev, "test/f1": test, "status": "finished"})
        )
    (sweep_dir / "sweep.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "g",
                "metric": "dev/f1",
                "mode": "max",
                "select": {"by": "dev/f1", "report": "test/f1"},
                "grid": {"optim.lr": [1e-5, 3e-5, 5e-5]},
            }
        )
    )
    rows = summarize_sweep(sweep_dir)
    assert [r["job"] for r in rows] == ["1", "2", "0"]
    assert json.loads((sweep_dir / "selection.json").read_text())["test/f1"] == 75.0
    assert "selected by dev/f1: job 1 -> test/f1 = 75.0" in capsys.readouterr().out
    for job in ("0", "1", "2"):  # no test set: it said "test/f1 = None"
        metrics = json.loads((sweep_dir / job / "metrics.json").read_text())
        (sweep_dir / job / "metrics.json").write_text(json.dumps({**metrics, "test/f1": None}))
    summarize_sweep(sweep_dir)
    assert "job 1 -> test/f1 not recorded by that job: its task has no test set (task.test_file)" in " ".join(
        capsys.readouterr().out.split()
    )


def test_report_of_one_run_says_what_report_takes(tmp_path):
    """Before: "no job directories (with .hydra/overrides.yaml) found", for a directory holding one."""
    from blockbert.errors import ConfigError
    from blockbert.experiments.sweep_summary import summarize_sweep

    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "overrides.yaml").write_text("[]\n")
    with pytest.raises(
        ConfigError, match=r"run is one run, not a sweep or multirun of them: `blockbert report --paper"
    ):
        summarize_sweep(tmp_path / "run")


def test_finetune_each_fine_tunes_every_pretrained_job_and_reports_both_columns(run, tmp_path):
    """Figure 4's two columns: a tiny pre-training head sweep (best validation perplexity of each job), then
    finetune_each --from it: one fine-tuning job per finished pre-training job, joined in one table. The pre-training
    sweep takes its experiment from the user's --config-dir, as `plan` does to plan the fine-tuning jobs."""
    own = tmp_path / "own_conf" / "experiment"
    own.mkdir(parents=True)
    (own / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - tiny\ntrainer:\n  max_steps: 4\n")
    spec = tmp_path / "heads.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "command": "pretrain",
                "overrides": ["experiment=mine"],
                "metric": "val/best_ppl",
                "parameters": {"model.heads": ["3:1", "2:2"], "data.tokenizer": ["train", NO_TOKENIZER]},
            }
        )
    )  # jobs 2 and 3 fail
    pretrained = tmp_path / "pretrained"
    failed = run(
        tmp_path,
        "sweep",
        str(spec),
        "--config-dir",
        str(own.parent),
        "trainer.val_check_interval=2",
        "logger=none",
        "progress_bar=false",
        "data.generated_documents=40",
        "--dir",
        str(pretrained),
        check=False,
    )
    assert failed.returncode == 2, failed.stderr[-3000:]  # jobs 2 and 3
    for job in ("0", "1"):
        metrics = json.loads((pretrained / job / "metrics.json").read_text())
        assert metrics["val/best_ppl"] <= metrics["val/ppl"] and metrics["val/best_ppl_step"] in (0, 2, 4)
    missing = run(tmp_path, "sweep", "finetune_each", "experiment=tiny", check=False)
    assert missing.returncode == 2 and "give its directory with --from" in missing.stderr
    plan = ["finetune_each", "--from", str(pretrained), "-cd", str(own.parent), "experiment=mine", "task=generated"]
    run(tmp_path, "plan", "--sweep", *plan, "--out", "planned")
    planned = json.loads((tmp_path / "planned" / "plan.json").read_text())["jobs"]
    assert sorted(job["overrides"][-1] for job in planned) == [f"init_from={(pretrained / j).resolve()}" for j in "01"]
    alone = run(tmp_path, "plan", "--from", str(pretrained), check=False)
    assert alone.returncode == 2 and "give it with --sweep finetune_each" in alone.stderr
    tuned = tmp_path / "tuned"
    out = run(
        tmp_path,
        "sweep",
        "finetune_each",
        "--from",
        str(pretrained),
        "experiment=tiny",
        "task=generated",
        "task.generated_questions=48",
        "trainer.max_steps=2",
        "data.max_seq_length=64",
        "logger=none",
        "progress_bar=false",
        "--dir",
        str(tuned),
    )
    assert "pretrain val/best_ppl" in out.stdout
    with (tuned / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["pretrain job"] for r in rows) == ["0", "1"]  # the failed jobs are not fine-tuned
    for row in rows:
        origin = json.loads((pretrained / row["pretrain job"] / "metrics.json").read_text())
        assert float(row["pretrain val/best_ppl"]) == pytest.approx(origin["val/best_ppl"])
        assert row["model.heads"] == {"0": "3:1", "1": "2:2"}[row["pretrain job"]]
        assert row["status"] == "finished" and row["dev/f1"] != ""


def test_a_resumed_finetune_each_keeps_its_job_numbers(tmp_path):
    """Pre-training job 1 finished after jobs 0 and 2 were fine-tuned: resumed with --dir, the fine-tuning sweep
    appends it as job 2 instead of sorting it in (job 1 would then fine-tune another model in job 1's directory)."""
    from blockbert.app.commands.sweep import job_differences, keep_job_numbers
    from blockbert.formats.run_dir import SweepDir

    sweep = load_sweep("finetune_each")
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"grid": {"init_from": ["/pre/0", "/pre/2"]}}))
    grid = keep_job_numbers(sweep, {"init_from": ["/pre/0", "/pre/1", "/pre/2"]}, SweepDir(tmp_path).spec())
    assert grid == {"init_from": ["/pre/0", "/pre/2", "/pre/1"]}
    assert keep_job_numbers(sweep, {"init_from": ["/pre/0"]}, {}) == {"init_from": ["/pre/0"]}
    # the job appended is no other grid (--dir continues the recorded one); another --from is
    stored = {"overrides": sweep.overrides, "grid": {"init_from": ["/pre/0", "/pre/2"]}, "from": "/pre"}
    assert job_differences(sweep, grid, Path("/pre"), stored) == []
    assert job_differences(sweep, grid, Path("/other"), stored) == ["--from given /other, recorded /pre"]


def test_a_sweep_from_a_sweep_with_unfinished_jobs_names_those_it_leaves_out(tmp_path, capsys):
    """Before: `finetune_each --from` a pre-training sweep with a stopped job and one not started planned the
    finished jobs alone, without a word."""
    from blockbert.app.commands.sweep import say_left_out

    source = plain_runs(tmp_path / "pre", {"0": ([], {"val/ppl": 9.0})}, {"trainer": {}})
    plain_runs(source, {"2": ([], {"val/ppl": 9.5})}, {"trainer": {}})
    (source / "2" / "metrics.json").write_text(json.dumps({"val/ppl": 9.5, "status": "interrupted"}))
    multirun_yaml = {"hydra": {"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                     "params": {"seed": "0,1,2"}}, "overrides": {"task": []}}}  # fmt: skip
    (source / "multirun.yaml").write_text(yaml.safe_dump(multirun_yaml))
    say_left_out(source)
    assert capsys.readouterr().err == (
        f"--from {source}: 2 jobs not finished, left out: job 1 (not started), job 2 (interrupted); once they finish "
        "(`blockbert sweep NAME --dir` resumes that sweep), this sweep run again with --dir adds them\n"
    )
    (source / "2" / "metrics.json").write_text(json.dumps({"val/ppl": 9.5, "status": "finished"}))
    plain_runs(source, {"1": ([], {"val/ppl": 9.7})}, {"trainer": {}})
    say_left_out(source)
    assert capsys.readouterr().err == ""


def test_the_pre_training_jobs_are_the_outermost_key_so_one_finished_since_adds_jobs_at_the_end(monkeypatch):
    """Before: a sweep file listing another parameter before its pretrained_jobs swept that one outermost; a job
    appended on resume (above) then renumbered the jobs after it (job 2 would fine-tune /pre/2 in /pre/1's job's
    directory at another learning rate)."""
    from blockbert.experiments import sweep_plan

    monkeypatch.setattr(sweep_plan, "pretrained_jobs", lambda sweep, source: ["/pre/0", "/pre/1"])
    parameters = {"optim.lr": [1e-5, 3e-5], "init_from": {"pretrained_jobs": {}}}
    sweep = sweep_plan.Sweep("mine", "finetune", "", [], parameters, "dev/f1", "max")
    grid = sweep_plan.expand(sweep, 12, Path("/pre"))
    assert list(grid) == ["init_from", "optim.lr"]
    before = sweep_plan.jobs(grid)
    assert sweep_plan.jobs({**grid, "init_from": [*grid["init_from"], "/pre/2"]})[: len(before)] == before
    from blockbert.app.commands.sweep import keep_job_numbers

    recorded = {"optim.lr": [1e-5, 3e-5], "init_from": ["/pre/0", "/pre/1"]}  # a sweep planned in the file's order
    assert list(keep_job_numbers(sweep, grid, {"grid": recorded})) == ["optim.lr", "init_from"]  # continues as it was


def test_a_comma_list_on_the_command_line_becomes_a_swept_parameter():
    from blockbert.app.commands.sweep import parse_overrides

    fixed, swept, _ = parse_overrides(
        ["seed=0,1,2", "experiment=tiny", "optim.betas=[0.9,0.98]", "+x=a,b", "hydra.a=1,2"]
    )
    assert swept == {"seed": [0, 1, 2], "+x": ["a", "b"]}  # "+x": the key as Hydra writes it in overrides.yaml
    assert fixed == ["experiment=tiny", "optim.betas=[0.9,0.98]", "hydra.a=1,2"]


def test_hydras_sweep_syntax_is_read_by_hydras_grammar_and_expanded_as_its_basic_sweeper_does():
    """range, choice, glob and comma lists, with values that need Hydra's quoting (a colon, a space, a list): the
    grid's values, and the jobs our multirun arguments make Hydra's basic sweeper run, one for one."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from blockbert.app.commands.sweep import parse_overrides
    from blockbert.experiments.sweep_plan import job_overrides, multirun_args

    fixed, swept, texts = parse_overrides(
        [
            "seed=range(0,2)",
            "experiment=tiny",
            "model.heads=choice(3:1,'2:2')",
            "model=glob(blockbert_n*)",
            "+tag='a b',c",
            "optim.betas=[0.9,0.98],[0.9,0.999]",
        ]
    )
    assert fixed == ["experiment=tiny"]
    assert swept == {
        "seed": [0, 1],
        "model.heads": ["3:1", "2:2"],
        "model": ["blockbert_n2", "blockbert_n3"],
        "+tag": ["a b", "c"],
        "optim.betas": [[0.9, 0.98], [0.9, 0.999]],
    }
    args = multirun_args(swept, texts)
    (hydra_jobs,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)
    ours = job_overrides(swept, texts)
    assert len(ours) == len(jobs(swept)) == 32 and hydra_jobs == ours
    assert ours[0] == ["seed=0", "model.heads=3\\:1", "model=blockbert_n2", "+tag='a b'", "optim.betas=[0.9,0.98]"]
    with pytest.raises(ConfigError, match=r"lr=interval\(0,1\): .* takes comma lists, range\(...\), choice"):
        parse_overrides(["lr=interval(0,1)"])
    with pytest.raises(ConfigError, match="seed=range"):
        parse_overrides(["seed=range(0,"])


def test_a_sweep_over_a_range_of_seeds_is_planned(in_tmp):
    """`blockbert sweep heads_n2 'seed=range(0,2)'`: Hydra's own sweep syntax joins the grid (it was refused)."""
    result = runner.invoke(
        cli.app, ["sweep", "heads_n2", "experiment=tiny", "data=tiny_corpus", "seed=range(0,2)", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "sweep heads_n2: 10 pretrain" in result.output  # 4 heads over 2 shifts: 5 configs, times 2 seeds
    lines = [line.split(": ", 1)[1] for line in result.output.splitlines() if ": blockbert " in line]
    assert len(lines) == 10 and not any("range" in line for line in lines)
    assert (
        lines[1]
        == "blockbert pretrain trainer.max_steps=1200000 optim.schedule_steps=2400000 experiment=tiny data=tiny_corpus "
        "model.heads=4:0 seed=1"
    )
    assert not (in_tmp / "multirun").exists()


def sweep_file(path, parameters, overrides=("experiment=tiny",)):
    """A user's sweep file of pre-training jobs: ``parameters`` swept, ``overrides`` fixed."""
    spec = {"command": "pretrain", "overrides": list(overrides), "metric": "val/ppl", "parameters": parameters}
    path.write_text(yaml.safe_dump(spec))
    return path


def job_lines(output):
    return [line.split(": ", 1)[1] for line in output.splitlines() if ": blockbert " in line]


def test_a_dry_run_refuses_a_job_as_the_sweep_refuses_it(in_tmp):
    """--dry-run listed every job and exited 0 while the sweep itself refused one job's config (7:3 for 4 heads; 3
    heads in a 64-wide model): both now refuse it in the same one line, naming the job, before any directory."""
    bad = sweep_file(in_tmp / "bad.yaml", {"model.heads": ["3:1", "7:3"]})
    refusal = (
        "blockbert sweep: error: job 1 (model.heads=7:3): model.heads='7:3' assigns 10 heads but the model has "
        "num_heads=4: the counts must sum to 4"
    )
    for dry_run in (["--dry-run"], []):
        result = runner.invoke(cli.app, ["sweep", str(bad), *dry_run])
        assert (result.exit_code, result.output.strip().splitlines()) == (2, [refusal])
    heads = runner.invoke(cli.app, ["sweep", "heads_n2", "experiment=tiny", "model.num_heads=3", "--dry-run"])
    assert heads.exit_code == 2 and not job_lines(heads.output)
    assert "job 0 (model.heads=3:0): model.hidden_size=64 is not divisible by num_heads=3" in heads.output
    assert not (in_tmp / "multirun").exists()


def test_the_quick_check_of_a_job_passes_only_what_its_whole_composition_passes():
    """The jobs after the first are checked from the multirun's config with their values applied (9 s for heads_n3's
    91 jobs composed whole, 3 s so): it passes a job only where the whole composition does, and leaves a swept config
    group, a refusal and an added key to it."""
    from blockbert.formats.compose import compose, compose_multirun
    from blockbert.formats.compose import job_passes as passes

    fixed = ["experiment=tiny", "trainer.max_steps=5"]
    multirun = compose_multirun("pretrain", [*fixed, "model.heads=2:2,7:3", "optim.lr=1e-3,abc", "seed=0,1"])
    jobs = {  # a job's overrides: whether the quick check decides it
        ("model.heads=2:2", "optim.lr=1e-3", "seed=1"): True,
        ("model.heads=1:3", "optim.lr=0.5", "seed=0"): True,
        ("model.heads=7:3", "optim.lr=1e-3", "seed=0"): False,
        ("model.heads=2:2", "optim.lr=abc", "seed=0"): False,
        ("model.heads=2:2", "optim.lr=1e-3", "data.max_seq_length=4096"): False,
        ("model=blockbert_n2", "seed=0"): False,
        ("model.heads=2:2", "+model.extra=1"): False,
    }
    for job, quick in jobs.items():
        try:
            compose("pretrain", [*fixed, *job], finished=True)
            whole = True
        except Exception:  # noqa: BLE001 -- any refusal
            whole = False
        assert passes(multirun, "pretrain", fixed, list(job), ()) == quick and (whole or not quick), job
        assert whole == quick or job[0].startswith("model="), job


def test_a_single_value_on_the_command_line_replaces_a_swept_keys_values(in_tmp):
    """`model.heads=3:1` on heads_n2's command line was dropped: the 5 head configs ran and the fixed ones left it
    out. As a comma list replaces the file's values, a single value does: one value, one job (plan --sweep too)."""
    from blockbert.app.commands.sweep import expanded_sweep
    from blockbert.experiments.sweep_plan import job_overrides

    one = runner.invoke(cli.app, ["sweep", "heads_n2", "experiment=tiny", "model.heads=3:1", "--dry-run"])
    assert one.exit_code == 0, one.output
    assert job_lines(one.output) == [
        "blockbert pretrain data=wiki_book trainer.max_steps=1200000 optim.schedule_steps=2400000 experiment=tiny "
        "model.heads=3:1"
    ]
    two = runner.invoke(cli.app, ["sweep", "heads_n2", "experiment=tiny", "model.heads=3:1,2:2", "--dry-run"])
    assert len(job_lines(two.output)) == 2
    sweep, grid, texts = expanded_sweep("heads_n2", ["experiment=tiny", "model.heads='3:1'"])  # plan --sweep's jobs
    assert grid == {"model.heads": ["3:1"]} and job_overrides(grid, texts) == [["model.heads='3:1'"]]
    assert "model.heads" not in " ".join(sweep.overrides)
    spec = sweep_file(in_tmp / "own.yaml", {"model.heads": ["3:1", "2:2"]}, ["experiment=tiny", "seed=0,1,2"])
    sweep, grid, _ = expanded_sweep(str(spec), ["seed=5"])  # a sweep among the file's overrides too
    assert grid == {"model.heads": ["3:1", "2:2"], "seed": [5]} and sweep.overrides == ["experiment=tiny"]
    both = sweep_file(in_tmp / "both.yaml", {"model.heads": ["3:1", "2:2"]}, ["experiment=tiny", "model.heads=4:0"])
    assert expanded_sweep(str(both), [])[1] == {"model.heads": ["3:1", "2:2"]}  # the file's fixed one: its grid wins
    odd = sweep_file(in_tmp / "odd.yaml", {"model.heads": ["3:1"]}, ["experiment=tiny", "optim.lr=interval(0,1)"])
    assert expanded_sweep(str(odd), ["optim.lr=0.001"])[1] == {"model.heads": ["3:1"], "optim.lr": [0.001]}
    # before: the file's interval(0,1), which the basic sweeper cannot expand, refused the sweep that replaced it


def test_a_sweep_refused_before_its_first_job_leaves_no_directory(in_tmp):
    """A sweep refused after it made its directory (here the launcher's check) left sweep.yaml in an empty sweep
    directory, which `report` then called a sweep without jobs. A new directory goes again, with the parents made for
    it; one that was there (--dir, a sweep to resume) stays as it was."""
    spec = sweep_file(in_tmp / "two.yaml", {"model.heads": ["3:1", "1:3"]})
    refused = ["sweep", str(spec), "cluster=submitit_local", "trainer.num_nodes=2"]
    result = runner.invoke(cli.app, refused)
    assert result.exit_code == 2 and "trainer.num_nodes=2 must be 1" in result.output
    assert not (in_tmp / "multirun").exists()
    assert runner.invoke(cli.app, [*refused, "--dir", "new/sweep"]).exit_code == 2
    assert not (in_tmp / "new").exists()
    resumed = in_tmp / "resumed"
    (resumed / "0").mkdir(parents=True)
    (resumed / "0" / "metrics.json").write_text("{}")
    empty = in_tmp / "empty"
    empty.mkdir()
    for directory in (resumed, empty):
        assert runner.invoke(cli.app, [*refused, "--dir", str(directory)]).exit_code == 2
    assert (resumed / "0" / "metrics.json").read_text() == "{}" and empty.is_dir()


def test_a_sweep_over_seeds_reports_mean_and_std_per_setting(tmp_path):
    """longrange_n2's summary: one row per head config, mean ± sample std over its seeds, best mean first, and
    Figure 4 with error bars (summary_seeds.csv, summary.png); a failed seed is left out and counted."""
    from blockbert.experiments.sweep_summary import summarize_sweep

    sweep_dir = tmp_path / "seeds"
    values = {("12:0", "0"): (10.0, 0.06), ("12:0", "1"): (12.0, 0.08), ("6:6", "0"): (9.0, 0.5),
              ("6:6", "1"): (9.5, 0.6), ("6:6", "2"): None}  # fmt: skip
    for job, ((heads, seed), value) in enumerate(values.items()):
        (sweep_dir / str(job) / ".hydra").mkdir(parents=True)
        (sweep_dir / str(job) / ".hydra" / "overrides.yaml").write_text(
            yaml.safe_dump([f"model.heads={heads}", f"seed={seed}"])
        )
        if value is None:
            (sweep_dir / str(job) / "error.txt").write_text("RuntimeError: boom\n")
            continue
        metrics = {"val/ppl": value[0], "val/acc_longrange": value[1], "val/acc_local": 0.45, "status": "finished"}
        (sweep_dir / str(job) / "metrics.json").write_text(json.dumps(metrics))
    grid = {"model.heads": ["12:0", "6:6"], "seed": ["0", "1", "2"]}
    (sweep_dir / "sweep.yaml").write_text(
        yaml.safe_dump({"name": "s", "metric": "val/ppl", "mode": "min", "grid": grid})
    )
    summarize_sweep(sweep_dir)
    with (sweep_dir / "summary_seeds.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["model.heads"] for r in rows] == ["6:6", "12:0"]
    six, twelve = rows
    assert (six["seeds"], six["of"]) == ("2", "3") and float(six["val/ppl"]) == pytest.approx(9.25)
    assert float(six["val/ppl std"]) == pytest.approx(0.3536, abs=1e-4)
    assert float(twelve["val/acc_longrange"]) == pytest.approx(0.07) and float(twelve["val/acc_local std"]) == 0
    assert (sweep_dir / "summary.png").stat().st_size > 0 and (sweep_dir / "summary.csv").is_file()


def finished_jobs(sweep_dir, grid, results):
    """A sweep directory whose jobs (``results``: (overrides, metrics) each) finished."""
    for job, (overrides, metrics) in enumerate(results):
        (sweep_dir / str(job) / ".hydra").mkdir(parents=True)
        (sweep_dir / str(job) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        (sweep_dir / str(job) / "metrics.json").write_text(json.dumps({**metrics, "status": "finished"}))
    spec = {"name": "close", "metric": "val/ppl", "mode": "min", "grid": grid}
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(spec))


def test_the_summary_table_tells_close_perplexities_apart(tmp_path, capsys):
    """Perplexities 227.659 ... 227.748 were all printed 227.7: each column gets the decimals that keep its
    different values different (and the same decimals for every row)."""
    from blockbert.experiments.sweep_summary import column_decimals, summarize_sweep

    ppl = {"4:0": 227.748, "3:1": 227.659, "2:2": 227.7, "1:3": 227.701}
    results = [([f"model.heads={h}"], {"val/ppl": v, "val/acc": 0.1}) for h, v in ppl.items()]
    finished_jobs(tmp_path / "close", {"model.heads": list(ppl)}, results)
    summarize_sweep(tmp_path / "close")
    rows = [line.split("│") for line in capsys.readouterr().out.splitlines() if "finished" in line]
    assert [(cells[2].strip(), cells[3].strip()) for cells in rows] == [
        ("3:1", "227.659"),
        ("2:2", "227.700"),
        ("1:3", "227.701"),
        ("4:0", "227.748"),
    ]
    assert column_decimals([227.659, 227.748]) == 2 and column_decimals([227.6, 227.6]) == 1
    assert column_decimals([9.0, 12.0]) == 2 and column_decimals([0.0712, 0.0714]) == 5
    assert column_decimals([1.0, 1.0 + 1e-15]) == 12 and column_decimals([None, float("nan")]) == 3


def test_the_seed_table_tells_close_means_apart(tmp_path, capsys):
    from blockbert.experiments.sweep_summary import summarize_sweep

    values = {("4:0", "0"): 227.70, ("4:0", "1"): 227.80, ("3:1", "0"): 227.71, ("3:1", "1"): 227.75}
    results = [([f"model.heads={h}", f"seed={s}"], {"val/ppl": v}) for (h, s), v in values.items()]
    finished_jobs(tmp_path / "seeds", {"model.heads": ["4:0", "3:1"], "seed": ["0", "1"]}, results)
    summarize_sweep(tmp_path / "seeds")
    out = capsys.readouterr().out
    assert "227.730 ± 0.028" in out and "227.750 ± 0.071" in out  # 227.7 ± 0.028 and 227.8 ± 0.071 before


def test_docs_tables_rebuilds_a_sweeps_block_from_its_directory(tmp_path):
    """benchmarks/docs_tables.py --sweep DIR: the page's block of that sweep becomes its summary (with the
    command that made it); the text around it stays."""
    sweep_dir = tmp_path / "longrange_n2"
    for job, (heads, seed, acc) in enumerate([("12:0", 0, 0.06), ("12:0", 1, 0.07), ("6:6", 0, 0.5), ("6:6", 1, 0.6)]):
        (sweep_dir / str(job) / ".hydra").mkdir(parents=True)
        (sweep_dir / str(job) / ".hydra" / "overrides.yaml").write_text(
            yaml.safe_dump([f"model.heads={heads}", f"seed={seed}"])
        )
        metrics = {"val/ppl": 10 - acc, "val/acc_longrange": acc, "val/acc_local": 0.45, "status": "finished"}
        (sweep_dir / str(job) / "metrics.json").write_text(json.dumps(metrics))
    grid = {"model.heads": ["12:0", "6:6"], "seed": [0, 1]}
    spec = {
        "name": "longrange_n2",
        "metric": "val/ppl",
        "mode": "min",
        "grid": grid,
        "overrides": ["experiment=longrange"],
    }
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(spec))
    page = tmp_path / "figure4.md"
    page.write_text("before\n<!-- sweep:longrange_n2:begin -->\nold\n<!-- sweep:longrange_n2:end -->\nafter\n")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "docs_tables.py"
    out = subprocess.run(
        ["python", str(script), "--sweep", str(sweep_dir), "--doc", str(page)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = page.read_text()
    assert text.startswith("before\n<!-- sweep:longrange_n2:begin -->\n") and text.endswith("end -->\nafter\n")
    assert "old" not in text and "blockbert sweep longrange_n2\n" in text
    assert "| 6:6 | 2/2 | 9.450 ± 0.071 | 0.550 ± 0.071 | 0.450 ± 0.000 |" in text
    assert (tmp_path / "sweeps" / "longrange_n2.png").stat().st_size > 0 and "](sweeps/longrange_n2.png)" in text


def test_a_sweep_with_a_config_dir_hands_it_to_every_job(in_tmp):
    """`--config-dir` (Hydra's flag, refused by `sweep` and `plan` before) composes the grid with the user's configs
    and stays on each job's command line; a directory that does not exist is one line."""
    (in_tmp / "own" / "experiment").mkdir(parents=True)
    (in_tmp / "own" / "experiment" / "two_heads.yaml").write_text(
        "# @package _global_\ndefaults:\n  - tiny\nmodel:\n  num_heads: 2\n"
    )
    result = runner.invoke(cli.app, ["sweep", "heads_n2", "-cd", "own", "experiment=two_heads", "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = [line.split(": ", 1)[1] for line in result.output.splitlines() if ": blockbert " in line]
    assert len(lines) == 3  # 2 heads over 2 shifts: the user's model, not conf/'s
    assert all(line.startswith(f"blockbert pretrain --config-dir {in_tmp / 'own'} ") for line in lines)
    missing = runner.invoke(cli.app, ["sweep", "heads_n2", "--config-dir", "nowhere", "--dry-run"])
    assert missing.exit_code == 2 and "--config-dir nowhere: no such directory" in missing.output
    started = in_tmp / "started"  # a sweep started with --config-dir own, resumed with --dir
    started.mkdir()
    (started / "sweep.yaml").write_text(yaml.safe_dump({"name": "heads_n2", "config_dir": str(in_tmp / "own")}))
    resumed = runner.invoke(cli.app, ["sweep", "heads_n2", "experiment=two_heads", "--dir", "started", "--dry-run"])
    assert resumed.exit_code == 0, resumed.output
    assert f"blockbert pretrain --config-dir {in_tmp / 'own'} " in resumed.output
    (in_tmp / "other").mkdir()
    other = runner.invoke(cli.app, ["sweep", "heads_n2", "-cd", "other", "--dir", "started", "--dry-run"])
    assert other.exit_code == 2 and f"was run with --config-dir {in_tmp / 'own'}" in other.output
    plain = in_tmp / "plain"  # started without one: resumed without one, and refused with one
    plain.mkdir()
    (plain / "sweep.yaml").write_text(yaml.safe_dump({"name": "heads_n2", "config_dir": None}))
    added = runner.invoke(cli.app, ["sweep", "heads_n2", "-cd", "own", "--dir", "plain", "--dry-run"])
    assert added.exit_code == 2 and "was run without --config-dir" in added.output
    (in_tmp / "own").rename(in_tmp / "moved")  # the recorded directory moved: say so, and take the new place
    lost = runner.invoke(cli.app, ["sweep", "heads_n2", "experiment=two_heads", "--dir", "started", "--dry-run"])
    assert lost.exit_code == 2 and "which no longer exists: give its new place with --config-dir" in lost.output
    found = runner.invoke(cli.app, ["sweep", "heads_n2", "-cd", "moved", "experiment=two_heads", "--dir", "started",
                                    "--dry-run"])  # fmt: skip
    assert found.exit_code == 0 and f"--config-dir {in_tmp / 'moved'} " in found.output


def plain_runs(directory, jobs, config):
    """Run directories as `blockbert finetune -m ...` (or `pretrain -m`) leaves them, without sweep.yaml:
    ``jobs`` maps each job's name to (its overrides, its metrics.json); ``config`` is each job's .hydra/config.yaml."""
    for name, (overrides, metrics) in jobs.items():
        (directory / name / ".hydra").mkdir(parents=True)
        (directory / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        (directory / name / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        (directory / name / "metrics.json").write_text(json.dumps({**metrics, "status": "finished"}))
    return directory


def report_of(directory):
    """`blockbert report DIR` as a user runs it: (what it printed, summary.csv's rows, summary.md's lines)."""
    result = runner.invoke(cli.app, ["report", str(directory)])
    assert result.exit_code == 0, result.output[-4000:]
    with (directory / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    return result.output, rows, (directory / "summary.md").read_text().splitlines()


SQUAD11 = {"dev/exact_match": 60.0, "dev/f1": 70.0, "dev/loss": 1.0, "train/loss": 1.5}
SQUAD20 = {  # the keys a SQuAD 2.0 run writes (the official script's names; dev/f1 at the dev-tuned null threshold)
    "dev/exact": 60.0, "dev/f1": 70.0, "dev/HasAns_exact": 50.0, "dev/HasAns_f1": 65.0, "dev/NoAns_exact": 80.0,
    "dev/NoAns_f1": 80.0, "dev/best_exact": 60.0, "dev/best_f1": 70.0, "dev/best_f1_thresh": -0.5, "dev/total": 20,
}  # fmt: skip


@pytest.mark.parametrize("scores, em", [(SQUAD11, "dev/exact_match"), (SQUAD20, "dev/exact")])
@pytest.mark.parametrize("names", [["0", "1", "2"], ["2026-01-01_00-00-00", "2026-01-01_00-10-00", "2026-01-02_09-00"]])
def test_a_plain_finetune_multirun_is_ranked_by_dev_f1(tmp_path, scores, em, names):
    """`blockbert report multirun/finetune/DATE` (a plain `finetune -m`; job directories 0, 1, ...) and `blockbert
    report runs/finetune` (a directory per run) were titled and ranked by pre-training's val/ppl, a blank column; the
    dev F1 and EM were only in summary.csv. A fine-tuning run (its config has a task) is ranked by dev/f1, best
    first, beside its EM under the key its task writes (SQuAD 2.0: the official ``exact``)."""
    jobs = {
        name: ([f"optim.lr={lr}", "seed=0"], {**scores, "dev/f1": f1, em: f1 - 10})
        for name, lr, f1 in zip(names, ["1e-3", "3e-3", "5e-3"], [70.0, 90.0, 80.0])
    }
    directory = plain_runs(tmp_path / "finetune", jobs, {"task": {"name": "squad"}, "optim": {"lr": 0.001}})
    out, rows, markdown = report_of(directory)
    assert "finetune: dev/f1 (max), best first" in out and "val/ppl" not in out
    assert [(r["optim.lr"], float(r["dev/f1"])) for r in rows] == [("3e-3", 90.0), ("5e-3", 80.0), ("1e-3", 70.0)]
    assert list(rows[0])[:5] == ["job", "optim.lr", "dev/f1", em, "status"]
    assert markdown[0] == f"| job | optim.lr | dev/f1 | {em} | status |"
    assert markdown[2] == f"| {names[1]} | 3e-3 | 90.00 | 80.00 | finished |"


def test_fine_tuning_runs_on_other_dev_sets_are_ranked_within_each(tmp_path):
    """runs/finetune holds every fine-tuning run: F1 on another task or dev file is not ranked against the others
    (before: one "best first" table over SQuAD 2.0, MRQA and SQuAD 1.1); pre-training runs on other corpora alike."""
    directory = tmp_path / "finetune"
    plain_runs(
        directory, {"a": ([], {**SQUAD11, "dev/f1": 50.0})}, {"task": {"name": "squad11", "dev_file": "d/dev.json"}}
    )
    plain_runs(
        directory, {"b": ([], {**SQUAD11, "dev/f1": 40.0})}, {"task": {"name": "squad11", "dev_file": "dev.json"}}
    )
    plain_runs(
        directory,
        {"c": ([], {**SQUAD20, "dev/f1": 60.0})},
        {"task": {"name": "generated", "version": "2.0", "generated_questions": 800}},
    )
    plain_runs(directory, {"d": ([], {**SQUAD11, "dev/f1": 55.0})}, {"task": {"name": "mrqa", "dev_file": "x.jsonl"}})
    out, rows, markdown = report_of(directory)
    assert "finetune: dev/f1 (max), best first within each dev set" in " ".join(out.split())
    assert [(r["job"], r["dev set"]) for r in rows] == [
        ("c", "generated v2.0 800 questions"),
        ("d", "mrqa x.jsonl"),
        ("a", "squad11 dev.json"),  # the same file name in another folder: the same set, as far as the name tells
        ("b", "squad11 dev.json"),
    ]
    assert markdown[0].startswith("| job | dev set | dev/f1 |")
    same = plain_runs(tmp_path / "same", {"a": ([], SQUAD11), "b": ([], SQUAD11)}, {"task": {"name": "squad11"}})
    out, rows, _ = report_of(same)
    assert "dev set" not in rows[0] and "within each" not in out
    seeds = tmp_path / "seeds"  # the table over seeds too (over_seeds ranks its settings as one)
    for name, seed, dev, f1 in [("a", 0, "x", 50.0), ("b", 1, "x", 52.0), ("c", 0, "y", 90.0), ("d", 1, "y", 88.0)]:
        plain_runs(
            seeds,
            {name: ([f"seed={seed}"], {**SQUAD11, "dev/f1": f1})},
            {"task": {"name": "squad11", "dev_file": f"{dev}.json"}},
        )
    plain_runs(seeds, {"e": ([], {**SQUAD11, "dev/f1": 99.0})}, {"data": {}}).joinpath("e/.hydra/config.yaml").unlink()
    out, _, _ = report_of(seeds)
    assert "mean ± std over seeds, best first within each dev set" in " ".join(out.split())
    with (seeds / "summary_seeds.csv").open() as f:
        assert [(g["dev set"], float(g["dev/f1"])) for g in csv.DictReader(f)] == [
            ("squad11 x.json", 51.0),
            ("squad11 y.json", 89.0),
            ("", 99.0),  # no config: its set is unknown, listed last as rank lists what it cannot rank
        ]
    corpora = tmp_path / "pretrain"
    plain_runs(
        corpora, {"a": (["data=text_files"], {"val/ppl": 9.0})}, {"data": {"name": "text_files", "files": ["a.txt"]}}
    )
    plain_runs(
        corpora, {"b": (["data=tiny_corpus"], {"val/ppl": 5.0})}, {"data": {"name": "tiny_corpus", "files": None}}
    )
    out, rows, markdown = report_of(corpora)
    assert markdown[0].startswith(
        "| job | corpus | data | val/ppl |"
    )  # before: two columns named data, both the corpus
    assert "best first within each corpus" in " ".join(out.split())
    assert [r["corpus"] for r in rows] == ["text_files a.txt", "tiny_corpus"]


def test_a_directory_of_both_commands_runs_is_a_one_line_error(tmp_path):
    directory = plain_runs(tmp_path / "mixed", {"0": ([], {"val/ppl": 9.0})}, {"model": {"name": "tiny"}})
    plain_runs(directory, {"1": ([], SQUAD11)}, {"task": {"name": "squad11"}})
    result = runner.invoke(cli.app, ["report", str(directory)])
    assert result.exit_code == 2 and "holds runs of finetune and pretrain, which no one table compares" in result.output
    assert "Traceback" not in result.output


def table_of(out, border):
    """The cells of a printed rich table's lines that start with ``border`` (┃ the header, │ the rows)."""
    return [[c.strip() for c in line.split(border)[1:-1]] for line in out.splitlines() if line.startswith(border)]


def markdown_cells(line):
    return [c.strip().replace("\0", "|") for c in line.replace("\\|", "\0").split("|")[1:-1]]


@pytest.mark.parametrize("spec", [None, {"name": "pretrain", "metric": "val/ppl", "mode": "min"}])
def test_summary_md_holds_the_printed_tables_columns(tmp_path, spec):
    """summary.md of a plain multirun held only the swept values (`| optim.lr |`), and a sweep's had no job
    column. It is the printed table: the job, the swept values, the metrics, the status, every row (a failed one with
    its error)."""
    jobs = {"0": (["optim.lr=1e-3", "seed=0"], {"val/ppl": 12.5, "val/acc": 0.25}), "1": (["optim.lr=3e-3", "seed=0"],
            {"val/ppl": 11.25, "val/acc": 0.5})}  # fmt: skip
    directory = plain_runs(tmp_path / "pretrain", jobs, {"model": {"name": "tiny"}})
    (directory / "2" / ".hydra").mkdir(parents=True)
    (directory / "2" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["optim.lr=5e-3", "seed=0"]))
    (directory / "2" / "error.txt").write_text("ValueError: a | b\n")
    if spec:
        (directory / "sweep.yaml").write_text(yaml.safe_dump({**spec, "grid": {"optim.lr": ["1e-3", "3e-3", "5e-3"]}}))
    out, _, markdown = report_of(directory)
    assert markdown == [
        "| job | optim.lr | val/ppl | val/acc | status | error |",
        "| --- | --- | --- | --- | --- | --- |",
        "| 1 | 3e-3 | 11.25 | 0.5000 | finished |  |",
        "| 0 | 1e-3 | 12.50 | 0.2500 | finished |  |",
        "| 2 | 5e-3 |  |  | failed | ValueError: a \\| b |",
    ]
    assert table_of(out, "┃") == [markdown_cells(markdown[0])]
    assert table_of(out, "│") == [markdown_cells(line) for line in markdown[2:]]


def test_a_resumed_run_is_reported_with_its_last_command(tmp_path):
    """Before: `blockbert report runs/pretrain` listed a run started with trainer.max_steps=2000 and resumed with 500
    (which it ended at) as a 2000-step run."""
    from blockbert.experiments.sweep_summary import read_jobs

    run = tmp_path / "runs" / "2026-12-05_18-21-05"
    (run / ".hydra" / "resume-1").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- trainer.max_steps=2000\n- optim.lr=3e-4\n")
    (run / ".hydra" / "resume-1" / "overrides.yaml").write_text("- trainer.max_steps=500\n")  # lr: the same, unsaid
    (run / ".hydra" / "resume-old").mkdir()  # not Hydra's: left out
    (run / "metrics.json").write_text(json.dumps({"status": "finished", "step": 500, "val/ppl": 60.0}))
    (row,) = read_jobs(tmp_path / "runs", ["trainer.max_steps", "optim.lr"])
    assert (row["trainer.max_steps"], row["optim.lr"], row["step"]) == ("500", "3e-4", 500)


MISSING_DATA = ["experiment=tiny", "data=text_files", "data.files=missing.txt", "trainer.max_steps=5"]  # fails at once


def files_of(directory):
    """Every file under ``directory`` with its bytes: what a refused command must leave as it was."""
    return {path: path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()}


def test_a_sweep_whose_jobs_failed_exits_as_a_failed_multirun_does(run, tmp_path):
    """Both jobs failed (no data file) and the sweep exited 0. Now it writes its summary, says how many jobs failed
    and where their error.txt are, and exits as `pretrain -m` with a failed job exits: 2 for bad input."""
    sweep_dir = tmp_path / "sweep"
    heads = "model.heads=4:0,3:1"
    out = run(tmp_path, "sweep", "heads_n2", *MISSING_DATA, heads, "--dir", sweep_dir, check=False)
    plain = run(tmp_path, "pretrain", "-m", *MISSING_DATA, heads, f"hydra.sweep.dir={tmp_path / 'plain'}", check=False)
    assert out.returncode == plain.returncode == 2, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == str(sweep_dir.resolve()) and (sweep_dir / "summary.csv").is_file()
    assert out.stderr.strip().splitlines()[-1] == (
        f"blockbert sweep: error: 2 of 2 jobs failed (their errors: {sweep_dir.resolve() / '0' / 'error.txt'}, "
        f"{sweep_dir.resolve() / '1' / 'error.txt'})"
    )


def test_a_sweep_resumed_with_other_jobs_is_refused_and_left_as_it_was(run, tmp_path):
    """`--dir S` with another grid gave job 1 (a finished 3:1) the value 1:3: the finished run was marked failed with
    the resume's refusal in its error.txt, sweep.yaml was overwritten and 1:3 never ran. A sweep directory holds the
    grid its sweep.yaml records: another sweep or other jobs are refused in one line before anything is written;
    `--dir S` alone continues it with its recorded overrides."""
    sweep_dir = tmp_path / "sweep"
    started = [*MISSING_DATA, "model.heads=4:0,3:1,2:2"]
    run(tmp_path, "sweep", "heads_n2", *started, "--dir", sweep_dir, check=False)
    job = sweep_dir / "1"  # as if it had finished
    (job / "done.json").write_text(
        json.dumps({"overrides": yaml.safe_load((job / ".hydra/overrides.yaml").read_text())})
    )
    (job / "error.txt").unlink()
    before = files_of(sweep_dir)
    other = run(tmp_path, "sweep", "heads_n2", *MISSING_DATA, "model.heads=4:0,1:3", "--dir", sweep_dir, check=False)
    assert other.returncode == 2 and files_of(sweep_dir) == before, other.stderr[-3000:]
    assert other.stderr.strip().splitlines() == [
        f"blockbert sweep: error: --dir {sweep_dir} holds sweep heads_n2 with other jobs (job 1 would run "
        "model.heads=1:3, not model.heads=3:1; job 2 (model.heads=2:2) would be dropped): continue it with "
        f"`blockbert sweep heads_n2 --dir {sweep_dir}` (the overrides its sweep.yaml records) or start a new sweep "
        "without --dir"
    ]
    refused = {
        "another sweep": ["heads_n3", *started],
        "other overrides": ["heads_n2", *MISSING_DATA[:-1], "trainer.max_steps=6", "model.heads=4:0,3:1,2:2"],
        "the paper's jobs": ["heads_n2", "trainer.max_steps=5"],
    }
    for words in refused.values():
        result = runner.invoke(cli.app, ["sweep", *words, "--dir", str(sweep_dir), "--dry-run"])
        assert result.exit_code == 2 and f"--dir {sweep_dir} holds sweep heads_n2" in result.output, result.output
    assert "heads_n2, not heads_n3" in runner.invoke(cli.app, ["sweep", *refused["another sweep"], "--dir",
                                                                str(sweep_dir)]).output  # fmt: skip
    assert files_of(sweep_dir) == before
    same = runner.invoke(cli.app, ["sweep", "heads_n2", *started, "--dir", str(sweep_dir), "--dry-run"])
    alone = runner.invoke(cli.app, ["sweep", "heads_n2", "--dir", str(sweep_dir), "--dry-run"])
    assert same.exit_code == alone.exit_code == 0, same.output + alone.output
    assert job_lines(alone.output) == job_lines(same.output) and len(job_lines(same.output)) == 3
    assert job_lines(alone.output)[1].endswith("data.files=missing.txt trainer.max_steps=5 'model.heads=3\\:1'")
    # a launcher setting, which no job records, joins the recorded overrides (before: they were dropped, and refused)
    launcher = runner.invoke(
        cli.app, ["sweep", "heads_n2", "hydra.job.chdir=false", "--dir", str(sweep_dir), "--dry-run"]
    )
    assert launcher.exit_code == 0 and len(job_lines(launcher.output)) == 3, launcher.output
    assert files_of(sweep_dir) == before


def test_a_sweep_whose_keys_are_not_in_alphabetical_order_continues_in_its_directory(tmp_path):
    """Before: the grid read back through YAML had its keys sorted (optim.batch_size before optim.lr), so finetune_grid
    resumed with --dir was refused as "other jobs", advising the very command just refused."""
    from blockbert.app.commands.sweep import expanded_sweep, write_spec

    sweep, grid, _ = expanded_sweep("finetune_grid", [])
    assert list(grid) == ["optim.lr", "optim.batch_size"]
    write_spec(tmp_path, sweep, grid, None, (), [])
    result = runner.invoke(cli.app, ["sweep", "finetune_grid", "--dir", str(tmp_path), "--dry-run"])
    assert result.exit_code == 0, result.output


def test_a_plain_multiruns_directory_is_refused_as_a_sweeps(tmp_path):
    """Before: its jobs were taken for the sweep's (job 0 of the sweep "resumed" the multirun's job 0 and failed)."""
    multirun = tmp_path / "multirun"
    for number in ("0", "1"):
        (multirun / number / ".hydra").mkdir(parents=True)
        (multirun / number / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    before = files_of(multirun)
    result = runner.invoke(cli.app, ["sweep", "heads_n2", "--dir", str(multirun), "--dry-run"])
    assert result.exit_code == 2 and files_of(multirun) == before
    assert f"error: --dir {multirun} holds 2 jobs of a multirun that is no blockbert sweep" in result.output
    (tmp_path / "empty").mkdir()
    assert runner.invoke(cli.app, ["sweep", "heads_n2", "--dir", str(tmp_path / "empty"), "--dry-run"]).exit_code == 0


def test_sweep_help_names_only_what_sweep_takes():
    """sweep's help offered Hydra's `-m`, `--cfg job` and `--info`, which sweep refuses."""
    result = runner.invoke(cli.app, ["sweep", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    assert "print the composed config" not in result.output and "--info" not in result.output
    assert "--multirun" not in result.output and "-m with comma lists" not in " ".join(result.output.split())
    assert "--dry-run" in result.output and "comma list" in result.output


def test_a_stopped_sweep_names_its_jobs_directory_and_its_resume_command_continues_it(tmp_path, monkeypatch, capsys):
    """A job stopped by SIGTERM said "its state is saved in checkpoints/interrupted.ckpt" above the sweep's
    directory, where no checkpoints/ is: the line names the job's own directory. The resume command it prints is
    taken as it is, and plans the same jobs in the same directory."""
    import shlex

    from hydra.core.hydra_config import HydraConfig

    from blockbert.app import launch
    from blockbert.app.commands.sweep import run_sweep
    from blockbert.errors import RunInterrupted
    from blockbert.formats.run_dir import RunDir

    def entry_point(task):
        def main(cfg):  # as training stops on SIGTERM (blockbert.train.resilience)
            run_dir = RunDir(HydraConfig.get().runtime.output_dir)
            checkpoint = str(run_dir.interrupted_checkpoint.relative_to(run_dir.path))
            resume = f"run the same command with hydra.run.dir={run_dir.path} to resume"
            state = f"stopped by SIGTERM at step 4: its state is saved in {checkpoint}"
            raise RunInterrupted(state, resume, run_dir.path, 143, saved=checkpoint)

        main.__module__ = launch.ENTRY_POINTS[task]
        return main

    monkeypatch.setattr(launch, "_entry_point", entry_point)
    spec = sweep_file(tmp_path / "two.yaml", {"model.heads": ["3:1", "1:3"]})
    sweep_dir = tmp_path / "sweep"
    assert run_sweep(str(spec), ["logger=none", "seed=3"], directory=str(sweep_dir)) == 143
    out, err = capsys.readouterr()
    line = next(line for line in err.splitlines() if "interrupted:" in line)
    job = sweep_dir.resolve() / "0"
    assert f"its state is saved in checkpoints/interrupted.ckpt (in the job's directory, {job})" in line
    assert out.strip().splitlines()[-1] == str(sweep_dir.resolve())
    resume = shlex.split(line.split("; run ", 1)[1].split(" to resume the sweep")[0])
    assert resume[:2] == ["blockbert", "sweep"] and resume[-2:] == ["--dir", str(sweep_dir.resolve())]
    again = runner.invoke(cli.app, [*resume[1:], "--dry-run"])
    assert again.exit_code == 0, again.output
    assert [line.split()[-1] for line in job_lines(again.output)] == ["model.heads=3:1", "model.heads=1:3"]
