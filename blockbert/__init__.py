"""BlockBERT: BERT with blockwise sparse self-attention (Qiu et al., 2020)."""

from .config import BlockBertConfig, ConfigError, parse_heads
from .model import (
    BlockBertForMaskedLM,
    BlockBertForPreTraining,
    BlockBertForQuestionAnswering,
    BlockBertModel,
)
from .presets import PRESETS, preset_config

__all__ = [
    "BlockBertConfig",
    "ConfigError",
    "parse_heads",
    "BlockBertModel",
    "BlockBertForMaskedLM",
    "BlockBertForPreTraining",
    "BlockBertForQuestionAnswering",
    "PRESETS",
    "preset_config",
]
