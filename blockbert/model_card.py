"""The model card (README.md) that ``blockbert export`` writes beside the weights.

Hugging Face's format: YAML front matter (library_name, tags, pipeline_tag, datasets), then markdown: the
model class, the attention (kind, heads and n, N), the sizes, the data and task the run trained on, its
metrics (``metrics.json``), the command that made it (``.hydra/overrides.yaml``) and how to load it. Whatever
the run directory lacks, or cannot be read, is "not recorded": building the card never fails on a run's files.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import yaml

NOT_RECORDED = "not recorded"
HEAD_TASKS = {  # model class -> (what its head does, pipeline tag, Auto class)
    "BlockBertModel": ("the encoder alone (hidden states)", "feature-extraction", "AutoModel"),
    "BlockBertForMaskedLM": ("masked-LM pre-training", "fill-mask", "AutoModelForMaskedLM"),
    "BlockBertForPreTraining": ("masked LM + next-sentence prediction", "fill-mask", "AutoModelForPreTraining"),
    "BlockBertForQuestionAnswering": (
        "extractive question answering",
        "question-answering",
        "AutoModelForQuestionAnswering",
    ),
}


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None


def _get(tree, dotted: str):
    """``tree["a"]["b"]`` for ``"a.b"``; None where any part is missing."""
    for part in dotted.split("."):
        if not isinstance(tree, dict):
            return None
        tree = tree.get(part)
    return tree


def _names(value) -> list[str]:
    """A config value that is a name or a list of names (hub datasets), as a list of non-empty strings."""
    values = value if isinstance(value, list) else [value]
    return [str(v) for v in values if v not in (None, "")]


def _cell(value) -> str:
    """A value for a markdown table cell: numbers short, text on one line without pipes."""
    if isinstance(value, bool) or value is None:
        text = str(value)
    elif isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (int, str)):
        text = str(value)
    else:
        text = json.dumps(value)
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= 200 else text[:197] + "..."


def attention_text(config) -> str:
    if config.attention == "block":
        return (
            f"block: n={config.num_blocks} blocks of {config.block_size} positions, heads {config.heads} "
            f"(heads per shift: part k attends from block i to block (i + k) mod n)"
        )
    if config.attention == "sparse":
        return (
            f"sparse: Sparse Transformer fixed pattern, stride l={config.sparse_stride}, "
            f"expressivity c={config.sparse_expressivity}"
        )
    return "dense: full self-attention"


def data_text(hydra_config, command: str) -> str:
    """The corpus (pre-training) or the task's data (fine-tuning) from the run's Hydra config."""
    if not isinstance(hydra_config, dict):
        return NOT_RECORDED
    if command == "finetune":
        name = _get(hydra_config, "task.name")
        version, hub = _get(hydra_config, "task.version"), _names(_get(hydra_config, "task.hub_name"))
        train_file = _get(hydra_config, "task.train_file")
        detail = [f"version {version}" if version else "", f"hub: {', '.join(hub)}" if hub else ""]
        detail.append(f"train file: {train_file}" if train_file else "")
    else:
        name, source = _get(hydra_config, "data.name"), _get(hydra_config, "data.source")
        documents = _get(hydra_config, "data.generated_documents")
        hub, files = _names(_get(hydra_config, "data.hub_name")), _names(_get(hydra_config, "data.files"))
        if source == "generated" and documents:
            detail = [f"generated, {documents} documents"]
        elif source == "hub" and hub:
            detail = [f"hub: {', '.join(hub)}"]
        elif source == "files" and files:
            detail = [f"files: {', '.join(files)}"]
        else:
            detail = [str(source or "")]
        name = name or source
    if not name:
        return NOT_RECORDED
    detail = [d for d in detail if d and d != name]
    return f"{name} ({'; '.join(detail)})" if detail else str(name)


def _datasets(hydra_config, command: str) -> list[str]:
    """Hub dataset ids for the front matter."""
    if command == "finetune":
        return _names(_get(hydra_config, "task.hub_name"))
    return _names(_get(hydra_config, "data.hub_name")) if _get(hydra_config, "data.source") == "hub" else []


def model_card(model, run_dir: str | Path | None) -> str:
    """README.md text for ``model`` (a blockbert model) exported from the run directory ``run_dir``."""
    config = model.config
    class_name = type(model).__name__
    head, pipeline_tag, auto_class = HEAD_TASKS.get(class_name, (class_name, None, "AutoModel"))
    weights = set(model.state_dict())
    command = "finetune" if "qa.weight" in weights else "pretrain"
    run = Path(run_dir) if run_dir is not None else None
    metrics = _read_json(run / "metrics.json") if run is not None else None
    hydra_config = _read_yaml(run / ".hydra" / "config.yaml") if run is not None else None
    overrides = _read_yaml(run / ".hydra" / "overrides.yaml") if run is not None else None
    resumes = len(list((run / ".hydra").glob("resume-*"))) if run is not None else 0
    dense, block = config.attention == "dense", config.attention == "block"

    meta = {
        "library_name": "transformers" if dense else "blockbert",
        "tags": ["blockbert", f"{config.attention}-attention", "bert"],
    }
    if pipeline_tag:
        meta["pipeline_tag"] = pipeline_tag
    datasets = _datasets(hydra_config, command) if isinstance(hydra_config, dict) else []
    if datasets:
        meta["datasets"] = datasets

    if block:
        n_text = f"{config.attention_length} (block_seq_len: the length cut into the n blocks)"
    else:
        n_text = f"{config.max_sequence_length} (the longest sequence)"
    preset = _get(hydra_config, "model.name") or (metrics or {}).get("model")
    trained_length = _get(hydra_config, "data.max_seq_length")
    init_from = _get(hydra_config, "init_from" if command == "finetune" else "model.init_from")
    rows = [
        ("Model class", f"`{class_name}` ({head})"),
        ("Preset", preset or NOT_RECORDED),
        ("Attention", attention_text(config)),
        ("Heads", f"{config.num_heads} per layer" + (f", head config {config.heads}" if block else "")),
        ("n (blocks)", config.num_blocks),
        ("N", n_text),
        (
            "Sizes",
            f"{config.num_layers} layers, hidden {config.hidden_size}, {config.num_heads} heads, intermediate "
            f"{config.intermediate_size}, vocabulary {config.vocab_size}, {config.max_position_embeddings} positions",
        ),
        ("Trained by", f"`blockbert {command}`"),
        ("Data", data_text(hydra_config, command)),
        ("Training sequence length", trained_length or NOT_RECORDED),
    ]
    if init_from:
        rows.append(("Initialised from", init_from))

    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", ""]
    lines += [f"# BlockBERT {preset or ''}: {class_name}, {config.attention} attention".replace(" :", ":"), ""]
    lines += [
        f"A BlockBERT model (BERT with blockwise sparse self-attention, Qiu et al. 2020) exported by "
        f"`blockbert export` from a `blockbert {command}` run.",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {key} | {_cell(value)} |" for key, value in rows]

    lines += ["", "## Metrics", ""]
    shown = {k: v for k, v in (metrics or {}).items() if k != "run_dir"}
    if shown:
        lines += ["| metric | value |", "|---|---|"] + [f"| {_cell(k)} | {_cell(v)} |" for k, v in shown.items()]
    else:
        lines.append(f"{NOT_RECORDED} (the run directory has no readable metrics.json)")

    lines += ["", "## Command", ""]
    if isinstance(overrides, list):
        args = " ".join(shlex.quote(str(o)) for o in overrides)
        lines += ["```bash", f"blockbert {command} {args}".rstrip(), "```"]
        if resumes:
            lines += ["", f"Resumed {resumes} time(s): each resume's overrides are in .hydra/resume-K/overrides.yaml."]
    else:
        lines.append(f"{NOT_RECORDED} (the run directory has no readable .hydra/overrides.yaml)")

    lines += ["", "## How to load", ""]
    if dense:
        kind = "RoBERTa" if config.position_offset else "BERT"
        lines += [
            f"A plain Hugging Face {kind} directory: transformers alone loads it.",
            "",
            "```python",
            f"from transformers import {auto_class}",
            "",
            f'model = {auto_class}.from_pretrained("path/to/this/directory")',
            "```",
        ]
    else:
        lines += [
            f"{config.attention.capitalize()} attention needs the blockbert package: importing it registers its "
            "classes with transformers' Auto classes (no `trust_remote_code`).",
            "",
            "```python",
            "import blockbert  # noqa: F401",
            f"from transformers import {auto_class}",
            "",
            f'model = {auto_class}.from_pretrained("path/to/this/directory")',
            "```",
        ]
    lines += [
        "",
        "or with blockbert's own (plain PyTorch) classes:",
        "",
        "```python",
        f"from blockbert import {class_name}",
        "",
        f'model = {class_name}.from_pretrained("path/to/this/directory")',
        "```",
        "",
    ]
    return "\n".join(lines)
