"""The model classes ``blockbert`` exports: the pure-PyTorch ones of :mod:`blockbert.model.modeling` with
``from_pretrained`` and ``save_pretrained``, which read and write Hugging Face BERT/RoBERTa directories and blockbert
exports (:mod:`blockbert.formats.convert`). The model layer itself does no file I/O; every user-facing path (the
Python API, ``blockbert export``, a run's model) builds these."""

from __future__ import annotations

from pathlib import Path

from blockbert.formats.convert import export, head_of, load_pretrained
from blockbert.model import modeling


class Pretrained:
    """``from_pretrained`` and ``save_pretrained`` for a blockbert model class."""

    @classmethod
    def from_pretrained(cls, path: str, **overrides):
        """Load ``path``; ``overrides`` may change the attention (``attention="block", heads="10:2"``),
        ``max_position_embeddings`` (the longest sequence; learned positions are copied to extend it) and
        ``block_seq_len`` (N, which fixes the blocks; by default a block checkpoint keeps its own N, see
        :func:`blockbert.formats.convert.import_weights`)."""
        return load_pretrained(cls, path, **overrides)

    def save_pretrained(self, directory, tokenizer_dir=None) -> Path:
        """Write the model to ``directory`` (created if needed) as ``blockbert export`` does: a Hugging Face
        BERT/RoBERTa directory when the attention is dense, else a blockbert one (which ``from_pretrained`` here,
        and transformers' Auto classes after ``import blockbert``, load). The files of ``tokenizer_dir`` are copied
        beside the weights when given. Returns the directory as a Path."""
        return export(self, directory, None if tokenizer_dir is None else Path(tokenizer_dir))


class BlockBertModel(Pretrained, modeling.BlockBertModel):
    __doc__ = modeling.BlockBertModel.__doc__


class BlockBertForMaskedLM(Pretrained, modeling.BlockBertForMaskedLM):
    __doc__ = modeling.BlockBertForMaskedLM.__doc__


class BlockBertForPreTraining(Pretrained, modeling.BlockBertForPreTraining):
    __doc__ = modeling.BlockBertForPreTraining.__doc__


class BlockBertForQuestionAnswering(Pretrained, modeling.BlockBertForQuestionAnswering):
    __doc__ = modeling.BlockBertForQuestionAnswering.__doc__


CLASSES = {cls.__name__: cls for cls in (BlockBertModel, BlockBertForMaskedLM, BlockBertForPreTraining,
                                        BlockBertForQuestionAnswering)}  # fmt: skip


def model_class_for(weights: dict) -> type:
    """The class whose weights these are (the head their keys hold, :func:`blockbert.formats.convert.head_of`)."""
    return CLASSES[f"BlockBert{head_of(weights)}"]
