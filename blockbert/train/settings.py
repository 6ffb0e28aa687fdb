"""A run's settings from its config: the model config, the batch arithmetic (B x N fixed, split over devices and
accumulation steps) and the one-line description of the model that a run logs."""

from __future__ import annotations

import dataclasses
import logging

from omegaconf import DictConfig, OmegaConf

from blockbert.errors import ConfigError
from blockbert.model.config import BlockBertConfig
from blockbert.model.modeling import UNPAD_BELOW_FILL
from blockbert.train.cluster import runs_on_gpu

log = logging.getLogger(__name__)


def model_config(model_cfg: DictConfig, **overrides) -> BlockBertConfig:
    """The model config of a ``model`` node (validated: a bad value fails in one line), with ``overrides``."""
    return BlockBertConfig.from_values(OmegaConf.to_container(model_cfg, resolve=True), **overrides)


def fresh_config(config: BlockBertConfig, tokenizer, seq_len: int) -> BlockBertConfig:
    """A model from scratch: ``config`` (model.*) with the tokenizer's vocabulary and N = data.max_seq_length, which
    block attention cuts into n blocks."""
    if len(tokenizer) != config.vocab_size:
        log.info("model.vocab_size follows the tokenizer: %d (config said %d)", len(tokenizer), config.vocab_size)
    return dataclasses.replace(
        config, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, block_seq_len=seq_len
    )


def describe_model(model) -> str:
    """One line for the log: the model class, its parameters, sizes and attention (Lightning's summary instead
    shows a FLOPs column that reads 0)."""
    config = model.config
    attention = config.attention
    if attention == "block":
        attention += f", heads {config.heads} (n={config.num_blocks}), blocks cut from N={config.block_seq_len}"
    elif attention == "sparse":
        attention += f", stride {config.sparse_stride}, expressivity {config.sparse_expressivity}"
    parameters = sum(p.numel() for p in model.parameters())
    return (
        f"model: {type(model).__name__}, {parameters / 1e6:.2f} M parameters, {config.num_layers} layers, hidden "
        f"{config.hidden_size}, {config.num_heads} heads, attention {attention}, layout {config.layout}"
        + (f" (a batch unpadded at <= {UNPAD_BELOW_FILL:.0%} real tokens)" if config.layout == "auto" else "")
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
    """The processes Lightning starts for ``trainer_cfg``: -1 or "auto" devices are every GPU when the accelerator
    is a GPU, or auto on a machine with CUDA (Lightning picks the GPU then), else one."""
    devices = trainer_cfg.devices
    if devices in (-1, "auto"):
        import torch

        devices = torch.cuda.device_count() if runs_on_gpu(trainer_cfg.accelerator) else 1
    if isinstance(devices, str):  # "0,1" or "2"
        parts = [d for d in devices.split(",") if d.strip()]
        count = len(parts) if len(parts) > 1 or not parts[0].strip().isdigit() else int(parts[0])
    elif isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        count = len(devices)
    else:
        count = int(devices)
    return max(1, count) * int(trainer_cfg.get("num_nodes", 1))
