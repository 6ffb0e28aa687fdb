"""`blockbert report --paper`: our runs beside the paper's numbers, row by row.

The paper's numbers are ``paper_numbers.yaml`` beside this module: every cell of Tables 1-5 with its table, row and
unit, so that what we compare to can be read and diffed. A run directory is read for what it is -- pre-training
(Table 2), fine-tuning (Tables 3, 4), ``profile`` (Table 1) or ``benchmark`` (Table 5) -- and each of its numbers is
set beside the paper's cell of the same model and N (and batch): ours, the paper's, ours / paper. A tiny CPU run and
the paper's 32 V100s do not measure the same thing, so each table carries the settings, the paper's and each run's
(hardware, scale, corpus), and where only relative numbers can compare (time and memory on other hardware) the
report adds the ratio within each side (BlockBert's time / RoBERTa's). A run whose paper row cannot be told is
listed as unmatched, with the reason, never guessed into a row.
"""

from __future__ import annotations

import csv
import functools
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rich.table import Table

from blockbert.display import console, counted, pyplot
from blockbert.experiments.sweep_summary import is_number
from blockbert.formats.compose import compose, config_groups
from blockbert.formats.presets import other_heads, with_heads
from blockbert.formats.run_dir import RunDir, checkpoint_of
from blockbert.model.config import parse_heads

PAPER_NUMBERS = Path(__file__).resolve().parent / "paper_numbers.yaml"
KINDS = {  # kind -> the file that tells it
    "pretrain": "metrics.json and .hydra/config.yaml without a task",
    "finetune": "metrics.json and .hydra/config.yaml with a task",
    "profile": "profile.json",
    "benchmark": "benchmark.json",
}
OUTPUTS = ("paper_report.md", "paper_report.csv", "paper_report.png")
QA_TABLES = {"squad11": 3, "squad20": 3}  # the rest (MRQA sets) are Table 4
MRQA_NAMES = {  # Table 4's column prefix -> how MRQA's files and hub subsets spell the set (lower case)
    "searchqa": ("searchqa",),
    "triviaqa": ("triviaqa",),
    "newsqa": ("newsqa",),
    "naturalqa": ("naturalquestions", "naturalqa"),
    "hotpotqa": ("hotpotqa",),
}
NOT_COMPARABLE = "NOT comparable with the paper's"
MODELS_OF_OURS = ("google_bert", "roberta_2seq", "roberta_1seq", "sparsebert", "blockbert_n2", "blockbert_n3")


class NoRow(Exception):
    """The paper row of a run cannot be told: the run is listed as unmatched with this reason."""


@dataclass
class Paper:
    """The data file: the paper's name of each model, each table's title and setting, and every cell."""

    models: dict
    tables: dict
    numbers: list[dict]

    def cells(self, table: int, model: str, n: int | None, batch: int | None = None) -> list[dict]:
        return [
            c
            for c in self.numbers
            if c["table"] == table
            and c["row"]["model"] == model
            and c["row"]["N"] == n
            and (batch is None or c["row"].get("batch") == batch)
        ]

    def row_label(self, cell: dict) -> str:
        """The paper's row as a reader finds it in the table: "BlockBert n=2, N=512", "RoBERTa, 8×1024"."""
        row = cell["row"]
        name = row.get("label") or self.models.get(row["model"], row["model"])
        if cell["table"] == 5:
            return f"{name}, {row['batch']}×{row['N']}"
        return f"{name}, N={row['N']}" + (f", b={row['batch']}" if row.get("batch") else "")

    def setting(self, table: int) -> str:
        spec = self.tables[table]
        return f"hardware: {spec['hardware']}; scale: {spec['scale']}; corpus: {spec['corpus']}"

    def models_of(self, table: int) -> str:
        """The models of a table's rows, ours and as the paper names them, for the reason a run has none there."""
        rows = [c["row"] for c in self.numbers if c["table"] == table and c["row"]["model"] in MODELS_OF_OURS]
        names = dict.fromkeys(f"{r['model']} ({r.get('label') or self.models[r['model']]})" for r in rows)
        return ", ".join(names)


def load_paper(path: Path = PAPER_NUMBERS) -> Paper:
    spec = yaml.safe_load(path.read_text())
    return Paper(spec["models"], spec["tables"], spec["numbers"])


@dataclass
class Comparison:
    """One cell: ours (of our ``model``, in ``run``) beside the paper's. ``ours`` None: a number we do not measure
    (shown as —)."""

    table: int
    row: str
    metric: str
    unit: str
    ours: float | str | None
    paper: float | str | None
    run: str
    model: str
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if is_number(self.ours) and is_number(self.paper) and self.paper:
            return self.ours / self.paper
        return None


@dataclass
class Unmatched:
    """Something of a run with no paper row (or a sweep job left out), and why: listed, never guessed into a row."""

    run: str
    kind: str
    what: str
    reason: str


@dataclass
class RunReport:
    """What one run directory gives: its comparisons, what has no paper row, and its setting (hardware, scale,
    corpus) for the caption of each table it has rows in."""

    run: str
    kind: str
    setting: str = ""
    rows: list[Comparison] = field(default_factory=list)
    unmatched: list[Unmatched] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------- run directories


def run_kind(path: Path) -> str | None:
    """pretrain, finetune, profile or benchmark: the command that wrote the run, where its results are there
    (:data:`KINDS`); None for none of them."""
    run = RunDir(path)
    kind = run.command()
    if kind in ("profile", "benchmark"):
        return kind if (run.profile_file if kind == "profile" else run.benchmark_file).is_file() else None
    return kind if kind and run.metrics_file.is_file() and run.config() is not None else None


def runs_of(directories: list[str]) -> tuple[list[tuple[str, Path, str]], list[Unmatched]]:
    """(label, directory, kind) of each run to report -- a sweep or multirun directory gives its finished jobs --
    and the jobs left out. An error names a directory that is none of these."""
    runs, skipped = [], []
    for given in directories:
        path = Path(given).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"{given}: no such directory")
        kind = run_kind(path)
        if kind:
            runs.append((str(given), path, kind))
            continue
        jobs = sweep_jobs(path, str(given))
        if jobs is None:
            accepted = "; ".join(f"{k} ({f})" for k, f in KINDS.items())
            raise FileNotFoundError(
                f"{given}: not a run directory of an accepted kind -- {accepted} -- nor a sweep or multirun "
                "directory of them"
            )
        runs += jobs[0]
        skipped += jobs[1]
    return runs, skipped


def sweep_jobs(path: Path, label: str) -> tuple[list, list[Unmatched]] | None:
    """The finished jobs of a sweep or multirun directory (None if it has no job directories)."""
    from blockbert.experiments.sweep_summary import read_jobs

    rows = read_jobs(path, [])
    if not rows:
        return None
    runs, skipped = [], []
    for row in rows:
        job, name = path / row["job"], f"{label.rstrip('/')}/{row['job']}"
        kind = run_kind(job)
        if kind and (row["status"] == "finished" or kind in ("profile", "benchmark")):  # those two write at the end
            runs.append((name, job, kind))
        else:
            why = f"job not finished ({row['status']}{': ' + row['error'] if row['error'] else ''})"
            skipped.append(Unmatched(name, kind or "?", "the job", why if kind else "no results of an accepted kind"))
    return runs, skipped


# ---------------------------------------------------------------------------------------------------- paper rows


@functools.cache
def experiment_rows() -> dict[str, tuple[str, int]]:
    """{paper row of each conf/experiment file (what a run's ``paper.row`` holds): (model, N)}, each experiment composed
    as `blockbert pretrain` composes it."""
    rows = {}
    for name in config_groups("pretrain")["experiment"][1]:
        cfg = compose("pretrain", [f"experiment={name}"])
        if cfg.get("paper"):
            rows[cfg.paper.row] = (cfg.model.name, cfg.data.max_seq_length)
    return rows


def declared_row(config: dict) -> tuple[str, int] | None:
    """The row ``experiment=<paper row>`` put in the config (its ``paper`` node), as (model, N)."""
    row = (config.get("paper") or {}).get("row")
    if not row:
        return None
    rows = experiment_rows()
    if row not in rows:
        raise NoRow(f"its paper row {row!r} (the config's paper node) is none of conf/experiment's rows")
    return rows[row]


def own_row(config: dict) -> tuple[str, int]:
    return config["model"]["name"], config["data"]["max_seq_length"]


def pretrain_row(config: dict) -> tuple[str, int]:
    """A pre-training run's (model, N): its experiment's paper row, else model.name and data.max_seq_length."""
    return declared_row(config) or own_row(config)


def finetune_row(config: dict, path: Path) -> tuple[str, int, str]:
    """(model, N, how it was told) of a fine-tuning run. From ``init_from`` the model is the pre-training run's:
    the fine-tuning config's own model.name is then only the default. A model that cannot be told raises NoRow."""
    declared, init = declared_row(config), config.get("init_from")
    if init:
        source = pretrain_source(str(init), path)
        if source is None:
            if declared:
                return (*declared, f"init_from {init} is not there: the experiment's row is taken as given")
            raise NoRow(f"the model cannot be told: init_from {init}, the pre-training run that names it, is not there")
        pre = pretrain_row(RunDir(source).config())
        if declared and declared != pre:
            raise NoRow(f"its experiment is the {declared} row but init_from {init} was pre-trained as {pre}")
        return (*pre, f"the model of init_from {source.name}")
    weights = config["model"].get("init_from")
    if declared:
        return (*declared, "experiment row")
    if weights and config["model"]["name"] != "google_bert":
        raise NoRow(
            f"the model cannot be told: weights from model.init_from={weights}, which names no paper row "
            "(give experiment=<paper row>)"
        )
    how = f"the checkpoint {weights}" if weights else "not pre-trained: a fresh model fine-tuned"
    return (*own_row(config), how)


def pretrain_source(init: str, run_dir: Path) -> Path | None:
    """The pre-training run directory of ``init_from`` (a run directory or one of its checkpoints); a relative path
    is taken from where the fine-tuning run was started. None when it is not there."""
    path = Path(init).expanduser()
    if not path.is_absolute():
        path = RunDir(run_dir).launch_directory() / path
    if not path.exists():
        return None
    source = checkpoint_of(path)[0]
    return source.path if source.path.is_dir() and source.config() is not None else None


# ---------------------------------------------------------------------------------------------------- settings


def trainer_hardware(trainer: dict) -> str:
    devices, nodes = trainer.get("devices"), trainer.get("num_nodes", 1)
    count = (
        "all devices"
        if devices in (-1, "auto")
        else counted(devices, "device")
        if isinstance(devices, int)
        else f"devices {devices}"
    )
    nodes = f" on {nodes} nodes" if nodes and nodes > 1 else ""
    return f"{trainer.get('accelerator')}, {count}{nodes}, precision {trainer.get('precision')}"


def model_size(model: dict) -> str:
    """In the paper's notation: L layers, H hidden units, A heads (BERT-base: L=12, H=768, A=12)."""
    return f"L={model.get('num_layers')}, H={model.get('hidden_size')}, A={model.get('num_heads', 12)}"


def corpus_text(data: dict) -> str:
    """The pre-training corpus, flagged where it is not the paper's."""
    name, source = data.get("name"), data.get("source")
    if source == "generated":
        return f"{name}: generated synthetic text, {NOT_COMPARABLE} Wikipedia + BookCorpus"
    if name == "wiki_book":
        return "wiki_book: English Wikipedia + BookCorpus, the paper's corpus (BookCorpus rows grouped: our choice)"
    return f"{name} ({source}): not the paper's corpus"


def task_text(task: dict) -> str:
    """The fine-tuning data, flagged where it is not the paper's (the generated set, a subset of the questions)."""
    name = task.get("name")
    if name == "generated":
        text = f"generated QA set (synthetic, SQuAD v{task.get('version')} format): {NOT_COMPARABLE} SQuAD"
    else:
        text = f"{name} ({task_names(task) or task.get('hub_name')})"
    limits = [f"{k}={task[k]}" for k in ("max_train_samples", "max_eval_samples") if task.get(k)]
    return text + (f"; only {', '.join(limits)}: {NOT_COMPARABLE} full sets" if limits else "")


def status(metrics: dict) -> str:
    """A run that did not finish says so where its steps are given."""
    return "" if metrics.get("status") in ("finished", None) else f" (run {metrics['status']})"


def setting_text(hardware: str, scale: str, corpus: str) -> str:
    return f"hardware: {hardware}; scale: {scale}; corpus: {corpus}"


# ---------------------------------------------------------------------------------------------------- each kind


def compare(paper: Paper, cell: dict, ours, run: str, model: str, note: str = "") -> Comparison:
    if isinstance(ours, str) and isinstance(cell["value"], str):
        note = "; ".join(filter(None, ["same" if ours == cell["value"] else "differs", note]))
    row = paper.row_label(cell)
    return Comparison(cell["table"], row, cell["column"], cell["unit"] or "", ours, cell["value"], run, model, note)


def pretrain_report(paper: Paper, run: str, path: Path) -> RunReport:
    config, metrics = RunDir(path).config(), RunDir(path).metrics()
    step, batch, length = metrics.get("step"), metrics.get("batch_size"), metrics.get("seq_len")
    scale = f"{model_size(config['model'])}; {step} of {config['trainer'].get('max_steps')} steps{status(metrics)}"
    if batch and length:
        scale += f"; B×N = {batch}×{length} = {batch * length:,} tokens"
    hardware = trainer_hardware(config["trainer"])
    report = RunReport(run, "pretrain", setting_text(hardware, scale, corpus_text(config["data"])))
    try:
        report.rows = pretrain_rows(paper, run, config, metrics)
    except NoRow as err:
        report.unmatched.append(Unmatched(run, "pretrain", f"model {config['model'].get('name')}", str(err)))
    return report


def pretrain_rows(paper: Paper, run: str, config: dict, metrics: dict) -> list[Comparison]:
    """Table 2: validation perplexity and heads; days and memory per GPU are not measured comparably here (—)."""
    model, length = pretrain_row(config)
    cells = paper.cells(2, model, length)
    if not cells:
        raise NoRow(f"{model} at N={length}: Table 2 has rows for {paper.models_of(2)} at N=512 and 1024 only")
    ppl = "val/best_ppl" if "val/best_ppl" in metrics else "val/ppl"
    heads = config["model"].get("heads") if config["model"].get("attention") == "block" else "-"
    ours = {"valid_ppl": (metrics.get(ppl), f"ours: {ppl} at step {metrics.get('step')}"), "heads": (heads, "")}
    trained = config["data"]["max_seq_length"]
    at = f"; pre-trained at N={trained}" if trained != length else ""
    rows = []
    for cell in cells:
        value, note = ours.get(cell["metric"], (None, "not measured comparably by blockbert pretrain"))
        rows.append(compare(paper, cell, value, run, model, note + at))
    return rows


def finetune_report(paper: Paper, run: str, path: Path) -> RunReport:
    config, metrics = RunDir(path).config(), RunDir(path).metrics()
    report = RunReport(run, "finetune", finetune_setting(config, metrics, path))
    try:
        report.rows = finetune_rows(paper, run, config, metrics, path)
    except NoRow as err:
        report.unmatched.append(Unmatched(run, "finetune", f"task {config['task'].get('name')}", str(err)))
    return report


def finetune_rows(paper: Paper, run: str, config: dict, metrics: dict, path: Path) -> list[Comparison]:
    """Tables 3 (SQuAD; the generated set is SQuAD-format, flagged) and 4 (MRQA, scored on the test half)."""
    task = config["task"]
    dataset = qa_dataset(task)
    model, length, how = finetune_row(config, path)
    table = QA_TABLES.get(dataset, 4)
    cells = [c for c in paper.cells(table, model, length) if c["metric"].startswith(f"{dataset}/")]
    if not cells:
        raise NoRow(f"{model} at N={length}: Table {table} has rows for {paper.models_of(table)} at N=512, 1024 only")
    split = "test" if table == 4 and "test/f1" in metrics else "dev"
    ours = {"em": metrics.get(f"{split}/exact_match", metrics.get(f"{split}/exact")), "f1": metrics.get(f"{split}/f1")}
    generated = "generated QA set; " if task.get("name") == "generated" else ""
    tuned = config["data"].get("max_seq_length")
    note = f"{generated}ours: {split} split; {how}" + (f"; fine-tuned at N={tuned}" if tuned != length else "")
    return [compare(paper, cell, ours[cell["metric"].split("/")[1]], run, model, note) for cell in cells]


def qa_dataset(task: dict) -> str:
    """The paper's column prefix of a fine-tuning task: squad11, squad20, or an MRQA set (searchqa, ...)."""
    name = task.get("name")
    if name in QA_TABLES:
        return name
    if name == "generated":
        return "squad20" if str(task.get("version")) == "2.0" else "squad11"
    if name != "mrqa":
        raise NoRow(f"task {name} is none of the paper's (squad11, squad20, mrqa)")
    spelled = task_names(task).lower()
    found = [key for key, names in MRQA_NAMES.items() if any(n in spelled for n in names)]
    if len(found) != 1:
        raise NoRow(
            f"the MRQA set cannot be told from task.hub_subset or the file names ({spelled or 'none given'}): "
            f"Table 4 has {', '.join(MRQA_NAMES)}"
        )
    return found[0]


def task_names(task: dict) -> str:
    """What names a task's data in its config: the hub subset and the files' names (an MRQA set is told by them)."""
    names = [task.get("hub_subset")] + [
        Path(str(task[k])).name for k in ("train_file", "dev_file", "test_file") if task.get(k)
    ]
    return " ".join(dict.fromkeys(str(n) for n in names if n))


def finetune_setting(config: dict, metrics: dict, path: Path) -> str:
    source = pretrain_source(str(config["init_from"]), path) if config.get("init_from") else None
    pre = RunDir(source).config() if source else None
    weights = config["model"].get("init_from")
    if pre:
        size, corpus = model_size(pre["model"]), f"pre-trained on {corpus_text(pre['data'])}"
    elif weights:
        size, corpus = f"the weights of {weights}", f"pre-trained as {weights} was"
    else:
        size, corpus = model_size(config["model"]), "not pre-trained"
    trainer = config["trainer"]
    scale = (
        f"{size}; {metrics.get('step')} steps{status(metrics)} (max_epochs {trainer.get('max_epochs')}, max_steps "
        f"{trainer.get('max_steps')}); batch {metrics.get('batch_size')}, N={config['data'].get('max_seq_length')}"
    )
    return setting_text(trainer_hardware(trainer), scale, f"{corpus}; fine-tuned on {task_text(config['task'])}")


def heads_note(entry: dict) -> str:
    """The note of a row measured with heads other than its preset's, else ""."""
    if not other_heads(entry):
        return ""
    return f"heads {entry['heads']} (its preset's: {entry['preset_heads']})"


def other_blocks(model: str, entry: dict) -> str:
    """Why a block model measured with heads of another n than its preset's has no paper row (the paper's row of
    ``model`` is its preset's n), else ""."""
    if not other_heads(entry):
        return ""
    n, preset_n = len(parse_heads(entry["heads"])), len(parse_heads(entry["preset_heads"]))
    if n == preset_n:
        return ""
    return f"measured with heads {entry['heads']}, n={n}: the paper's {model} row is n={preset_n}"


def profile_report(paper: Paper, run: str, path: Path) -> RunReport:
    """Table 1: the O(N) and O(N²) parts in GB (A.2's estimate where the run has it: CUDA), and each block
    model's O(N²) part as a fraction of BERT's, the comparison that holds across sizes (the paper: 1/2, 1/3)."""
    result = RunDir(path).profile()
    a2 = any(entry.get("fit_a2") for entry in result["models"].values())
    prefix = "a2_" if a2 else ""
    report = RunReport(run, "profile", profile_setting(result, a2))
    quadratic = {}  # (model, N) -> (ours, paper) O(N²) part
    for name, entry in result["models"].items():
        model, missing = name.removesuffix("_eager"), []
        other_n = other_blocks(model, entry)
        if other_n:
            report.unmatched.append(Unmatched(run, "profile", with_heads(name, entry), other_n))
            continue
        for r in entry["rows"]:
            cells = paper.cells(1, model, r["seq_len"])
            if not cells:
                missing.append(str(r["seq_len"]))
            for cell in cells:
                ours = r[f"{prefix}{cell['metric']}_mb"] / 1024  # GiB; the paper does not say which GB it means
                note = f"ours: GiB, b={r['batch_size']}" + (
                    "" if r["batch_size"] == cell["row"]["batch"] else " (b differs)"
                )
                note = "; ".join(filter(None, [note, heads_note(entry)]))
                report.rows.append(compare(paper, cell, ours, run, name, note))
                if cell["metric"] == "quadratic_part":
                    quadratic[model, r["seq_len"]] = (ours, cell, name)
        if missing:
            known = paper.cells(1, model, 512) or paper.cells(1, model, 1024)
            reason = "Table 1 has N=512 and 1024 only" if known else f"Table 1 has rows for {paper.models_of(1)} only"
            report.unmatched.append(Unmatched(run, "profile", f"{name} at N={', '.join(missing)}", reason))
    report.rows += quadratic_ratios(paper, run, quadratic)
    return report


def quadratic_ratios(paper: Paper, run: str, quadratic: dict) -> list[Comparison]:
    """Each block model's O(N²) part ÷ the dense model's at the same N, ours beside the paper's."""
    rows = []
    for (model, length), (ours, cell, name) in quadratic.items():
        dense = quadratic.get(("roberta_1seq", length))
        if model == "roberta_1seq" or dense is None:
            continue
        ours_ratio = ours / dense[0] if dense[0] else None
        paper_ratio = cell["value"] / dense[1]["value"]
        label, note = f"{name} ÷ {dense[2]}", "a ratio within each side: comparable across sizes and hardware"
        row = paper.row_label(cell)
        rows.append(Comparison(1, row, "O(N²) ÷ BERT's", "×", ours_ratio, paper_ratio, run, label, note))
    return rows


def profile_setting(result: dict, a2: bool) -> str:
    size = result.get("size") or {}
    measure = "A.2 (peak allocated − model − optimizer)" if a2 else "tensors saved for backward (A.2 needs CUDA)"
    scale = (
        f"{model_size(size)}; b×N = {result.get('tokens_per_device')} "
        f"tokens per device; attention {result.get('attention_impl')}; activations: {measure}"
    )
    return setting_text(f"{result.get('device')}, {result.get('dtype')}", scale, "random token ids")


def benchmark_report(paper: Paper, run: str, path: Path) -> RunReport:
    """Table 5: inference seconds at B×1024 (not comparable across hardware) and, comparable, each BlockBert's
    time as a fraction of RoBERTa's within each side (the paper: n=2 saves 27.8 %, n=3 30.4 % at 8×1024)."""
    result = RunDir(path).benchmark()
    report = RunReport(run, "benchmark", benchmark_setting(result, path))
    if result.get("mode", "model") != "model":
        reason = (
            "the paper's Table 5 is models' inference time (benchmark mode=model); no table of the paper holds what "
            "this mode measures"
        )
        report.unmatched.append(Unmatched(run, "benchmark", f"mode={result.get('mode')}", reason))
        return report
    times, missing = {}, defaultdict(list)
    for r in result["records"]:
        model, point = r["model"].removesuffix("_eager"), (r["batch_size"], r["seq_len"])
        cells = paper.cells(5, model, r["seq_len"], r["batch_size"]) if r["phase"] == "inference" else []
        other_n = other_blocks(model, r)
        if not cells or other_n:
            reason = other_n or missing_reason(paper, r["model"], r["phase"])
            missing[with_heads(r["model"], r), r["phase"], reason].append(f"{point[0]}×{point[1]}")
            continue
        statistic = result.get("ratio_of", "median")  # a run before the setting: medians
        ours = r.get(f"{statistic}_s") if r.get("status") == "ok" else r.get("status")
        times[(r["model"], *point)] = (ours, cells[0])
        note = "; ".join(filter(None, [f"ours: {statistic} of {result.get('repeats')} runs", heads_note(r)]))
        report.rows.append(compare(paper, cells[0], ours, run, r["model"], note))
    for (name, phase, reason), points in missing.items():
        report.unmatched.append(Unmatched(run, "benchmark", f"{name} {phase} at {', '.join(points)}", reason))
    report.rows += time_ratios(paper, run, times)
    return report


def missing_reason(paper: Paper, name: str, phase: str) -> str:
    if phase != "inference":
        return "Table 5 times inference only"
    if not any(c["table"] == 5 and c["row"]["model"] == name.removesuffix("_eager") for c in paper.numbers):
        return f"Table 5 has rows for {paper.models_of(5)} only"
    return "Table 5 has 8, 16, 24 and 32 × 1024 only"


def time_ratios(paper: Paper, run: str, times: dict) -> list[Comparison]:
    """Each BlockBert's time ÷ each dense RoBERTa's of ours at the same point, beside the paper's."""
    rows = []
    for (name, batch, length), (ours, cell) in times.items():
        if name.removesuffix("_eager") == "roberta_1seq":
            continue
        for (dense, b, n), (dense_ours, dense_cell) in times.items():
            if (b, n) == (batch, length) and dense.removesuffix("_eager") == "roberta_1seq":
                row = time_ratio(paper, run, (name, ours, cell), (dense, dense_ours, dense_cell))
                if row.ours is not None or row.paper is not None:
                    rows.append(row)
    return rows


def time_ratio(paper: Paper, run: str, block: tuple, dense: tuple) -> Comparison:
    """(name, our time, paper cell) of a BlockBert and of a RoBERTa: the time ratio on each side."""
    (name, ours, cell), (dense_name, dense_ours, dense_cell) = block, dense
    row = Comparison(5, paper.row_label(cell), "time ÷ RoBERTa's", "×", None, None, run, f"{name} ÷ {dense_name}")
    row.note = "a ratio within each side"
    if is_number(ours) and is_number(dense_ours) and dense_ours:
        row.ours = ours / dense_ours
    if is_number(cell["value"]) and is_number(dense_cell["value"]):
        row.paper = cell["value"] / dense_cell["value"]
        row.note += f"; the paper's saving: {100 * (1 - row.paper):.1f} %"
    return row


def benchmark_setting(result: dict, path: Path) -> str:
    size = (RunDir(path).config() or {}).get("size") or {}
    scale = (
        f"{model_size(size) if size else 'sizes not recorded'}; {result.get('ratio_of', 'median')} of "
        f"{result.get('repeats')} runs after {result.get('warmup')} warm-up"
        + ("; the encoder alone (no LM head)" if result.get("lm_head") is False else "")
        + ("; stopped before its end: the rows it measured" if result.get("complete") is False else "")
    )
    hardware = (
        f"{result.get('machine')}, {result.get('device')}, {result.get('dtype')}, {result.get('threads')} threads"
    )
    return setting_text(hardware, scale, "random token ids")


READERS = {
    "pretrain": pretrain_report,
    "finetune": finetune_report,
    "profile": profile_report,
    "benchmark": benchmark_report,
}


# ---------------------------------------------------------------------------------------------------- outputs


def paper_report(directories: list[str], out_dir: Path | None = None) -> Path:
    """Compare every run in ``directories`` (run, sweep or multirun directories) with the paper; write
    paper_report.md, .csv and .png into ``out_dir`` (default: the first directory) and print the tables."""
    paper = load_paper()
    runs, skipped = runs_of(directories)
    reports = [READERS[kind](paper, label, path) for label, path, kind in runs]
    unmatched = skipped + [u for r in reports for u in r.unmatched]
    out_dir = Path(out_dir or directories[0]).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / OUTPUTS[0]).write_text(markdown(paper, reports, unmatched))
    write_csv(paper, reports, unmatched, out_dir / OUTPUTS[1])
    plot([row for r in reports for row in r.rows], out_dir / OUTPUTS[2])
    print_tables(paper, reports, unmatched)
    return out_dir


def by_table(reports: list[RunReport]) -> dict[int, list[RunReport]]:
    """{table: the runs with rows in it}, tables in order."""
    tables = defaultdict(list)
    for report in reports:
        for table in dict.fromkeys(row.table for row in report.rows):
            tables[table].append(report)
    return dict(sorted(tables.items()))


def fmt(value) -> str:
    if value is None:
        return "—"
    return f"{value:.4g}" if is_number(value) else str(value)


def metric_label(row: Comparison) -> str:
    """The paper's heading, with the unit unless the heading names it already (or it is a ratio, ×): the paper's
    "Training Time (day)" and "Memory (per GPU, GB)" carry theirs, which a second "(day)" or "(GB)" would repeat."""
    if not row.unit or row.unit == "×" or row.unit in re.split(r"[\s(),]+", row.metric):
        return row.metric
    return f"{row.metric} ({row.unit})"


HEADER = ["run", "our model", "paper row", "metric", "ours", "paper", "ours/paper", "note"]


def cells_of(row: Comparison) -> list[str]:
    ratio = "—" if row.ratio is None else f"{row.ratio:.3g}"
    return [row.run, row.model, row.row, metric_label(row), fmt(row.ours), fmt(row.paper), ratio, row.note]


def markdown(paper: Paper, reports: list[RunReport], unmatched: list[Unmatched]) -> str:
    lines = [
        "# Our runs beside the paper's numbers",
        "",
        "The paper's numbers: blockbert/experiments/paper_numbers.yaml. ours/paper compares like with like only where "
        "the "
        "settings under each table agree; times and memory on other hardware compare by the ratios within each side.",
    ]
    for table, runs in by_table(reports).items():
        lines += ["", f"## Table {table}: {paper.tables[table]['title']}", ""]
        lines += [_md_row(HEADER), _md_row(["---"] * len(HEADER))]
        lines += [_md_row(cells_of(row)) for r in runs for row in r.rows if row.table == table]
        lines += ["", "Settings:", "", f"- the paper: {paper.setting(table)}"]
        lines += [f"- ours (`{r.run}`, {r.kind}): {r.setting}" for r in runs]
    if unmatched:
        lines += ["", "## Unmatched: no paper row", "", _md_row(["run", "kind", "what", "why"]), _md_row(["---"] * 4)]
        lines += [_md_row([u.run, u.kind, u.what, u.reason]) for u in unmatched]
    return "\n".join(lines) + "\n"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


CSV_COLUMNS = [
    *("match", "table", "run", "kind", "model", "row", "metric", "unit", "ours", "paper", "ratio", "note"),
    *("paper_setting", "our_setting"),
]


def write_csv(paper: Paper, reports: list[RunReport], unmatched: list[Unmatched], path: Path) -> None:
    """One line per comparison (values unformatted, empty for —) and per unmatched item, each with its settings."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for report in reports:
            writer.writerows(csv_row(paper, report, row) for row in report.rows)
        for u in unmatched:
            writer.writerow(dict(match="unmatched", run=u.run, kind=u.kind, model=u.what, note=u.reason))


def csv_row(paper: Paper, report: RunReport, row: Comparison) -> dict:
    values = {k: "" if v is None else v for k, v in (("ours", row.ours), ("paper", row.paper), ("ratio", row.ratio))}
    return dict(
        match="matched",
        table=row.table,
        run=row.run,
        kind=report.kind,
        model=row.model,
        row=row.row,
        metric=row.metric,
        unit=row.unit,
        note=row.note,
        paper_setting=paper.setting(row.table),
        our_setting=report.setting,
        **values,
    )


def print_tables(paper: Paper, reports: list[RunReport], unmatched: list[Unmatched]) -> None:
    out = console()
    for table, runs in by_table(reports).items():
        caption = "\n".join([f"paper: {paper.setting(table)}", *(f"ours ({r.run}): {r.setting}" for r in runs)])
        rich_table = Table(title=f"Table {table}: {paper.tables[table]['title']}", caption=caption)
        for column in HEADER:
            rich_table.add_column(column, justify="right" if column in ("ours", "paper", "ours/paper") else "left")
        for row in (row for r in runs for row in r.rows if row.table == table):
            rich_table.add_row(*cells_of(row))
        out.print(rich_table)
    if unmatched:
        rich_table = Table(title="Unmatched: no paper row")
        for column in ("run", "kind", "what", "why"):
            rich_table.add_column(column)
        for u in unmatched:
            rich_table.add_row(u.run, u.kind, u.what, u.reason)
        out.print(rich_table)


def plot(rows: list[Comparison], path: Path) -> None:
    """Grouped bars, ours beside the paper's: one panel per table for values and one for ratios within each side
    (log scale where the values span more than a decade and a half)."""
    plt = pyplot()
    panels = defaultdict(list)
    for row in rows:
        if is_number(row.ours) and is_number(row.paper):
            panels[row.table, row.unit == "×"].append(row)
    panels = dict(sorted(panels.items()))
    width = max(6.0, 0.7 * max((len(p) for p in panels.values()), default=0) + 2)
    fig, axes = plt.subplots(max(1, len(panels)), 1, figsize=(width, 3.8 * max(1, len(panels))), squeeze=False)
    for ax, ((table, ratios), subset) in zip(axes[:, 0], panels.items()):
        bars(ax, subset)
        ax.set_title(f"Table {table}" + (": ratios within each side" if ratios else ""), fontsize=9)
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no row with numbers on both sides", ha="center", va="center")
        axes[0, 0].set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def bars(ax, rows: list[Comparison]) -> None:
    xs = range(len(rows))
    several_runs = len({r.run for r in rows}) > 1
    ax.bar([x - 0.2 for x in xs], [r.ours for r in rows], 0.4, label="ours")
    ax.bar([x + 0.2 for x in xs], [r.paper for r in rows], 0.4, label="paper")
    labels = [f"{r.run}: " * several_runs + f"{r.model}\n{r.row}\n{metric_label(r)}" for r in rows]
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=6, rotation=30, ha="right")
    ax.set_ylabel(", ".join(sorted({r.unit or "value" for r in rows})), fontsize=8)
    values = [v for r in rows for v in (r.ours, r.paper)]
    if min(values) > 0 and max(values) / min(values) > 30:
        ax.set_yscale("log")
    ax.legend(fontsize=7)
