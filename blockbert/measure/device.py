"""Where a measurement runs: the device and precision asked for, and the header every measurement records (device,
machine, threads, torch version, date)."""

from __future__ import annotations

import platform
from datetime import datetime, timezone

import torch

from blockbert.errors import ConfigError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: float16 (autocast) on CUDA, as the paper measured, float32 on CPU."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"dtype={name!r} is unknown: accepted are auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def where(device: torch.device) -> dict:
    """The device, machine, threads, torch version and date a measurement ran on (benchmark.json's header)."""
    return {
        "device": str(device),
        "machine": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }
