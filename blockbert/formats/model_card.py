"""The model card (README.md) that ``blockbert export`` writes beside the weights.

Hugging Face's format, written with ``huggingface_hub``'s :class:`ModelCard`: metadata (:class:`ModelCardData`:
library_name, tags, pipeline_tag, and datasets only when the run read hub datasets), then markdown: the model class,
the preset (the run's ``model.name`` only when the model still is that preset: else the attention and heads say what
it is), the attention (kind, heads and n, N), the sizes, the checkpoint and step the weights are, the data and task
the run trained on (hub datasets, or "local files: ..."), its metrics (``metrics.json``: see :meth:`Card.metrics`),
the commands that made it (``.hydra/overrides.yaml``, then each resume's ``.hydra/resume-K/overrides.yaml``) and how
to load it, read through :class:`~blockbert.formats.run_dir.RunDir` (the config the run last used:
:meth:`~blockbert.formats.run_dir.RunDir.config`). Whatever the run directory lacks, or cannot be read, is
"not recorded": building the card never fails on a run's files.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from blockbert.display import counted
from blockbert.formats.run_dir import RunDir
from blockbert.model.config import BlockBertConfig

NOT_RECORDED = "not recorded"
# what the card's metrics table shows of metrics.json: the step and the model's quality ("val/ppl", "dev/f1"...), not
# the optimizer's state (lr-AdamW/pg1), the speed (train/tokens_per_s), the epoch, nor the settings it also records
# (batch_size, init_from, ...), which the card's other rows give
QUALITY_PREFIXES = ("val/", "dev/", "test/")
QUALITY_NAMES = ("train/loss",)
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


def model_text(config) -> str:
    """The attention kind and heads: what a model is when no preset names it."""
    if config.attention == "block":
        return f"block attention, n={config.num_blocks}, heads {config.heads} ({config.num_heads} heads)"
    if config.attention == "sparse":
        stride, expressivity = config.sparse_stride, config.sparse_expressivity
        return f"sparse attention (l={stride}, c={expressivity}), {config.num_heads} heads"
    return f"dense attention, {config.num_heads} heads"


def _architecture(config: BlockBertConfig, nsp: bool | None) -> dict:
    """What a preset fixes of a model: attention, heads and sizes (the vocabulary follows the tokenizer, the
    positions the sequence length: a preset's name still describes a model with other ones)."""
    values = {
        "attention": config.attention,
        "num_layers": config.num_layers,
        "hidden_size": config.hidden_size,
        "num_heads": config.num_heads,
        "intermediate_size": config.intermediate_size or 4 * config.hidden_size,
        "next_sentence_prediction": nsp,
    }
    if config.attention == "block":
        values["heads"] = ":".join(str(int(part)) for part in str(config.heads).split(":"))
    if config.attention == "sparse":
        values |= {"sparse_stride": config.sparse_stride, "sparse_expressivity": config.sparse_expressivity}
    return values


def _files(values: dict) -> str:
    """``local files: a, b`` of the paths given (a name or a list each), empty without any."""
    paths = [path for value in values.values() for path in _names(value)]
    return f"local files: {', '.join(paths)}" if paths else ""


def data_text(hydra_config, command: str) -> str:
    """The corpus (pre-training) or the task's data (fine-tuning) from the run's Hydra config: hub datasets only
    when the run read them (pre-training: ``data.source=hub``; fine-tuning: no ``task.train_file``), local files by
    their paths."""
    if not isinstance(hydra_config, dict):
        return NOT_RECORDED
    if command == "finetune":
        name, version = _get(hydra_config, "task.name"), _get(hydra_config, "task.version")
        train_file = _get(hydra_config, "task.train_file")
        hub = [] if train_file else _names(_get(hydra_config, "task.hub_name"))
        subset = _get(hydra_config, "task.hub_subset") or _get(hydra_config, "task.hub_config")
        questions = _get(hydra_config, "task.generated_questions")
        detail = [f"version {version}" if version else "", f"hub: {', '.join(hub)}" if hub else ""]
        detail.append(f"subset {subset}" if hub and subset else "")
        splits = ("train", "dev", "test")
        detail.append(_files({split: _get(hydra_config, f"task.{split}_file") for split in splits}))
        if not hub and not train_file and questions and name == "generated":
            detail.append(f"generated, {questions} questions")
    else:
        name, source = _get(hydra_config, "data.name"), _get(hydra_config, "data.source")
        documents = _get(hydra_config, "data.generated_documents")
        hub, files = _names(_get(hydra_config, "data.hub_name")), _get(hydra_config, "data.files")
        if source == "generated" and documents:
            detail = [f"generated, {documents} documents"]
        elif source == "hub" and hub:
            config = _get(hydra_config, "data.hub_config")
            detail = [f"hub: {', '.join(hub)}", f"config {config}" if config else ""]
        elif source == "files" and _names(files):
            detail = [_files({"files": files})]
        else:
            detail = [str(source or "")]
        name = name or source
    if not name:
        return NOT_RECORDED
    detail = [d for d in detail if d and d != name]
    return f"{name} ({'; '.join(detail)})" if detail else str(name)


def _datasets(hydra_config, command: str) -> list[str]:
    """Hub dataset ids for the metadata: only those the run trained on (never for local files)."""
    if command == "finetune":
        return [] if _get(hydra_config, "task.train_file") else _names(_get(hydra_config, "task.hub_name"))
    return _names(_get(hydra_config, "data.hub_name")) if _get(hydra_config, "data.source") == "hub" else []


def model_card(
    model, run_dir: str | Path | None, presets: Mapping | None = None, checkpoint: Path | None = None, step=None
) -> str:
    """README.md text for ``model`` (a blockbert model) exported from the run directory ``run_dir``.

    ``presets``: ``{name: preset}`` (:data:`blockbert.formats.presets.PRESETS`: a preset's ``config`` is its
    :class:`BlockBertConfig`) to check the run's ``model.name`` against; without them, or when the model is not
    that preset's (``model.init_from``, other heads or sizes), the card names no preset.
    ``checkpoint``, ``step``: the file the weights were read from and its ``global_step``; with ``step``, the run's
    metrics are shown only when they are that step's (:meth:`Card.metrics`)."""
    return str(build_model_card(model, run_dir, presets, checkpoint, step))


def build_model_card(
    model, run_dir: str | Path | None, presets: Mapping | None = None, checkpoint: Path | None = None, step=None
) -> ModelCard:
    """:func:`model_card` as a ``huggingface_hub`` :class:`ModelCard` (``.data``: the metadata, ``.text``)."""
    run = RunDir(run_dir) if run_dir is not None else None
    card = Card(model, run, presets, checkpoint, step)
    body = card.summary() + card.metrics() + card.command() + card.how_to_load()
    return ModelCard(f"---\n{card.card_data().to_yaml()}\n---\n\n" + "\n".join(body))


class Card:
    """What the card says of a model and the run it came from (missing or unreadable files: "not recorded")."""

    def __init__(self, model, run: RunDir | None, presets: Mapping | None = None, checkpoint=None, step=None):
        self.model, self.config = model, model.config
        self.checkpoint, self.step = (Path(checkpoint) if checkpoint is not None else None), step
        self.class_name = type(model).__name__
        self.head, self.pipeline_tag, self.auto_class = HEAD_TASKS.get(
            self.class_name, (self.class_name, None, "AutoModel")
        )
        self.trained_by = "finetune" if "qa.weight" in model.state_dict() else "pretrain"
        self.run = run
        self.hydra_config = (run.config() or run.started_config()) if run is not None else None
        self.metrics_values = (run.metrics() or None) if run is not None else None
        self.model_name = _get(self.hydra_config, "model.name") or (self.metrics_values or {}).get("model")
        self.preset, self.not_preset = self._preset(presets)

    def _preset(self, presets: Mapping | None) -> tuple[str | None, str]:
        """(the preset that describes the model, or None; why the run's ``model.name`` does not)."""
        name = self.model_name
        if not name:
            return None, NOT_RECORDED
        if presets is None:
            return None, f"not checked (the run's model.name: {name})"
        nsp = {"BlockBertForMaskedLM": False, "BlockBertForPreTraining": True}.get(self.class_name)
        try:
            preset = presets[name]
            expected = _architecture(preset.config, nsp if nsp is None else preset.next_sentence_prediction)
        except Exception:  # noqa: BLE001 -- no such preset (a --config-dir of the run's), or one that does not load
            return None, f"none (the run's model.name {name!r} is not a preset here)"
        differs = [
            f"{key} {value}" + (f" (preset: {expected[key]})" if key in expected else "")
            for key, value in _architecture(self.config, nsp).items()
            if value != expected.get(key)
        ]
        if not differs:
            return str(name), ""
        return None, f"none (the run's model.name {name!r} does not describe it: {', '.join(differs)})"

    def card_data(self) -> ModelCardData:
        tags = ["blockbert", f"{self.config.attention}-attention", "bert"]
        datasets = _datasets(self.hydra_config, self.trained_by) if isinstance(self.hydra_config, dict) else []
        return ModelCardData(
            library_name="transformers" if self.config.attention == "dense" else "blockbert",
            tags=tags,
            pipeline_tag=self.pipeline_tag,
            datasets=datasets or None,
        )

    def summary(self) -> list[str]:
        config = self.config
        block = config.attention == "block"
        if block:
            n_text = f"{config.block_seq_len} (block_seq_len: the length cut into the n blocks)"
        else:
            n_text = f"{config.max_sequence_length} (the longest sequence)"
        init_from = _get(self.hydra_config, "model.init_from")  # a Hugging Face checkpoint, for either command
        if self.trained_by == "finetune":
            init_from = _get(self.hydra_config, "init_from") or init_from  # a blockbert run
        rows = [
            ("Model class", f"`{self.class_name}` ({self.head})"),
            ("Preset", self.preset or self.not_preset),
            ("Attention", attention_text(config)),
            ("Heads", f"{config.num_heads} per layer" + (f", head config {config.heads}" if block else "")),
            ("n (blocks)", config.num_blocks),
            ("N", n_text),
            (
                "Sizes",
                f"{config.num_layers} layers, hidden {config.hidden_size}, {config.num_heads} heads, intermediate "
                f"{config.intermediate_size}, vocabulary {config.vocab_size}, {config.max_position_embeddings} "
                "positions",
            ),
            ("Trained by", f"`blockbert {self.trained_by}`"),
            ("Data", data_text(self.hydra_config, self.trained_by)),
            ("Training sequence length", _get(self.hydra_config, "data.max_seq_length") or NOT_RECORDED),
        ]
        if init_from:
            rows.append(("Initialised from", init_from))
        if self.step is not None:
            rows.append(("Weights", self.weights_text()))
        what = f"{config.attention} attention" if self.preset else model_text(config)
        title = f"# BlockBERT {self.preset or ''}: {self.class_name}, {what}".replace(" :", ":")
        return [
            title,
            "",
            "A BlockBERT model (BERT with blockwise sparse self-attention, Qiu et al. 2020) exported by "
            f"`blockbert export` from a `blockbert {self.trained_by}` run.",
            "",
            "| | |",
            "|---|---|",
            *(f"| {key} | {_cell(value)} |" for key, value in rows),
        ]

    def weights_text(self) -> str:
        """The checkpoint (relative to the run directory: no local paths on a card) and step of the weights."""
        name = NOT_RECORDED if self.checkpoint is None else self.checkpoint.name
        if self.checkpoint is not None and self.run is not None and self.checkpoint.is_relative_to(self.run.path):
            name = str(self.checkpoint.relative_to(self.run.path))
        return f"step {self.step} ({name})"

    def metrics(self) -> list[str]:
        """The run's status, then its quality metrics and their step: only when metrics.json's step is the step of
        the weights (``self.step``, when known). A checkpoint of another step (an earlier step-K.ckpt) gets a line
        saying that the run's latest metrics are not these weights' and no table: metrics.json holds the latest
        values only, and a table beside weights of another step would describe a model that is not this one."""
        lines = ["", "## Metrics", ""]
        values = self.metrics_values or {}
        if not values:
            return lines + [f"{NOT_RECORDED} (the run directory has no readable metrics.json)"]
        lines += self.status_lines()
        recorded = values.get("step")
        if self.step is not None and recorded != self.step:
            latest = f"step {recorded}" if recorded is not None else "step not recorded"
            return lines + [
                f"The run's latest metrics (metrics.json, {latest}) are not those of these weights (step "
                f"{self.step}): not shown."
            ]
        shown = {"step": recorded} if recorded is not None else {}
        shown |= {
            k: v
            for k, v in values.items()
            if (k.startswith(QUALITY_PREFIXES) or k in QUALITY_NAMES) and "/best_" not in k  # best: of another step
        }
        rows = [f"| {_cell(k)} | {_cell(v)} |" for k, v in shown.items()]
        return lines + ["| metric | value |", "|---|---|", *rows]

    def status_lines(self) -> list[str]:
        """The run's status (metrics.json): a run still training is said loudly (its weights and metrics will
        change)."""
        status = (self.metrics_values or {}).get("status")
        if status is None:
            return []
        if status == "running":
            return ["**The run was still training when it was exported** (metrics.json: status running; or it was "
                    "killed): these weights and metrics are not its final ones.", ""]  # fmt: skip
        return [f"Run status: {_cell(status)} (metrics.json).", ""]

    def command(self) -> list[str]:
        """The command the run was started with, then each resume's (a resume may change max_steps, or more)."""
        lines = ["", "## Command", ""]
        overrides = self.run.overrides() if self.run is not None else None
        if overrides is None:
            return lines + [f"{NOT_RECORDED} (the run directory has no readable .hydra/overrides.yaml)"]
        resumes = self.run.resume_overrides()
        if not resumes:
            return lines + ["```bash", self.command_line(overrides), "```"]
        commands = [f"# started\n{self.command_line(overrides)}"]
        commands += [f"# resumed ({k})\n{self.command_line(o)}" for k, o in enumerate(resumes, 1)]
        intro = f"Started with the first command, then resumed {counted(len(resumes), 'time')} in the same directory:"
        return lines + [intro, "", "```bash", *commands, "```"]

    def command_line(self, overrides: list | None) -> str:
        if overrides is None:
            return f"# {NOT_RECORDED} (unreadable overrides.yaml)"
        args = " ".join(shlex.quote(str(o)) for o in overrides)
        return f"blockbert {self.trained_by} {args}".rstrip()

    def how_to_load(self) -> list[str]:
        config, auto_class = self.config, self.auto_class
        if config.attention == "dense":
            kind = "RoBERTa" if config.position_offset else "BERT"
            lines = ["", "## How to load", "", f"A plain Hugging Face {kind} directory: transformers alone loads it."]
            imports = []
        else:
            lines = [
                "",
                "## How to load",
                "",
                f"{config.attention.capitalize()} attention needs the blockbert package: importing it registers its "
                "classes with transformers' Auto classes (no `trust_remote_code`).",
            ]
            imports = ["import blockbert  # noqa: F401"]
        lines += ["", "```python", *imports, f"from transformers import {auto_class}", ""]
        lines += [f'model = {auto_class}.from_pretrained("path/to/this/directory")', "```", ""]
        lines += ["or with blockbert's own (plain PyTorch) classes:", "", "```python"]
        lines += [f"from blockbert import {self.class_name}", ""]
        return lines + [f'model = {self.class_name}.from_pretrained("path/to/this/directory")', "```", ""]
