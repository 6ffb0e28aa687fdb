"""Every `blockbert ...` command in the code blocks of the README and docs/ does what it says: Hydra commands compose
(`--cfg job`, one job per value of a `-m` list) into a valid model config, sweeps plan their jobs (`--dry-run`), and the
commands that need files parse their arguments and options. Run in this process, so the whole README takes
seconds; the commands themselves run in the other tests."""

import re
import shlex
import shutil
from pathlib import Path

import pytest
import typer
import yaml
from omegaconf import OmegaConf
from typer.testing import CliRunner

from blockbert.train.settings import model_config
from cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
HYDRA_COMMANDS = ("pretrain", "finetune", "profile", "benchmark")
FILE_COMMANDS = ("evaluate", "report", "export")


def readme_commands(pages=PAGES) -> list[str]:
    """The `blockbert` commands of the pages' bash code blocks (continuations joined, `a && b` split)."""
    commands = []
    blocks = [block for page in pages for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S)]
    for block in blocks:
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            commands += [part.strip() for part in line.split("&&") if part.strip().startswith("blockbert ")]
    return commands


def one_job_each(args: list[str]) -> list[list[str]]:
    """A multirun's overrides as single runs: one per value of each comma list, the other lists at their first."""
    if "-m" not in args and "--multirun" not in args:
        return [args]
    args = [a for a in args if a not in ("-m", "--multirun")]
    swept = [i for i, a in enumerate(args) if "," in a.partition("=")[2] and "[" not in a]
    first = [a.split(",")[0] if i in swept else a for i, a in enumerate(args)]
    runs = [
        [*first[:i], f"{args[i].split('=')[0]}={value}", *first[i + 1 :]]
        for i in swept
        for value in args[i].partition("=")[2].split(",")
    ]
    return runs or [args]


def finished_sweep(directory: Path, checkpoints: Path) -> Path:
    """A pre-training sweep directory with one finished job (what `finetune_each --from` reads), its ``checkpoints``
    those of a run (each job's config is completed from its checkpoint, in a dry run too)."""
    (directory / "0" / ".hydra").mkdir(parents=True, exist_ok=True)
    shutil.copytree(checkpoints, directory / "0" / "checkpoints", dirs_exist_ok=True)
    (directory / "0" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["model.heads=10:1:1"]))
    (directory / "0" / "done.json").write_text("{}")
    (directory / "sweep.yaml").write_text(
        yaml.safe_dump({"name": "heads_n3", "metric": "val/best_ppl", "grid": {"model.heads": ["10:1:1"]}})
    )
    return directory


COMMANDS = readme_commands()


def test_the_readme_has_the_commands_of_every_kind():
    kinds = {shlex.split(c, comments=True)[1] for c in readme_commands([README])}
    assert set(HYDRA_COMMANDS) | {"sweep", "plan", *FILE_COMMANDS} <= kinds, kinds


def test_the_readme_is_a_front_door():
    """At most 250 lines, what BlockBERT is near the top; the measurements live in docs/."""
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert text.index("## What BlockBERT is") < text.index("## Set up a fresh machine")
    assert "(docs/results.md)" in text and "| model |" not in text


BERT_BASE = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
}


def stand_ins(tmp_path: Path, monkeypatch) -> None:
    """What the pages' placeholders name, as far as composing a command reads them (the checkpoint's config): a
    `blockbert pretrain` run (runs/pretrain/<date_time>), a Hugging Face BERT directory (path/to/...), and the hub's
    models (their config.json, as if cached)."""
    import json

    import torch

    from blockbert import preset_config
    from blockbert.formats import convert

    config = preset_config("blockbert_n2", max_position_embeddings=1024, heads="9:3").to_dict()
    run = tmp_path / "runs" / "pretrain" / "2026-01-01_00-00-00" / "checkpoints"
    run.mkdir(parents=True)
    torch.save({"global_step": 1, "state_dict": {}, "hyper_parameters": {"model_config": config}}, run / "last.ckpt")
    hf = tmp_path / "path" / "to" / "bert-base-uncased"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text(json.dumps(BERT_BASE))
    monkeypatch.setattr(convert, "_is_hub_name", lambda path: False)  # a hub name reads its (cached) config.json
    hub = tmp_path / "google-bert" / "bert-base-uncased"
    hub.mkdir(parents=True)
    (hub / "config.json").write_text(json.dumps(BERT_BASE))


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_does_what_it_says(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BLOCKBERT_CACHE", str(tmp_path / "cache"))
    stand_ins(tmp_path, monkeypatch)
    args = shlex.split(command.replace("<date_time>", "2026-01-01_00-00-00"), comments=True)[1:]
    name = args[0]
    if name in FILE_COMMANDS:
        typer.main.get_command(app).get_command(None, name).make_context(name, args[1:])  # raises on a bad option
        return
    runner = CliRunner()
    if name == "plan":  # its options parse, and its overrides compose the run it plans (the plan runs in test_plan)
        context = typer.main.get_command(app).get_command(None, name).make_context(name, args[1:])
        overrides, command = context.params["overrides"] or [], context.params["command"] or "pretrain"
        result = runner.invoke(app, [command, *overrides, "--cfg", "job"])
        assert result.exit_code == 0, result.output
        return
    if name == "sweep":
        if "--from" in args:
            run = tmp_path / "runs" / "pretrain" / "2026-01-01_00-00-00"  # stand_ins's
            args[args.index("--from") + 1] = str(finished_sweep(tmp_path / "pretrained", run / "checkpoints"))
        result = runner.invoke(app, [*args, "--dry-run"] if "--dry-run" not in args else args)
        assert result.exit_code == 0, result.output
        assert re.search(r"sweep \S+: \d+ \w+ jobs? \(fixed", result.output), result.output  # the plan
        return
    assert name in HYDRA_COMMANDS, command
    for run in one_job_each(args):
        result = runner.invoke(app, [*(a for a in run if a not in ("--cfg", "job")), "--cfg", "job"])
        assert result.exit_code == 0, result.output
        cfg = yaml.safe_load(result.output)
        if name in ("pretrain", "finetune"):
            model_config(OmegaConf.create(cfg["model"]))  # a valid model, heads included


def test_the_laptop_step_count_is_the_demos_everywhere():
    """The laptop form of a sweep (README, docs, the help, the sweep files) runs the CPU demo's own step count."""
    tiny = yaml.safe_load((ROOT / "conf" / "experiment" / "tiny.yaml").read_text())["trainer"]["max_steps"]
    texts = [ROOT / "README.md", ROOT / "cli.py", *(ROOT / "docs").glob("*.md"), *(ROOT / "sweeps").glob("*.yaml")]
    found = [
        int(m) for path in texts for m in re.findall(r"experiment=tiny .*?trainer\.max_steps=(\d+)", path.read_text())
    ]
    assert found and set(found) == {tiny}


def our_choice_labels() -> set[str]:
    """What conf/ labels "our choice": a key of a primary config (``data.max_query_length``) or a group's option
    (``trainer=gpu``: a comment of its file, or one of its keys)."""
    labels = set()
    for path in sorted((ROOT / "conf").rglob("*.yaml")):
        group = path.parent.relative_to(ROOT / "conf").as_posix()
        parents: list[tuple[int, str]] = []
        for line in path.read_text().splitlines():
            key = re.match(r"^(\s*)([A-Za-z_]\w*):", line)
            if key:
                indent = len(key.group(1))
                parents = [(i, k) for i, k in parents if i < indent] + [(indent, key.group(2))]
            if "our choice" not in line.lower():
                continue
            if group == ".":  # a primary config: its key, or its header (a general remark)
                if key:
                    labels.add(".".join(k for _, k in parents))
            else:
                labels.add(f"{group}={path.stem}")
    return labels


def test_what_we_chose_in_the_docs_and_the_our_choice_labels_of_conf_agree():
    text = (ROOT / "docs" / "paper.md").read_text()
    table = text[text.index("## What the paper states, and what we chose") :]
    table = table[: table.index("\n## ")] if "\n## " in table else table
    named = {
        token
        for row in table.splitlines()
        if row.startswith("| ") and not row.startswith("| setting")
        for token in re.findall(r"`([^`]+)`", row.split("|")[1])
        if re.fullmatch(r"[a-z_]+(\.[a-z_]+)+|[a-z_]+=[a-z0-9_]+", token)
    }
    labels = our_choice_labels()
    assert labels and labels <= named, f"labelled in conf/ but not in docs/paper.md: {sorted(labels - named)}"
    assert named <= labels, f"in docs/paper.md but not labelled in conf/: {sorted(named - labels)}"
