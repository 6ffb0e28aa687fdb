"""BlockBERT: BERT with blockwise sparse self-attention (Qiu et al., 2020)."""

import importlib

from .config import BlockBertConfig, ConfigError, parse_heads

_LAZY = {
    "BlockBertModel": ".model",
    "BlockBertForMaskedLM": ".model",
    "BlockBertForPreTraining": ".model",
    "BlockBertForQuestionAnswering": ".model",
    "PRESETS": ".presets",
    "preset_config": ".presets",
}

__all__ = ["BlockBertConfig", "ConfigError", "parse_heads", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
