"""The paper's six pre-training models (BERT-base sizes) and a tiny one for tests and CPU demos, each defined once:
by its file ``conf/model/<name>.yaml``, composed here as the commands compose it (:mod:`blockbert.formats.compose`),
on first use of each."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from omegaconf import OmegaConf

from blockbert.errors import ConfigError
from blockbert.formats.compose import compose
from blockbert.model.config import BlockBertConfig, parse_heads
from blockbert.paths import config_dir


@dataclass(frozen=True)
class Preset:
    description: str  # the first comment line of its file
    values: dict  # the composed model node (BlockBertConfig fields, name, init_from, next_sentence_prediction)
    next_sentence_prediction: bool  # MLM + NSP (BlockBertForPreTraining) or MLM only

    @property
    def config(self) -> BlockBertConfig:
        return BlockBertConfig.from_values(self.values)


@functools.cache
def _load(name: str) -> Preset:
    path = config_dir() / "model" / f"{name}.yaml"
    description = next(
        (line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")), ""
    )
    values = OmegaConf.to_container(compose(None, [f"+model={name}"]).model, resolve=True)
    return Preset(description, values, bool(values.get("next_sentence_prediction", False)))


class _Presets(Mapping):
    """{name: Preset} of the files in conf/model, each composed when first looked up."""

    def _names(self) -> list[str]:
        return sorted(path.stem for path in (config_dir() / "model").glob("*.yaml"))

    def __getitem__(self, name: str) -> Preset:
        if name not in self._names():
            raise KeyError(name)
        return _load(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


PRESETS: Mapping[str, Preset] = _Presets()


def preset_config(name: str, **overrides) -> BlockBertConfig:
    """The named preset's config with fields replaced by ``overrides``, built once from the preset's values, so
    that a block model's N follows overridden positions as it does in a run's config."""
    if name not in PRESETS:
        raise ConfigError(f"model preset {name!r} is unknown: accepted are {', '.join(PRESETS)}")
    unknown = sorted(set(overrides) - set(BlockBertConfig().to_dict()))
    if unknown:
        raise ConfigError(f"preset_config({name!r}): {', '.join(unknown)} is not a BlockBertConfig field")
    return BlockBertConfig.from_values(PRESETS[name].values, **overrides)


def other_heads(record: dict) -> bool:
    """Whether a measured model's record (profile.json's model entry, a benchmark.json record: ``heads``,
    ``preset_heads``) says it ran with heads other than its preset's."""
    heads, preset = record.get("heads"), record.get("preset_heads")
    return bool(heads and preset) and parse_heads(heads) != parse_heads(preset)


def with_heads(name: str, record: dict) -> str:
    """A measured model's name as tables show it: with its heads where they are not its preset's
    (``blockbert_n3 (heads 9:3)``)."""
    return f"{name} (heads {record['heads']})" if other_heads(record) else name
