"""The paper's six pre-training models (BERT-base sizes) and a tiny one for tests and CPU demos, each defined once:
by its file ``conf/model/<name>.yaml``, which the commands compose with Hydra and :func:`preset_config` reads here.

A model file may start from others through its ``defaults`` list (``- roberta_1seq``, then ``_self_``); that is
the only part of Hydra's composition the model files use, and the only one resolved here (Hydra itself is not
imported: this module is used beside the pure-torch model)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from omegaconf import DictConfig, OmegaConf

from .config import BlockBertConfig, ConfigError
from .paths import config_dir


@dataclass(frozen=True)
class Preset:
    description: str  # the first comment line of its file
    config: BlockBertConfig
    next_sentence_prediction: bool  # MLM + NSP (BlockBertForPreTraining) or MLM only


def _compose(name: str) -> DictConfig:
    """``conf/model/<name>.yaml`` with the files of its defaults list merged in order (``_self_`` last if absent)."""
    node = OmegaConf.load(config_dir() / "model" / f"{name}.yaml")
    defaults = list(node.pop("defaults", []))
    if "_self_" not in defaults:
        defaults.append("_self_")
    merged = OmegaConf.create()
    for item in defaults:
        merged = OmegaConf.merge(merged, node if item == "_self_" else _compose(item))
    return merged


def _load(name: str) -> Preset:
    path = config_dir() / "model" / f"{name}.yaml"
    description = next(
        (line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")), ""
    )
    values = OmegaConf.to_container(_compose(name), resolve=True)
    names = {f.name for f in fields(BlockBertConfig) if f.init}
    config = BlockBertConfig(**{k: v for k, v in values.items() if k in names})
    return Preset(description, config, bool(values.get("next_sentence_prediction", False)))


PRESETS: dict[str, Preset] = {path.stem: _load(path.stem) for path in sorted((config_dir() / "model").glob("*.yaml"))}


def preset_config(name: str, **overrides) -> BlockBertConfig:
    """The named preset's config, with fields replaced by ``overrides`` (validated again)."""
    if name not in PRESETS:
        raise ConfigError(f"model preset {name!r} is unknown: accepted are {', '.join(PRESETS)}")
    return replace(PRESETS[name].config, **overrides)
