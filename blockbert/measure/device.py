"""Where a measurement runs: the device and precision asked for, the autocast of that precision, and the header
every measurement records (device, machine, threads, torch version, date)."""

from __future__ import annotations

import contextlib
import platform
from datetime import datetime, timezone

import torch

from blockbert.errors import ConfigError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device(name: str) -> torch.device:
    """``device=``: auto (a CUDA GPU where there is one, else the CPU), cpu, cuda or cuda:K; refused in one line if
    unknown or absent here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name!r} is unknown: accepted are auto, cpu, cuda, cuda:K")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        found = f"CUDA GPUs 0 to {count - 1}" if count else "no CUDA GPU"
        raise ConfigError(f"device={name}: this machine has {found} (torch {torch.__version__}): use device=auto, cpu")
    return device


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: float16 (autocast) on CUDA, as the paper measured, float32 on CPU."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"dtype={name!r} is unknown: accepted are auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def autocast_for(dtype: torch.dtype | None, device: torch.device):
    """The autocast every measurement runs its steps under: to ``dtype`` on ``device``; none for float32 or no
    dtype (full precision needs no autocast)."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


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
