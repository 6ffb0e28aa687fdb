"""BlockBERT: BERT with blockwise sparse self-attention (Qiu et al., 2020).

The public API: the config (:mod:`blockbert.model.config`), the model classes with ``from_pretrained`` and
``save_pretrained`` (:mod:`blockbert.formats.pretrained`), the paper's presets (:mod:`blockbert.formats.presets`) and
a run's trained model (:func:`blockbert.formats.checkpoints.model_from_run`).
The model classes and presets are loaded on first use through the module ``__getattr__`` (PEP 562), so
``from blockbert import BlockBertModel`` works as before; with ``BLOCKBERT_CLI=1`` (the command line) importing
the package loads only the config, no torch.

The package is layered, each layer importing only from those below it (import-linter contracts in pyproject.toml):
``errors``/``paths`` -> ``model`` -> ``formats`` | ``data`` -> ``eval`` -> ``train`` -> ``measure`` ->
``experiments`` -> ``app`` (the README's "Layout" says what each holds). ``eval`` holds the scorers, plain functions
below the fine-tuning run that calls them at every validation.

``import blockbert`` also registers blockbert's config and model classes with transformers' Auto classes
(:func:`blockbert.formats.hf_auto.register_auto_classes`), so ``AutoModel.from_pretrained(<block/sparse export>)`` works
without ``trust_remote_code``. That imports torch and transformers, which the ``blockbert`` command line does
not want for its start-up time: it sets ``BLOCKBERT_CLI=1``, and with that variable set to "1" the registration
is skipped (call ``blockbert.formats.hf_auto.register_auto_classes()`` to do it later). Without transformers installed
the registration is skipped silently; should it fail otherwise (an incompatible transformers), the import
warns and goes on.
"""

import importlib
import os

from blockbert.errors import ConfigError
from blockbert.model.config import BlockBertConfig, parse_heads

_LAZY = {
    "BlockBertModel": "blockbert.formats.pretrained",
    "BlockBertForMaskedLM": "blockbert.formats.pretrained",
    "BlockBertForPreTraining": "blockbert.formats.pretrained",
    "BlockBertForQuestionAnswering": "blockbert.formats.pretrained",
    "PRESETS": "blockbert.formats.presets",
    "preset_config": "blockbert.formats.presets",
    "model_from_run": "blockbert.formats.checkpoints",
}

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
    "model_from_run",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups do not come here
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


def _register_with_transformers() -> None:
    if os.environ.get("BLOCKBERT_CLI") == "1":
        return
    try:
        import transformers  # noqa: F401 -- only to know whether it is there
    except ImportError:
        return
    try:
        from blockbert.formats.hf_auto import register_auto_classes

        register_auto_classes()
    except Exception as err:  # noqa: BLE001 -- an optional convenience must not break the import
        import warnings

        warnings.warn(
            f"blockbert: transformers' Auto classes were not registered ({type(err).__name__}: {err})", stacklevel=2
        )


_register_with_transformers()
