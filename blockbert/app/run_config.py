"""The config a training job runs with, decided in its entry point: composed again when the run starts from a
checkpoint (without the demo's settings, at the pre-training N), what the command line gave, and the paper-row
checks. Composition itself is :mod:`blockbert.formats.compose`'s."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from blockbert.errors import ConfigError
from blockbert.formats.compose import compose, override_key
from blockbert.formats.convert import ARCH_OVERRIDES
from blockbert.formats.run_dir import RunDir

log = logging.getLogger(__name__)


def without_demo_defaults(cfg: DictConfig, command: str, pretrained_n: int | None = None) -> DictConfig:
    """A run that starts from a checkpoint (``init_from``, ``model.init_from``) under the default experiment, the CPU
    demo ``tiny``, is composed again without it: the paper's values (A.1 for pretrain, A.4 for finetune: learning
    rate, schedule, steps) and the dense ``roberta_1seq`` model settings, whose heads fit any checkpoint, with
    the user's overrides still applied. The demo's lr 1e-3 and 300-step cap would wreck a pretrained model. And
    fine-tuning from a blockbert run (``init_from``, pre-trained at ``pretrained_n``) runs at that N, as the paper
    does, unless ``data.max_seq_length`` is given on the command line. What changed is logged, and the run's
    .hydra/config.yaml holds the config it really uses."""
    from hydra.core.hydra_config import HydraConfig

    if not (cfg.get("init_from") or cfg.model.get("init_from")) or not HydraConfig.initialized():
        return cfg
    hydra = HydraConfig.get()
    overrides = list(hydra.overrides.task)
    given = {override_key(o) for o in overrides}
    demo = hydra.runtime.choices.get("experiment") == "tiny" and "experiment" not in given
    length = pretrained_n if "data.max_seq_length" not in given else None
    if not demo and length in (None, cfg.data.max_seq_length):
        return cfg  # an experiment the user chose stays
    extra = ([f"data.max_seq_length={length}"] if length else []) + (["~experiment"] if demo else [])
    config_dirs = [source.path for source in hydra.runtime.config_sources if source.provider == "command-line"]
    chosen = compose(hydra.job.config_name, [*overrides, *extra], config_dirs)
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
    saved = RunDir(hydra.runtime.output_dir).config_file()
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
    return any(override_key(o) == key for o in HydraConfig.get().overrides.task)


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
