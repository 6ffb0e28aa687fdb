"""What every training task shares: model config from Hydra, batch arithmetic, loggers, metrics.json."""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import string
from dataclasses import fields
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.trainer.states import TrainerStatus
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from blockbert.config import BlockBertConfig, ConfigError

log = logging.getLogger(__name__)

LOGGER_KINDS = ("wandb", "csv", "none")


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


def pretrained_length(run: str) -> int | None:
    """N of a blockbert pre-training run (directory or checkpoint): the length its blocks were cut from; None
    when the checkpoint holds no model config (loading it reports that, in one line)."""
    from blockbert.checkpoints import load_checkpoint

    path = Path(run).expanduser()
    path = path / "checkpoints" / "last.ckpt" if path.is_dir() else path
    if not path.is_file():
        return None  # loading the run reports it, naming init_from
    state = load_checkpoint(path, mmap=True)
    config = (state.get("hyper_parameters") or {}).get("model_config")
    return BlockBertConfig(**config).attention_length if isinstance(config, dict) else None


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
    toy = (command == "pretrain" and cfg.data.source == "generated") or (
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


def build_logger(cfg: DictConfig, run_dir: Path):
    kind = cfg.logger.kind
    if kind == "none":
        return False
    if kind == "csv":
        return pl.loggers.CSVLogger(save_dir=str(run_dir), name="csv")
    if kind == "wandb":
        mode = os.environ.get("WANDB_MODE", cfg.logger.mode)
        if mode == "disabled":
            return False
        from pytorch_lightning.loggers import WandbLogger

        # The run's W&B id is chosen before W&B starts and kept in the run directory: a resumed run (offline
        # or online) continues the same W&B run, and `wandb sync` joins the offline pieces in time order.
        id_file = run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else ""
        if not run_id:
            run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's form
            if rank_zero_only.rank == 0:
                run_dir.mkdir(parents=True, exist_ok=True)
                id_file.write_text(run_id + "\n")
        return WandbLogger(
            save_dir=os.environ.get("WANDB_DIR") or str(run_dir),
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            group=cfg.logger.group,
            offline=mode == "offline",
            mode=mode,
            id=run_id,
            resume="allow",
            config=OmegaConf.to_container(cfg, resolve=True),
        )
    raise ConfigError(f"logger.kind={kind!r} is unknown: accepted are {', '.join(LOGGER_KINDS)}")


def jsonable(value):
    try:
        value = value.item()
    except AttributeError:
        pass
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsJson(pl.Callback):
    """Keep RUN_DIR/metrics.json current: flat JSON of the latest logged metrics, the step and the status
    (running, finished, interrupted, failed), written at every validation and every checkpoint.

    A run that fails or is stopped before it trained a step changes only the status (and the error) of
    the file an earlier run wrote: progress recorded there is never replaced by an emptier state."""

    def __init__(self, path: Path, extra: dict):
        self.path, self.extra = Path(path), extra
        self.start_step: int | None = None
        self.finished = False

    def write(self, trainer: pl.Trainer, status: str, error: str | None = None, latest: bool = False) -> None:
        """``latest``: the trainer's metrics are newer than the file's even without a new training step (the
        closing validation): they are merged into it."""
        if trainer.global_rank != 0:
            return
        old = json.loads(self.path.read_text()) if self.path.is_file() else None
        if old is not None and not latest and (self.start_step is None or trainer.global_step <= self.start_step):
            metrics = old  # no newer training state to record than what is there
        else:
            metrics = {**(old or {}), **{k: jsonable(v) for k, v in trainer.callback_metrics.items()}}
            metrics.update(step=trainer.global_step, epoch=trainer.current_epoch)
        metrics.update(self.extra, status=status)
        if error is None:
            metrics.pop("error", None)
        else:
            metrics["error"] = error
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path)

    def on_train_start(self, trainer, pl_module):
        self.start_step, self.finished = trainer.global_step, False

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.write(trainer, "running")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.state.status == TrainerStatus.RUNNING:  # not the on-exception checkpoint
            self.write(trainer, "finished" if self.finished else "running")  # Lightning saves in on_train_end too

    def on_train_end(self, trainer, pl_module):
        self.finished = True
        self.write(trainer, "finished")

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            self.write(trainer, "interrupted")
        else:
            self.write(trainer, "failed", f"{type(exception).__name__}: {exception}".splitlines()[0][:500])


def run_tokenizer(run_dir: Path):
    """The tokenizer a run saved in RUN_DIR/tokenizer (a trained WordPiece is not reproducible: a resumed run
    must read the ids it trained on)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(run_dir / "tokenizer"))


def import_model(model_cls, model_cfg: DictConfig, seq_len: int):
    """(config dict, state dict, tokenizer) from ``model.init_from``: a Hugging Face BERT/RoBERTa directory
    or hub name. Sizes and vocabulary come from the checkpoint; attention settings from ``model``."""
    from transformers import AutoTokenizer

    from blockbert.convert import ARCH_OVERRIDES, import_weights

    overrides = {k: model_cfg[k] for k in ARCH_OVERRIDES if k in model_cfg}
    config, state, directory = import_weights(
        model_cls, model_cfg.init_from, max_position_embeddings=seq_len, **overrides
    )
    log.info(
        "model.init_from=%s: %d layers, hidden %d, vocab %d, attention %s (the checkpoint's sizes win over model.*)",
        model_cfg.init_from,
        config.num_layers,
        config.hidden_size,
        config.vocab_size,
        config.attention,
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"model.init_from={model_cfg.init_from!r}: no tokenizer files in {directory}") from err
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(
            f"model.init_from={model_cfg.init_from!r}: the tokenizer has {len(tokenizer)} tokens but the "
            f"model's vocab_size is {config.vocab_size}"
        )
    return config.to_dict(), state, tokenizer
