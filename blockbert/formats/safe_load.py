"""Reading weights without running code: every file of weights blockbert reads goes through here.

Unpickling runs whatever code a file carries, so a PyTorch file is read with ``torch.load(weights_only=True)``,
which builds tensors and plain containers only and refuses anything else; ``model.safetensors`` holds tensors
only. Any failure is one line naming the file (:class:`CheckpointError`).
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

from blockbert.errors import ConfigError


class CheckpointError(ConfigError):
    """A file cannot be used as a blockbert checkpoint; the message is one line naming it.

    ``unsafe``: the file holds Python objects that ``weights_only`` refuses (possibly code), as opposed to a
    corrupt or truncated file; a caller choosing among checkpoints must not pass over it silently."""

    def __init__(self, message: str, unsafe: bool = False):
        super().__init__(message)
        self.unsafe = unsafe


def torch_load(path: str | Path, mmap: bool = False):
    """What ``torch.save`` wrote to ``path``, on the CPU, if it is tensors and plain data only.

    ``mmap``: map the tensors from the file instead of reading them (zip-format files, which torch.save writes
    since 1.6), so that reading a few fields of a large checkpoint is cheap."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns about a pickle protocol it then refuses anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except OSError as err:
        raise CheckpointError(f"{path} cannot be read: {err.strerror or err}") from None
    except pickle.UnpicklingError as err:
        refused = re.search(r"GLOBAL ([\w.]+)", str(err))  # torch names the first global it refused
        if refused:
            raise CheckpointError(
                f"{path}: refused: it holds Python objects other than tensors and plain data "
                f"({refused.group(1)}); blockbert loads checkpoints with weights_only=True",
                unsafe=True,
            ) from None
        raise CheckpointError(_unreadable(path, err)) from None
    except Exception as err:  # noqa: BLE001 -- damaged data fails anywhere in torch.load (RuntimeError, EOFError, ...)
        raise CheckpointError(_unreadable(path, err)) from None


def _unreadable(path: Path, err: Exception) -> str:
    text = str(err)
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = detail.group(1) if detail else re.split(r"(?<=[a-z])\. ", text.strip().split("\n")[0])[0]
    reason = f"{type(err).__name__}: {reason[:120]}" if reason else type(err).__name__
    return f"{path} is not a readable PyTorch file: it is corrupt, truncated or not written by torch.save ({reason})"


def read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{path} is not a readable safetensors file: it is corrupt or truncated ({err})"
        ) from None
