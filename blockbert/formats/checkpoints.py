"""Every way a run or a checkpoint is loaded: Lightning checkpoints, run directories (the model, its tokenizer) and
Hugging Face checkpoints to start from (``model.init_from``).
Tensors and plain data only (:mod:`blockbert.formats.safe_load`), and one line naming the file on failure.

Lightning's checkpoints of our modules hold nothing but tensors and plain data (the hyper-parameters are plain
dicts; ``tests/test_safe_loading.py`` checks real pretrain and finetune checkpoints), so no type is allow-listed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from blockbert.errors import ConfigError
from blockbert.formats.pretrained import model_class_for
from blockbert.formats.run_dir import RunDir, SweepDir, checkpoint_of
from blockbert.formats.safe_load import CheckpointError, torch_load
from blockbert.model.config import ATTENTION_SETTINGS, BlockBertConfig

log = logging.getLogger(__name__)
NO_CHECKPOINT = "expected a blockbert run directory with checkpoints/*.ckpt, or a .ckpt file"

EXPECTED = "expected a checkpoint of `blockbert pretrain` or `blockbert finetune`"


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


def newest_checkpoint(run: RunDir) -> tuple[tuple[int, Path] | None, list[tuple[Path, CheckpointError]]]:
    """((step, path) of the readable checkpoint with the most steps, or None; the unreadable ones with why): the
    checkpoint a resume continues from, so also the one an export or ``init_from`` of a run directory reads (an
    interrupted run's interrupted.ckpt is newer than its last.ckpt). Ties go to the newest file.
    An unsafe candidate (code in the pickle) raises: it must not be passed over silently."""
    readable, unreadable = [], []
    for path in run.checkpoint_candidates():
        try:
            readable.append((checkpoint_step(path), path.stat().st_mtime, path))
        except CheckpointError as err:
            if err.unsafe:
                raise
            unreadable.append((path, err))
    if not readable:
        return None, unreadable
    step, _, path = max(readable)
    return (step, path), unreadable


def run_checkpoint(run: str | Path) -> Path:
    """The checkpoint a run directory's weights are read from (:func:`newest_checkpoint`, its last.ckpt when it has
    none), or the checkpoint file given. Unreadable candidates are passed over with a warning naming them; when none
    is readable, the first one's error says why."""
    directory, ckpt = checkpoint_of(run)
    if not Path(run).expanduser().is_dir():
        return ckpt
    newest, unreadable = newest_checkpoint(directory)
    if newest is None:
        if unreadable:
            raise unreadable[0][1]
        return ckpt
    for bad, err in unreadable:
        log.warning("%s cannot be read (%s): reading %s (step %d) instead", bad, err, newest[1], newest[0])
    return newest[1]


def run_model_config(run: str) -> dict:
    """The model config (:class:`BlockBertConfig`'s fields) a blockbert run directory or checkpoint file holds, read
    without copying its weights."""
    return _model_config(*_run_checkpoint(run, "; a Hugging Face model (hub name) goes to model.init_from"))


def _run_checkpoint(run: str, missing_hint: str = "") -> tuple[Path, dict]:
    """(the run's newest checkpoint, its contents); ``missing_hint`` ends the line refusing a path that does not
    exist (``init_from``'s: where a hub name goes)."""
    directory, ckpt = checkpoint_of(run)[0], run_checkpoint(run)
    if not ckpt.is_file():
        if (directory.path / "config.json").is_file() or (Path(run).expanduser() / "config.json").is_file():
            raise FileNotFoundError(
                f"{run!r} is a Hugging Face model directory, not a blockbert run: start from it with "
                f"model.init_from={run} (init_from takes a `blockbert pretrain` run directory or .ckpt file)"
            )
        given = Path(run).expanduser()
        jobs = [str(job.path) for job in SweepDir(given).jobs()] if given.is_dir() else []
        if jobs:
            shown = ", ".join(jobs[:3]) + (", ..." if jobs[3:] else "")
            raise FileNotFoundError(
                f"{run!r} is a sweep or multirun directory: give one of its jobs' directories ({shown})"
            )
        if not given.exists():  # said "no checkpoint", as if the directory were there
            raise FileNotFoundError(f"{run!r} does not exist ({NO_CHECKPOINT}{missing_hint})")
        raise FileNotFoundError(f"{run!r}: no checkpoint ({NO_CHECKPOINT})")
    return ckpt, load_checkpoint(ckpt, mmap=True)


def _model_config(ckpt: Path, state: dict) -> dict:
    hyper = state.get("hyper_parameters")
    config = hyper.get("model_config") if isinstance(hyper, dict) else None
    if not isinstance(config, dict):
        raise CheckpointError(f"{ckpt} is not a blockbert checkpoint (no hyper_parameters.model_config): {EXPECTED}")
    try:
        BlockBertConfig.from_values(config)  # keys of a newer version are left out, as an export's are
    except (TypeError, ConfigError) as err:
        raise CheckpointError(f"{ckpt}: hyper_parameters.model_config is not a blockbert model config: {err}") from None
    return config


def load_run(run: str) -> tuple[Path, dict, dict]:
    """(checkpoint path, model config, model weights) of a blockbert run directory or checkpoint file."""
    ckpt, _, config, weights = _load_run(run)
    return ckpt, config, weights


def _load_run(run: str) -> tuple[Path, int, dict, dict]:
    """:func:`load_run` with the checkpoint's step, read from the same load as its weights (a run still training
    rewrites its files)."""
    ckpt, state = _run_checkpoint(run)
    config = _model_config(ckpt, state)
    # copies, so that no tensor keeps the file mapped (it may be rewritten, by a run resumed in its directory)
    weights = {
        k[len("model.") :]: v.clone()
        for k, v in state["state_dict"].items()
        if k.startswith("model.") and isinstance(v, torch.Tensor)
    }
    if not weights:
        raise CheckpointError(f"{ckpt} has no model weights (no 'model.*' entry in its state_dict): {EXPECTED}")
    log.info("loaded %s (step %s)", ckpt, state["global_step"])
    return ckpt, int(state["global_step"]), config, weights


def model_from_run(run: str):
    """(the model, its run directory) of a `blockbert pretrain` or `finetune` run directory (or checkpoint file):
    a :mod:`blockbert.formats.pretrained` class, so that ``save_pretrained`` works on it."""
    model, directory, _, _ = model_and_checkpoint(run)
    return model, directory


def model_and_checkpoint(run: str) -> tuple[object, RunDir, Path, int]:
    """:func:`model_from_run` with the checkpoint its weights are (:func:`run_checkpoint`) and its step: what an
    export says it exported, and the step its model card describes."""
    ckpt, step, config, weights = _load_run(run)
    model = model_class_for(weights)(BlockBertConfig.from_values(config))
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:  # torch lists every bad key over many lines: keep the first
        detail = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
        raise CheckpointError(f"{ckpt}: the weights do not fit its model_config ({detail[:200]})") from None
    return model, checkpoint_of(run)[0], ckpt, step


def load_pretrain_run(init_from: str) -> tuple[BlockBertConfig, dict, object]:
    """(model config, encoder weights, tokenizer) from a `blockbert pretrain` run directory or checkpoint."""
    ckpt, config, weights = load_run(init_from)
    encoder = {k[len("encoder.") :]: v for k, v in weights.items() if k.startswith("encoder.")}
    run = checkpoint_of(init_from)[0]
    if not run.has_tokenizer():
        raise FileNotFoundError(f"init_from={init_from!r}: no tokenizer/ next to {ckpt.parent}")
    log.info("fine-tuning from %s", ckpt)
    return BlockBertConfig.from_values(config), encoder, run_tokenizer(run)


def run_tokenizer(run: RunDir):
    """The tokenizer a run saved in its tokenizer/ (a trained WordPiece is not reproducible: a resumed run must read
    the ids it trained on)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(run.tokenizer_dir))


def import_model(model_cls, model_cfg, seq_len: int, heads_given: bool = True):
    """(config, state dict, tokenizer) from ``model.init_from``: a Hugging Face BERT/RoBERTa directory
    or hub name. Sizes and vocabulary come from the checkpoint; attention settings from ``model``. Unless
    ``heads_given`` (the user set ``model.heads``: it must fit), a block head split written for another head count
    is scaled to the checkpoint's heads (``10:2`` -> ``13:3`` for 16 heads)."""
    from transformers import AutoTokenizer, BertConfig

    from blockbert.formats.convert import import_weights, read_config

    overrides = {k: model_cfg[k] for k in ATTENTION_SETTINGS if k in model_cfg}
    config, state, directory = import_weights(
        model_cls, model_cfg.init_from, fit_heads=not heads_given, max_position_embeddings=seq_len, **overrides
    )
    log.info(
        "model.init_from=%s: %d layers, hidden %d, vocab %d, attention %s (the checkpoint's sizes win over model.*)",
        model_cfg.init_from,
        config.num_layers,
        config.hidden_size,
        config.vocab_size,
        config.attention,
    )
    # a blockbert export's config is not transformers' (the command skips registering it): the tokenizer is read
    # from its own files, without transformers' warning that a "blockbert" config builds a model of another type
    own = {"config": BertConfig()} if read_config(directory)["model_type"] == "blockbert" else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), **own)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"model.init_from={model_cfg.init_from!r}: no tokenizer files in {directory}") from err
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(
            f"model.init_from={model_cfg.init_from!r}: the tokenizer has {len(tokenizer)} tokens but the "
            f"model's vocab_size is {config.vocab_size}"
        )
    return config, state, tokenizer
