"""`blockbert report --paper`: the paper's numbers as the data file holds them, and real tiny runs of each kind
(pretrain, finetune from it, profile, benchmark) set beside them; what has no paper row is listed, never guessed."""

import csv
import functools
import json
import os
import shutil
import subprocess

import pytest
import yaml
from typer.testing import CliRunner

import cli
from blockbert.experiments.paper_report import load_paper

runner = CliRunner()
SMALL = ["size.hidden_size=48", "size.intermediate_size=64", "size.vocab_size=100", "size.num_layers=1"]
QUIET = ["logger=none", "progress_bar=false"]


def test_the_data_file_holds_every_cell_with_its_table_row_and_unit():
    paper = load_paper()
    assert set(paper.tables) == {1, 2, 3, 4, 5}
    assert all(paper.tables[t][k] for t in paper.tables for k in ("title", "hardware", "scale", "corpus"))
    for cell in paper.numbers:
        assert {"table", "row", "metric", "column", "value", "unit"} <= set(cell), cell
        assert cell["row"]["model"] in paper.models and "N" in cell["row"], cell
        assert isinstance(cell["value"], (int, float)) or cell["value"] in ("OOM", "-", "10:2", "9:3", "8:2:2")
    counts = {t: sum(c["table"] == t for c in paper.numbers) for t in paper.tables}
    # Table 3: 10 model rows x 4 + human performance x 4 + XLNet's two SQuAD 2.0 cells; Table 4: 10 rows x 10
    assert counts == {1: 12, 2: 32, 3: 46, 4: 100, 5: 12}
    keys = [(c["table"], tuple(sorted(c["row"].items(), key=str)), c["metric"]) for c in paper.numbers]
    assert len(keys) == len(set(keys))  # one cell each


@functools.cache
def paper():
    return load_paper()


def value(table, model, n, metric, batch=None):
    (cell,) = [c for c in paper().cells(table, model, n, batch) if c["metric"] == metric]
    return cell["value"]


@pytest.mark.parametrize(
    "model, n, cells",
    [  # Table 3 as NOTES.md states it: SQuAD 1.1 EM/F1, SQuAD 2.0 EM/F1
        ("google_bert", 512, (81.19, 88.45, 74.08, 77.16)),
        ("roberta_1seq", 512, (84.43, 91.48, 79.22, 82.27)),
        ("blockbert_n2", 512, (84.08, 90.77, 78.34, 81.46)),
        ("sparsebert", 1024, (81.02, 88.37, 74.51, 77.57)),
        ("blockbert_n3", 1024, (82.74, 90.05, 76.79, 79.84)),
    ],
)
def test_table3_as_the_notes_state_it(model, n, cells):
    metrics = ("squad11/em", "squad11/f1", "squad20/em", "squad20/f1")
    assert tuple(value(3, model, n, m) for m in metrics) == cells


def test_table5_and_the_savings_the_text_states():
    times = {
        (model, batch): value(5, model, 1024, "inference_time", batch)
        for model in ("roberta_1seq", "blockbert_n2", "blockbert_n3")
        for batch in (8, 16, 24, 32)
    }
    assert [times["roberta_1seq", b] for b in (8, 16, 24, 32)] == [0.1371, "OOM", "OOM", "OOM"]
    assert [times["blockbert_n2", b] for b in (8, 16, 24, 32)] == [0.0990, 0.1869, "OOM", "OOM"]
    assert [times["blockbert_n3", b] for b in (8, 16, 24, 32)] == [0.0954, 0.1790, 0.2634, "OOM"]
    saving = {n: 100 * (1 - times[n, 8] / times["roberta_1seq", 8]) for n in ("blockbert_n2", "blockbert_n3")}
    assert round(saving["blockbert_n2"], 1) == 27.8 and round(saving["blockbert_n3"], 1) == 30.4


def test_tables_1_2_and_4_agree_with_what_the_text_says_of_them():
    for n, b in ((512, 8), (1024, 4)):  # Table 1: the O(N²) part falls to 1/2 and 1/3 of BERT's
        bert = value(1, "roberta_1seq", n, "quadratic_part", b)
        assert value(1, "blockbert_n2", n, "quadratic_part", b) == pytest.approx(bert / 2, abs=0.01)
        assert value(1, "blockbert_n3", n, "quadratic_part", b) == pytest.approx(bert / 3, abs=0.01)
    disagree = []  # Table 2's percentages are each row against RoBERTa-1seq
    for n in (512, 1024):
        for model in ("blockbert_n2", "blockbert_n3"):
            for metric in ("training_days", "memory_per_gpu"):
                change = 100 * (value(2, model, n, metric) / value(2, "roberta_1seq", n, metric) - 1)
                printed = value(2, model, n, f"{metric.split('_per')[0]}_change")
                if abs(change - printed) > 0.15:
                    disagree.append((model, n, metric, round(change, 1), printed))
    assert disagree == [("blockbert_n3", 512, "memory_per_gpu", -24.8, -23.8)]  # the paper's own; the file says so
    gaps = [  # Table 4, section 4.2: n=2 vs RoBERTa-1seq F1 at N=512, from 0.04 (NaturalQA) to 1.18 (NewsQA)
        value(4, "roberta_1seq", 512, f"{s}/f1") - value(4, "blockbert_n2", 512, f"{s}/f1")
        for s in ("searchqa", "triviaqa", "newsqa", "naturalqa", "hotpotqa")
    ]
    assert round(min(gaps), 2) == 0.04 and round(max(gaps), 2) == 1.18
    assert round(value(4, "blockbert_n2", 1024, "newsqa/f1") - value(4, "blockbert_n3", 1024, "newsqa/f1"), 1) == 1.6


def squad_file(path):
    """A few SQuAD 1.1 questions: a real squad11 fine-tuning run without the network."""
    paragraphs = []
    for i in range(6):
        context = f"Ada number {i} was born in London in 18{10 + i} and wrote notes on the engine."
        answers = {"Where was she born?": "London", "When was she born?": f"18{10 + i}"}
        qas = [
            {"id": f"q{i}{j}", "question": q, "answers": [{"text": a, "answer_start": context.index(a)}]}
            for j, (q, a) in enumerate(answers.items())
        ]
        paragraphs.append({"context": context, "qas": qas})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path


def start(root, command, *args):
    env = dict(os.environ, WANDB_MODE="disabled", BLOCKBERT_CACHE=str(root / "cache"), PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        ["blockbert", command, *args, f"hydra.run.dir={root / command}"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process):
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Real run directories of the four kinds at tiny sizes; the pre-training is the paper's BlockBert n=2, N=512
    row (experiment=blockbert_n2_512) shrunk, and the fine-tuning starts from it on SQuAD 1.1-format files."""
    root = tmp_path_factory.mktemp("paper")
    pre = start(
        root,
        "pretrain",
        "experiment=blockbert_n2_512",
        "model.hidden_size=48",
        "model.intermediate_size=64",
        "model.num_layers=1",
        "tokens_per_batch=1024",
        "data.generated_documents=40",
        "trainer.max_steps=2",
        *QUIET,
    )
    others = [
        start(root, "profile", "seq_lengths=[256,512,1024]", "tokens_per_device=1024", *SMALL),
        start(root, "benchmark", "bench=table5", *SMALL, "batch_sizes=[8]", "repeats=1", "warmup=0"),
    ]
    finish(pre)
    squad = squad_file(root / "squad.json")
    files = [f"task.train_file={squad}", f"task.dev_file={squad}"]
    fine = start(
        root, "finetune", f"init_from={root / 'pretrain'}", "task=squad11", *files, "trainer.max_steps=2", *QUIET
    )
    for process in [*others, fine]:
        finish(process)
    return root


def report(*args):
    result = runner.invoke(cli.app, ["report", *map(str, args)])
    assert result.exit_code == 0, result.output[-4000:]
    return result


def read_csv(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def rows_of(rows, **where):
    return [r for r in rows if all(r[k] == v for k, v in where.items())]


def test_paper_mode_on_real_runs_of_each_kind(runs, tmp_path):
    out = tmp_path / "report"
    kinds = ("pretrain", "finetune", "profile", "benchmark")
    result = report("--paper", *(runs / k for k in kinds), "--out", out)
    assert result.output.strip().splitlines()[-1] == str(out.resolve())
    assert (out / "paper_report.png").read_bytes()[:4] == b"\x89PNG"
    rows = read_csv(out / "paper_report.csv")
    assert {r["kind"] for r in rows if r["match"] == "matched"} == set(kinds)
    text = (out / "paper_report.md").read_text()
    for table in (1, 2, 3, 5):
        assert f"## Table {table}: " in text and f"Table {table}: " in result.output
    assert "NOT comparable with the paper's Wikipedia + BookCorpus" in text  # the generated corpus, flagged

    # Table 2: the run's experiment row; perplexity beside the paper's, days and memory not measured (—)
    metrics = json.loads((runs / "pretrain" / "metrics.json").read_text())
    (ppl,) = rows_of(rows, kind="pretrain", metric="Valid. ppl")
    assert (ppl["row"], ppl["model"], float(ppl["paper"])) == ("BlockBert n=2, N=512", "blockbert_n2", 3.56)
    assert float(ppl["ours"]) == pytest.approx(metrics["val/best_ppl"])
    assert float(ppl["ratio"]) == pytest.approx(metrics["val/best_ppl"] / 3.56)
    (heads,) = rows_of(rows, kind="pretrain", metric="Heads Config.")
    assert (heads["ours"], heads["paper"], heads["note"]) == ("10:2", "10:2", "same")
    (days,) = rows_of(rows, kind="pretrain", metric="Training Time (day)")
    assert (days["ours"], days["paper"], days["ratio"]) == ("", "5.83", "")
    assert "2×512 = 1,024 tokens" in ppl["our_setting"] and "131,072" in ppl["paper_setting"]

    # Table 3: the fine-tuning config names init_from's model (before: the default, roberta_1seq)
    assert yaml.safe_load((runs / "finetune" / ".hydra" / "config.yaml").read_text())["model"]["name"] == "blockbert_n2"
    metrics = json.loads((runs / "finetune" / "metrics.json").read_text())
    squad = {r["metric"]: r for r in rows_of(rows, kind="finetune")}
    assert set(squad) == {"SQuAD 1.1 EM", "SQuAD 1.1 F1"}
    assert {r["model"] for r in squad.values()} == {"blockbert_n2"}
    assert (float(squad["SQuAD 1.1 EM"]["paper"]), float(squad["SQuAD 1.1 F1"]["paper"])) == (84.08, 90.77)
    assert float(squad["SQuAD 1.1 F1"]["ours"]) == pytest.approx(metrics["dev/f1"])
    assert float(squad["SQuAD 1.1 F1"]["ratio"]) == pytest.approx(metrics["dev/f1"] / 90.77)

    # Table 1: GB beside GB, and the O(N²) part of each block model as a fraction of BERT's on both sides
    profile = json.loads((runs / "profile" / "profile.json").read_text())["models"]
    (bert,) = rows_of(rows, kind="profile", row="BERT, N=512, b=8", metric="O(N²)")
    ours = next(r["quadratic_part_mb"] for r in profile["roberta_1seq"]["rows"] if r["seq_len"] == 512) / 1024
    assert float(bert["paper"]) == 3.66 and float(bert["ours"]) == pytest.approx(ours)
    for row, fraction in (("BlockBert n=2, N=1024, b=4", 3.66 / 7.32), ("BlockBert n=3, N=512, b=8", 1.22 / 3.66)):
        (ratio,) = rows_of(rows, kind="profile", row=row, metric="O(N²) ÷ BERT's")
        assert float(ratio["paper"]) == pytest.approx(fraction)
        assert float(ratio["ours"]) == pytest.approx(fraction, rel=0.05)  # eager attention: 1/n as in the paper

    # Table 5: seconds beside seconds (other hardware), and the time ratio to RoBERTa on each side
    records = json.loads((runs / "benchmark" / "benchmark.json").read_text())["records"]
    median = {r["model"]: r["median_s"] for r in records}
    (n2,) = rows_of(rows, kind="benchmark", model="blockbert_n2", metric="8×1024")
    assert (n2["row"], float(n2["paper"]), float(n2["ours"])) == (
        "BlockBert n=2, 8×1024",
        0.099,
        median["blockbert_n2"],
    )
    (saving,) = rows_of(rows, kind="benchmark", model="blockbert_n2 ÷ roberta_1seq_eager")
    assert float(saving["paper"]) == pytest.approx(0.0990 / 0.1371) and "27.8 %" in saving["note"]
    assert float(saving["ours"]) == pytest.approx(median["blockbert_n2"] / median["roberta_1seq_eager"])

    unmatched = {r["model"]: r["note"] for r in rows if r["match"] == "unmatched"}
    assert unmatched["sparsebert at N=256, 512, 1024"].startswith("Table 1 has rows for roberta_1seq (BERT)")
    assert unmatched["roberta_1seq at N=256"] == "Table 1 has N=512 and 1024 only"
    assert "## Unmatched: no paper row" in text and "Unmatched: no paper row" in result.output


def copy_run(source, target, config=None, metrics=None):
    """A run directory's results (metrics.json, .hydra) with changes: the edge cases real runs rarely produce."""
    shutil.copytree(source / ".hydra", target / ".hydra")
    for name in ("metrics.json", "profile.json", "benchmark.json"):
        if (source / name).is_file():
            shutil.copy(source / name, target / name)
    for name, change in ((".hydra/config.yaml", config), ("metrics.json", metrics)):
        if change:
            loaded = (yaml.safe_load if name.endswith("yaml") else json.loads)((target / name).read_text())
            change(loaded)
            (target / name).write_text(yaml.safe_dump(loaded) if name.endswith("yaml") else json.dumps(loaded))
    return target


def test_runs_whose_paper_row_cannot_be_told_are_listed_as_unmatched(runs, tmp_path):
    lost = copy_run(runs / "finetune", tmp_path / "lost", config=lambda c: c.update(init_from="/no/such/run"))
    hub = copy_run(
        runs / "finetune",
        tmp_path / "hub",
        config=lambda c: (c.update(init_from=None), c["model"].update(init_from="x")),
    )
    tiny = copy_run(
        runs / "pretrain", tmp_path / "tiny", config=lambda c: (c.update(paper=None), c["model"].update(name="tiny"))
    )
    mrqa = copy_run(
        runs / "finetune", tmp_path / "mrqa", config=lambda c: c["task"].update(name="mrqa", train_file="a.jsonl")
    )
    attention = copy_run(runs / "benchmark", tmp_path / "attention")
    results = json.loads((attention / "benchmark.json").read_text())
    (attention / "benchmark.json").write_text(json.dumps({**results, "mode": "attention"}))
    report("--paper", lost, hub, tiny, mrqa, attention, "--out", tmp_path / "out")
    unmatched = {r["run"]: r for r in read_csv(tmp_path / "out" / "paper_report.csv") if r["match"] == "unmatched"}
    assert set(unmatched) == {str(p) for p in (lost, hub, tiny, mrqa, attention)}
    assert unmatched[str(attention)]["model"] == "mode=attention"
    assert "the model cannot be told: init_from /no/such/run" in unmatched[str(lost)]["note"]
    assert "model.init_from=x, which names no paper row" in unmatched[str(hub)]["note"]
    assert unmatched[str(tiny)]["note"].startswith("tiny at N=512: Table 2 has rows for roberta_1seq (RoBERTa-1seq)")
    assert "the MRQA set cannot be told" in unmatched[str(mrqa)]["note"]


def test_an_mrqa_run_is_table4s_columns_of_its_set_scored_on_the_test_half(runs, tmp_path):
    def as_mrqa(config):
        config["task"].update(name="mrqa", hub_subset="TriviaQA-web", train_file=None, dev_file=None)

    scores = {"test/exact_match": 50.0, "test/f1": 60.0, "dev/exact_match": 1.0, "dev/f1": 2.0}
    mrqa = copy_run(runs / "finetune", tmp_path / "mrqa", config=as_mrqa, metrics=lambda m: m.update(scores))
    report("--paper", mrqa)
    rows = {r["metric"]: r for r in read_csv(mrqa / "paper_report.csv")}
    assert set(rows) == {"TriviaQA EM", "TriviaQA F1"} and rows["TriviaQA F1"]["table"] == "4"
    assert (rows["TriviaQA EM"]["paper"], rows["TriviaQA F1"]["paper"]) == ("72.36", "77.53")  # BlockBert n=2, 512
    assert (float(rows["TriviaQA EM"]["ours"]), float(rows["TriviaQA F1"]["ours"])) == (50.0, 60.0)
    assert "ours: test split" in rows["TriviaQA F1"]["note"]


def test_a_sweep_directory_reports_its_finished_jobs_and_the_summary_mode_still_works(runs, tmp_path):
    sweep = tmp_path / "sweep"
    copy_run(runs / "pretrain", sweep / "0")
    (sweep / "0" / "done.json").write_text("{}")
    copy_run(runs / "pretrain", sweep / "1", metrics=lambda m: m.update(status="failed"))
    (sweep / "1" / "error.txt").write_text("RuntimeError: boom\n\ntraceback")
    report("--paper", sweep)
    rows = read_csv(sweep / "paper_report.csv")  # by default the outputs go to the first directory
    assert {r["run"] for r in rows if r["match"] == "matched"} == {f"{sweep}/0"}
    (failed,) = [r for r in rows if r["match"] == "unmatched"]
    assert failed["run"] == f"{sweep}/1" and failed["note"] == "job not finished (failed: RuntimeError: boom)"
    result = report(sweep)  # without --paper: the sweep summary, as before
    assert (sweep / "summary.csv").is_file() and result.output.strip().splitlines()[-1] == str(sweep.resolve())


def error_of(*args):
    result = runner.invoke(cli.app, ["report", *map(str, args)])
    errors = [line for line in result.output.splitlines() if line.startswith("blockbert report: error: ")]
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def test_bad_directories_are_one_line_errors(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a run")
    error = error_of("--paper", tmp_path / "other")
    assert f"{tmp_path / 'other'}: not a run directory of an accepted kind" in error
    assert all(f"{kind} (" in error for kind in ("pretrain", "finetune", "profile", "benchmark"))
    assert "missing: no such directory" in error_of("--paper", tmp_path / "missing")
    assert "several directories: only with --paper" in error_of(tmp_path / "other", tmp_path / "missing")


def profile_run(path, heads):
    """A profile run directory made by hand: roberta_1seq and the block models ``heads`` names (model: (heads, its
    preset's)) at Table 1's N and b, each block model's O(N²) part a third of BERT's."""
    rows = [
        {"seq_len": n, "batch_size": 4096 // n, "linear_part_mb": 100.0, "quadratic_part_mb": n / 2}
        for n in (512, 1024)
    ]
    models = {"roberta_1seq": {"rows": rows, "fit_a2": None}}
    for name, (used, preset) in heads.items():
        third = [{**r, "quadratic_part_mb": r["quadratic_part_mb"] / 3} for r in rows]
        models[name] = {"heads": used, "preset_heads": preset, "rows": third, "fit_a2": None}
    path.mkdir()
    (path / "profile.json").write_text(json.dumps({"device": "cpu", "models": models}))
    return path


def test_a_model_measured_with_heads_of_another_n_is_not_compared_as_its_paper_row(tmp_path):
    """Before: blockbert_n3 measured with +heads.blockbert_n3=9:3 (n=2) was set beside the paper's n=3 row. Heads of
    the preset's n (table5's 9:3 for n=2) are compared, the heads in the note."""
    from blockbert.experiments.paper_report import benchmark_report, profile_report

    run = profile_run(tmp_path / "profile", {"blockbert_n2": ("9:3", "10:2"), "blockbert_n3": ("9:3", "8:2:2")})
    report = profile_report(paper(), str(run), run)
    assert {r.model for r in report.rows} == {"roberta_1seq", "blockbert_n2", "blockbert_n2 ÷ roberta_1seq"}
    assert all("heads 9:3 (its preset's: 10:2)" in r.note for r in report.rows if r.model == "blockbert_n2")
    ((what, why),) = [(u.what, u.reason) for u in report.unmatched]
    assert what == "blockbert_n3 (heads 9:3)"
    assert why == "measured with heads 9:3, n=2: the paper's blockbert_n3 row is n=3"
    records = [
        {"phase": "inference", "batch_size": 8, "seq_len": 1024, "model": name, "status": "ok", "median_s": 1.0,
         **({"heads": "9:3", "preset_heads": preset} if preset else {})}
        for name, preset in [("roberta_1seq", None), ("blockbert_n2", "10:2"), ("blockbert_n3", "8:2:2")]
    ]  # fmt: skip
    (tmp_path / "benchmark.json").write_text(json.dumps({"mode": "model", "repeats": 1, "records": records}))
    report = benchmark_report(paper(), str(tmp_path), tmp_path)
    assert {r.model for r in report.rows} == {"roberta_1seq", "blockbert_n2", "blockbert_n2 ÷ roberta_1seq"}
    ((what, why),) = [(u.what, u.reason) for u in report.unmatched]
    assert what == "blockbert_n3 (heads 9:3) inference at 8×1024"
    assert why == "measured with heads 9:3, n=2: the paper's blockbert_n3 row is n=3"


def test_an_out_that_is_a_file_is_refused_naming_out(tmp_path):
    """Before: "blockbert report: error: README.md: File exists", after the runs were read."""
    run = profile_run(tmp_path / "profile", {})
    (tmp_path / "README.md").write_text("notes")
    error = error_of("--paper", run, "--out", tmp_path / "README.md")
    assert error == (
        f"blockbert report: error: --out {tmp_path / 'README.md'}: cannot write a directory there (a file is there): "
        "give another"
    )
    assert (tmp_path / "README.md").read_text() == "notes" and not (run / "paper_report.md").exists()


@pytest.mark.parametrize("statistic", ["mean", "median"])
def test_table5_is_compared_by_the_statistic_the_benchmark_divided(tmp_path, statistic):
    from blockbert.experiments.paper_report import benchmark_report

    records = [
        {"phase": "inference", "batch_size": 8, "seq_len": 1024, "model": name, "status": "ok", "mean_s": mean,
         "median_s": median}
        for name, mean, median in [("roberta_1seq", 2.0, 1.0), ("blockbert_n2", 1.0, 0.9)]
    ]  # fmt: skip
    result = {"mode": "model", "repeats": 30, "warmup": 3, "ratio_of": statistic, "lm_head": False, "records": records}
    (tmp_path / "benchmark.json").write_text(json.dumps(result))
    report = benchmark_report(paper(), str(tmp_path), tmp_path)
    ratio = next(r for r in report.rows if r.metric == "time ÷ RoBERTa's")
    assert ratio.ours == pytest.approx(0.5 if statistic == "mean" else 0.9)
    assert f"ours: {statistic} of 30 runs" in {r.note for r in report.rows}
    assert report.setting.endswith("random token ids") and "the encoder alone (no LM head)" in report.setting


def test_a_heading_that_names_its_unit_is_not_given_it_twice(tmp_path):
    """Table 2's headings "Training Time (day)" and "Memory (per GPU, GB)" were printed "Training Time (day) (day)"
    and "Memory (per GPU, GB) (GB)": the unit is added only where the heading does not name it. A pre-training run
    of the BlockBert n=2, N=512 row, made by hand (the config that experiment composes, a metrics.json)."""
    from omegaconf import OmegaConf

    from blockbert.formats.compose import compose

    run = tmp_path / "pretrain"
    config = compose("pretrain", ["experiment=blockbert_n2_512"], finished=True)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(config, resolve=True)))
    (run / "metrics.json").write_text(json.dumps({"val/ppl": 9.5, "step": 2, "status": "finished"}))
    printed = report("--paper", run).output
    text = (run / "paper_report.md").read_text()
    for heading in ("Training Time (day)", "Memory (per GPU, GB)", "Memory vs RoBERTa-1seq (%)", "Valid. ppl"):
        assert f"| {heading} |" in text and heading in printed
    assert "(day) (day)" not in text + printed and "GB) (GB)" not in text + printed
