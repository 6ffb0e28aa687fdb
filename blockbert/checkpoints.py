"""Loading blockbert checkpoints and runs: tensors and plain data only, and one line naming the file on failure.

Unpickling runs whatever code a file carries, so every checkpoint is read with ``torch.load(weights_only=True)``,
which builds tensors and plain containers only and refuses anything else. Lightning's checkpoints of our modules
hold nothing else (the hyper-parameters are plain dicts; ``tests/test_safe_loading.py`` checks real pretrain and
finetune checkpoints), so no other type is allow-listed.
"""

from __future__ import annotations

import logging
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

from blockbert.config import BlockBertConfig, ConfigError

log = logging.getLogger(__name__)

EXPECTED = "expected a checkpoint of `blockbert pretrain` or `blockbert finetune`"


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


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """The Lightning checkpoint at ``path`` (a dict with ``state_dict`` and ``global_step``); see :func:`torch_load`."""
    state = torch_load(path, mmap)
    if not isinstance(state, dict) or "global_step" not in state or not isinstance(state.get("state_dict"), dict):
        what = f"a dict with keys {_some(state)}" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise CheckpointError(f"{path} is not a Lightning checkpoint (it holds {what}): {EXPECTED}")
    return state


def _some(keys, count: int = 3) -> str:
    names = [repr(str(k)[:40]) for k in list(keys)[:count]]
    return ", ".join(names) + (", ..." if len(keys) > count else "") if names else "(none)"


def checkpoint_step(path: str | Path) -> int:
    """The ``global_step`` of a checkpoint, read without loading its tensors."""
    return int(load_checkpoint(path, mmap=True)["global_step"])


def load_run(run: str) -> tuple[Path, dict, dict]:
    """(checkpoint path, model config, model weights) of a blockbert run directory or checkpoint file."""
    path = Path(run).expanduser()
    ckpt = path / "checkpoints" / "last.ckpt" if path.is_dir() else path
    if not ckpt.is_file():
        raise FileNotFoundError(
            f"{run!r}: no checkpoint (expected a blockbert run directory with checkpoints/last.ckpt, or a .ckpt file)"
        )
    state = load_checkpoint(ckpt, mmap=True)
    hyper = state.get("hyper_parameters")
    config = hyper.get("model_config") if isinstance(hyper, dict) else None
    if not isinstance(config, dict):
        raise CheckpointError(f"{ckpt} is not a blockbert checkpoint (no hyper_parameters.model_config): {EXPECTED}")
    try:
        BlockBertConfig(**config)
    except (TypeError, ConfigError) as err:
        raise CheckpointError(f"{ckpt}: hyper_parameters.model_config is not a blockbert model config: {err}") from None
    # copies, so that no tensor keeps the file mapped (it may be rewritten, by a run resumed in its directory)
    weights = {
        k[len("model.") :]: v.clone()
        for k, v in state["state_dict"].items()
        if k.startswith("model.") and isinstance(v, torch.Tensor)
    }
    if not weights:
        raise CheckpointError(f"{ckpt} has no model weights (no 'model.*' entry in its state_dict): {EXPECTED}")
    log.info("loaded %s (step %s)", ckpt, state["global_step"])
    return ckpt, config, weights
