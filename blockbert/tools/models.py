"""Build the compared models at the sizes a measurement asks for (the paper's presets and the peer)."""

from __future__ import annotations

import torch

from blockbert import PRESETS, BlockBertForMaskedLM, BlockBertForPreTraining, preset_config
from blockbert.config import ConfigError

PEER = "hf_roberta"  # Hugging Face transformers' RoBERTa, the model a user would otherwise pick


def build(name: str, size: dict, heads: dict, max_len: int, attention_impl: str = "sdpa"):
    """A model whose ``forward(input_ids, attention_mask, labels=...)`` returns an output with ``loss``."""
    size = dict(size)
    if name == PEER:
        import transformers

        config = preset_config("roberta_1seq", **size)
        hf = transformers.RobertaConfig(
            vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size,
            max_position_embeddings=max_len + 2, type_vocab_size=1, attn_implementation="sdpa")
        return PeerRoberta(transformers.RobertaForMaskedLM(hf))
    if name not in PRESETS:
        raise ConfigError(f"model {name!r} is unknown: accepted are {', '.join(PRESETS)}, {PEER}")
    overrides = dict(size, max_position_embeddings=max_len, attention_impl=attention_impl)
    if name in heads:
        overrides["heads"] = heads[name]
    config = preset_config(name, **overrides)
    cls = BlockBertForPreTraining if PRESETS[name].next_sentence_prediction else BlockBertForMaskedLM
    return cls(config)


class PeerRoberta(torch.nn.Module):
    """transformers' RobertaForMaskedLM behind blockbert's call signature."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, labels=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def random_batch(batch_size: int, seq_len: int, vocab_size: int, device, mlm_probability: float = 0.15) -> dict:
    g = torch.Generator().manual_seed(seq_len * 1000 + batch_size)
    ids = torch.randint(5, vocab_size, (batch_size, seq_len), generator=g)
    labels = torch.where(torch.rand(batch_size, seq_len, generator=g) < mlm_probability, ids, -100)
    mask = torch.ones_like(ids)
    return {k: v.to(device) for k, v in dict(input_ids=ids, attention_mask=mask, labels=labels).items()}
