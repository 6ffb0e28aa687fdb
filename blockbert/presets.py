"""The paper's six pre-training models (BERT-base sizes) and a tiny one for tests and CPU demos."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .config import BlockBertConfig, ConfigError


@dataclass(frozen=True)
class Preset:
    description: str
    config: BlockBertConfig
    next_sentence_prediction: bool  # MLM + NSP (BlockBertForPreTraining) or MLM only


PRESETS: dict[str, Preset] = {
    "google_bert": Preset("Google BERT: dense attention, MLM + NSP", BlockBertConfig(), True),
    "roberta_2seq": Preset("RoBERTa-2seq: dense attention, sentence pairs, MLM + NSP", BlockBertConfig(), True),
    "roberta_1seq": Preset("RoBERTa-1seq: dense attention, one segment, MLM only", BlockBertConfig(), False),
    "sparsebert": Preset(
        "SparseBert: Sparse Transformer fixed pattern (l=128, c=32), MLM only",
        BlockBertConfig(attention="sparse", sparse_stride=128, sparse_expressivity=32),
        False,
    ),
    "blockbert_n2": Preset(
        "BlockBert n=2: heads 10:2 (9:3 at N=1024), MLM only",
        BlockBertConfig(attention="block", heads="10:2"),
        False,
    ),
    "blockbert_n3": Preset(
        "BlockBert n=3: heads 8:2:2, MLM only",
        BlockBertConfig(attention="block", heads="8:2:2"),
        False,
    ),
    "tiny": Preset(
        "tiny BlockBert n=2 for tests and CPU demos (2 layers, hidden 64, heads 3:1)",
        BlockBertConfig(
            vocab_size=2048,
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            max_position_embeddings=128,
            attention="block",
            heads="3:1",
            sparse_stride=16,
            sparse_expressivity=4,
        ),
        False,
    ),
}


def preset_config(name: str, **overrides) -> BlockBertConfig:
    """The named preset's config, with fields replaced by ``overrides`` (validated again)."""
    if name not in PRESETS:
        raise ConfigError(f"model preset {name!r} is unknown: accepted are {', '.join(PRESETS)}")
    return replace(PRESETS[name].config, **overrides)
