"""What the training entry points share: the model config from Hydra, starting from a checkpoint without the
demo's settings, the paper-row checks, batch arithmetic and the model's one-line description."""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from blockbert.checkpoints import pretrained_length
from blockbert.config import BlockBertConfig, ConfigError

log = logging.getLogger(__name__)


def model_config(model_cfg: DictConfig, **overrides) -> dict:
    """The BlockBertConfig fields of a ``model`` node (validated), with ``overrides`` applied."""
    names = {f.name for f in fields(BlockBertConfig) if f.init}
    values = {k: v for k, v in OmegaConf.to_container(model_cfg, resolve=True).items() if k in names}
    values.update(overrides)
    BlockBertConfig(**values)  # fail fast with a one-line ConfigError
    return values


def without_demo_defaults(cfg: DictConfig, command: str) -> DictConfig:
    """A run that starts from a checkpoint (``init_from``, ``model.init_from``) under the default experiment, the CPU
    demo ``tiny``, is composed again without it: the paper's values (A.1 for pretrain, A.4 for finetune: learning
    rate, schedule, steps) and the dense ``roberta_1seq`` model settings, whose heads fit any checkpoint, with
    the user's overrides still applied. The demo's lr 1e-3 and 300-step cap would wreck a pretrained model. And
    fine-tuning from a blockbert run (``init_from``) runs at the N it was pre-trained at, as the paper does, unless
    ``data.max_seq_length`` is given on the command line. What changed is logged, and the run's
    .hydra/config.yaml holds the config it really uses."""
    from hydra.core.hydra_config import HydraConfig

    if not (cfg.get("init_from") or cfg.model.get("init_from")) or not HydraConfig.initialized():
        return cfg
    hydra = HydraConfig.get()
    overrides = list(hydra.overrides.task)
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    demo = hydra.runtime.choices.get("experiment") == "tiny" and "experiment" not in given
    length = pretrained_length(cfg.init_from) if cfg.get("init_from") and "data.max_seq_length" not in given else None
    if not demo and length in (None, cfg.data.max_seq_length):
        return cfg  # an experiment the user chose stays
    from hydra import compose

    from blockbert.convert import ARCH_OVERRIDES
    from blockbert.tasks.launch import job_config_dir

    extra = ([f"data.max_seq_length={length}"] if length else []) + (["~experiment"] if demo else [])
    chosen = compose(config_name=hydra.job.config_name, overrides=[*overrides, *extra])
    # the model's sizes come from the checkpoint; from model.* only its attention settings count (import_model)
    ignored = {"paper", "model"} if cfg.get("init_from") else {"paper"}
    before, after = _leaves(cfg), _leaves(chosen)
    changed = [
        f"{key}: {before.get(key)!r} -> {after.get(key)!r}"
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
        and key.split(".")[0] not in ignored
        and (not key.startswith("model.") or key.removeprefix("model.") in ARCH_OVERRIDES)
    ]
    log.info(
        "starting from a checkpoint: %s; changed: %s",
        f"the paper's values ({'A.1' if command == 'pretrain' else 'A.4'}), not the CPU demo's (experiment=tiny), "
        "with your overrides"
        if demo
        else "at the pre-training N",
        "; ".join(changed) or "nothing",
    )
    saved = job_config_dir(Path(hydra.runtime.output_dir)) / "config.yaml"
    if rank_zero_only.rank == 0 and saved.is_file():
        saved.write_text(
            "# composed again: the run starts from a checkpoint (see its log)\n" + OmegaConf.to_yaml(chosen)
        )
    return chosen


def given_on_command_line(key: str) -> bool:
    """Whether the command line set ``key`` (``model.heads=...``); True outside a Hydra job (nothing to tell)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return True
    return any(o.split("=", 1)[0].lstrip("+~") == key for o in HydraConfig.get().overrides.task)


def _leaves(cfg: DictConfig) -> dict:
    """{dotted key: value} of a config's leaves (interpolations resolved)."""

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    return dict(walk(OmegaConf.to_container(cfg, resolve=True), ""))


def check_paper_row(cfg: DictConfig, command: str) -> None:
    """For ``experiment=<paper row>``: refuse to pre-train a row the paper never pre-trained (the official Google
    BERT checkpoint), and warn in one line when the row runs on the tiny generated data, whose numbers cannot be
    compared with the paper's."""
    paper = cfg.get("paper")
    if not paper:
        return
    from hydra.core.hydra_config import HydraConfig

    name = HydraConfig.get().runtime.choices.get("experiment") if HydraConfig.initialized() else None
    row = f"the paper's {paper.row} row (Tables {paper.tables})"
    row = f"experiment={name}, {row}," if name else row
    if command == "pretrain" and not paper.pretrained:
        raise ConfigError(
            f"{row} is an official checkpoint, which the paper fine-tunes and never pre-trains: "
            "fine-tune it with blockbert finetune, or pre-train the BERT-style MLM + NSP model as "
            "experiment=roberta_2seq_512"
        )
    toy = (command == "pretrain" and cfg.data.source in ("generated", "longrange")) or (
        command == "finetune" and cfg.task.name == "generated"
    )
    if toy:
        real = (
            "data=wiki_book (or your copy of the corpus)" if command == "pretrain" else "task=squad11, squad20 or mrqa"
        )
        log.warning(
            "%s runs on the tiny generated %s: its results are not comparable with the paper's; give %s",
            row,
            "corpus" if command == "pretrain" else "QA set",
            real,
        )


def describe_model(model) -> str:
    """One line for the log: the model class, its parameters, sizes and attention (Lightning's summary instead
    shows a FLOPs column that reads 0)."""
    config = model.config
    attention = config.attention
    if attention == "block":
        attention += f", heads {config.heads} (n={config.num_blocks}), blocks cut from N={config.attention_length}"
    elif attention == "sparse":
        attention += f", stride {config.sparse_stride}, expressivity {config.sparse_expressivity}"
    parameters = sum(p.numel() for p in model.parameters())
    return (
        f"model: {type(model).__name__}, {parameters / 1e6:.2f} M parameters, {config.num_layers} layers, hidden "
        f"{config.hidden_size}, {config.num_heads} heads, attention {attention}"
    )


def derive_batch(tokens_per_batch: int, seq_len: int, per_device: int, world_size: int) -> tuple[int, int, int]:
    """(global batch B, per-device batch, gradient accumulation) with B x N = tokens_per_batch."""
    if tokens_per_batch % seq_len:
        raise ConfigError(
            f"tokens_per_batch={tokens_per_batch} is not a multiple of max_seq_length={seq_len}: "
            f"choose a multiple such as {max(1, tokens_per_batch // seq_len) * seq_len}"
        )
    batch = tokens_per_batch // seq_len
    return (batch, *split_batch(batch, per_device, world_size))


def split_batch(batch: int, per_device: int, world_size: int) -> tuple[int, int]:
    """(per-device batch, gradient accumulation) for a global batch of ``batch`` sequences; the per-device
    batch is at most ``per_device`` (the memory limit) and divides the batch exactly."""
    if per_device < 1:
        raise ConfigError(f"data.per_device_batch_size={per_device} must be at least 1")
    if batch % world_size:
        raise ConfigError(
            f"the batch of {batch} sequences does not split over {world_size} devices: "
            "choose the batch size or devices so that it does"
        )
    per_device = min(per_device, batch // world_size)
    while (batch // world_size) % per_device:
        per_device -= 1
    return per_device, batch // world_size // per_device


def world_size(trainer_cfg: DictConfig) -> int:
    devices = trainer_cfg.devices
    if devices in (-1, "auto"):
        import torch

        devices = torch.cuda.device_count() if trainer_cfg.accelerator in ("gpu", "cuda") else 1
    if isinstance(devices, str):  # "0,1" or "2"
        parts = [d for d in devices.split(",") if d.strip()]
        count = len(parts) if len(parts) > 1 or not parts[0].strip().isdigit() else int(parts[0])
    elif isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        count = len(devices)
    else:
        count = int(devices)
    return max(1, count) * int(trainer_cfg.get("num_nodes", 1))
