"""transformers' Auto classes for blockbert directories: ``AutoModel.from_pretrained(<block/sparse export>)``.

The only module that imports transformers' ``PretrainedConfig``/``PreTrainedModel``. :func:`register_auto_classes`
(called by ``import blockbert``) registers :class:`BlockBertHFConfig` for ``"model_type": "blockbert"`` and the
wrappers below with AutoModel, AutoModelForMaskedLM, AutoModelForPreTraining and AutoModelForQuestionAnswering,
so that directories written by ``blockbert export`` / ``save_pretrained`` load without ``trust_remote_code``.
Dense models are exported as plain BERT/RoBERTa directories and need none of this.

The config reads the layout :func:`blockbert.formats.convert.export` writes (and wrote before this module existed):
``{"model_type": "blockbert", "architectures": [...], "blockbert": {<BlockBertConfig fields>}}``, with (since the
exports that fit the Hugging Face tools) the standard ``hidden_size``, ``num_hidden_layers``, ... beside it, which
the config exposes as attributes whether the file has them or not.

The wrappers hold the pure-PyTorch modules of :mod:`blockbert.model.modeling` under the names the export uses, so the
keys of ``model.safetensors`` load as they are: ``encoder.*`` (a :class:`~blockbert.model.modeling.BlockBertModel`, the
bare model too: the export writes its keys under ``encoder.``), ``mlm.*``, ``nsp.*`` and ``qa.*``. Their forward
runs the forward of the matching blockbert class on those modules and returns transformers' output classes.
A wrapper's own ``save_pretrained`` (transformers') writes the same keys and a config that blockbert's
``from_pretrained`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoModelForQuestionAnswering,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput, QuestionAnsweringModelOutput
from transformers.utils import ModelOutput

from blockbert.errors import ConfigError
from blockbert.formats.convert import hf_config_values
from blockbert.model.config import BlockBertConfig
from blockbert.model.modeling import (
    BlockBertForMaskedLM,
    BlockBertForPreTraining,
    BlockBertForQuestionAnswering,
    BlockBertModel,
    MaskedLMHead,
    NextSentenceHead,
)

try:  # transformers 5: initialisers that leave the weights read from a checkpoint alone
    from transformers import initialization as init
except ImportError:  # transformers 4
    init = nn.init


class BlockBertHFConfig(PretrainedConfig):
    """transformers' view of a blockbert config: the :class:`~blockbert.model.config.BlockBertConfig` fields are kept,
    as in config.json, in the nested dict ``blockbert``; :meth:`to_blockbert` builds the dataclass from it.

    The standard names the Hugging Face tools read (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
    ``vocab_size``, ``max_position_embeddings``, ...: :func:`~blockbert.formats.convert.hf_config_values`) are
    attributes too, set from ``blockbert``, which wins over values given beside it (the copies at the top level of
    config.json); changing them does not change the model: ``blockbert`` is what the model is built from."""

    model_type = "blockbert"

    # transformers 5 makes these dataclass fields; transformers 4 sets them from the keyword arguments
    blockbert: dict | None = None
    tie_word_embeddings: bool = True  # the MLM decoder is the word embedding table

    def __init__(self, blockbert: dict | None = None, **kwargs):
        kwargs.setdefault("tie_word_embeddings", True)
        kwargs.update(standard_fields(blockbert))
        super().__init__(blockbert=blockbert, **kwargs)

    def to_blockbert(self) -> BlockBertConfig:
        """The :class:`BlockBertConfig` (validated); fields this version does not know are left out."""
        return BlockBertConfig.from_values(dict(self.blockbert or {}))


def standard_fields(blockbert: dict | None) -> dict:
    """The Hugging Face BERT config fields of a ``blockbert`` node (empty when it is missing or not a valid config:
    loading the model reports that)."""
    if not isinstance(blockbert, dict) or not blockbert:
        return {}
    try:
        return hf_config_values(BlockBertConfig.from_values(dict(blockbert)))
    except (ConfigError, TypeError, ValueError):
        return {}


@dataclass
class BlockBertForPreTrainingOutput(ModelOutput):
    """transformers' BertForPreTrainingOutput names, plus the two losses apart."""

    loss: torch.Tensor | None = None
    prediction_logits: torch.Tensor | None = None
    seq_relationship_logits: torch.Tensor | None = None
    mlm_loss: torch.Tensor | None = None
    nsp_loss: torch.Tensor | None = None


class BlockBertHFPreTrainedModel(PreTrainedModel):
    """A blockbert model as a transformers model: ``self.encoder`` is the pure-PyTorch encoder."""

    config_class = BlockBertHFConfig
    base_model_prefix = "encoder"
    main_input_name = "input_ids"
    _no_split_modules = ["Layer"]
    heads: tuple[str, ...] = ()  # the head modules this class has (mlm, nsp, qa)

    def __init__(self, config: BlockBertHFConfig):
        super().__init__(config)
        self.blockbert_config = config.to_blockbert()
        self.encoder = BlockBertModel(self.blockbert_config)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # heads in the file that this class has not (an encoder loaded from a QA export): expected, not reported
        others = [name for name in ("mlm", "nsp", "qa") if name not in cls.heads]
        cls._keys_to_ignore_on_load_unexpected = [rf"^{name}\." for name in others] + [r"\.decoder_weight$"]

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.embeddings.word

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.encoder.embeddings.word = value

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation (:func:`~blockbert.model.modeling.init_bert_weights`) of weights not in the file."""
        std = self.blockbert_config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            if not getattr(module.weight, "_is_hf_initialized", False):
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        if isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        if isinstance(module, MaskedLMHead):
            init.zeros_(module.bias)


def _outputs(output: ModelOutput, return_dict: bool | None, config: PretrainedConfig):
    use_dict = config.return_dict if return_dict is None else return_dict
    return output if use_dict else output.to_tuple()


class BlockBertHFModel(BlockBertHFPreTrainedModel):
    """AutoModel: ``last_hidden_state`` [B, N, hidden] of :class:`~blockbert.model.modeling.BlockBertModel`."""

    def __init__(self, config: BlockBertHFConfig):
        super().__init__(config)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, return_dict=None):
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)
        return _outputs(BaseModelOutput(last_hidden_state=hidden), return_dict, self.config)


class BlockBertHFForMaskedLM(BlockBertHFPreTrainedModel):
    """AutoModelForMaskedLM: :class:`~blockbert.model.modeling.BlockBertForMaskedLM`'s loss and logits."""

    heads = ("mlm",)
    _tied_weights_keys = {"mlm.decoder_weight": "encoder.embeddings.word.weight"}

    def __init__(self, config: BlockBertHFConfig):
        super().__init__(config)
        self.mlm = MaskedLMHead(self.blockbert_config, self.encoder.embeddings.word)
        self.post_init()

    def get_output_embeddings(self):
        return None  # the decoder is a tied parameter of the head, not a module: tying is _tied_weights_keys

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, return_dict=None):
        out = BlockBertForMaskedLM.forward(self, input_ids, attention_mask, token_type_ids, labels)  # self.encoder/mlm
        return _outputs(MaskedLMOutput(loss=out.loss, logits=out.logits), return_dict, self.config)


class BlockBertHFForPreTraining(BlockBertHFPreTrainedModel):
    """AutoModelForPreTraining: :class:`~blockbert.model.modeling.BlockBertForPreTraining` (masked LM plus NSP)."""

    heads = ("mlm", "nsp")
    _tied_weights_keys = {"mlm.decoder_weight": "encoder.embeddings.word.weight"}

    def __init__(self, config: BlockBertHFConfig):
        super().__init__(config)
        self.mlm = MaskedLMHead(self.blockbert_config, self.encoder.embeddings.word)
        self.nsp = NextSentenceHead(self.blockbert_config)
        self.post_init()

    def get_output_embeddings(self):
        return None

    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        labels=None,
        next_sentence_label=None,
        return_dict=None,
    ):
        out = BlockBertForPreTraining.forward(
            self, input_ids, attention_mask, token_type_ids, labels, next_sentence_label
        )  # on self.encoder, self.mlm and self.nsp
        output = BlockBertForPreTrainingOutput(
            loss=out.loss,
            prediction_logits=out.logits,
            seq_relationship_logits=out.nsp_logits,
            mlm_loss=out.mlm_loss,
            nsp_loss=out.nsp_loss,
        )
        return _outputs(output, return_dict, self.config)


class BlockBertHFForQuestionAnswering(BlockBertHFPreTrainedModel):
    """AutoModelForQuestionAnswering: the start/end logits of
    :class:`~blockbert.model.modeling.BlockBertForQuestionAnswering`."""

    heads = ("qa",)

    def __init__(self, config: BlockBertHFConfig):
        super().__init__(config)
        self.qa = nn.Linear(self.blockbert_config.hidden_size, 2)
        self.post_init()

    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        start_positions=None,
        end_positions=None,
        return_dict=None,
    ):
        out = BlockBertForQuestionAnswering.forward(
            self, input_ids, attention_mask, token_type_ids, start_positions, end_positions
        )  # on self.encoder and self.qa
        output = QuestionAnsweringModelOutput(loss=out.loss, start_logits=out.start_logits, end_logits=out.end_logits)
        return _outputs(output, return_dict, self.config)


AUTO_CLASSES = (
    (AutoModel, BlockBertHFModel),
    (AutoModelForMaskedLM, BlockBertHFForMaskedLM),
    (AutoModelForPreTraining, BlockBertHFForPreTraining),
    (AutoModelForQuestionAnswering, BlockBertHFForQuestionAnswering),
)


def register_auto_classes() -> None:
    """Register the config and the four wrappers with transformers' Auto classes (again: no effect)."""
    AutoConfig.register(BlockBertHFConfig.model_type, BlockBertHFConfig, exist_ok=True)
    for auto, model_class in AUTO_CLASSES:
        auto.register(BlockBertHFConfig, model_class, exist_ok=True)


__all__ = [
    "BlockBertHFConfig",
    "BlockBertHFPreTrainedModel",
    "BlockBertHFModel",
    "BlockBertHFForMaskedLM",
    "BlockBertHFForPreTraining",
    "BlockBertHFForQuestionAnswering",
    "BlockBertForPreTrainingOutput",
    "register_auto_classes",
]
