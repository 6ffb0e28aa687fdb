"""Build the compared models at the sizes a measurement asks for: the paper's presets, our variants of
them, and the Hugging Face models a user would otherwise pick (the peers), all at the same sizes."""

from __future__ import annotations

import torch

from blockbert.errors import ConfigError
from blockbert.formats.presets import PRESETS, preset_config
from blockbert.model.attention import SelfAttention
from blockbert.model.config import parse_heads
from blockbert.model.modeling import BlockBertForMaskedLM, BlockBertForPreTraining

VARIANTS = {  # name -> (preset, config overrides)
    "sparsebert_blocks": ("sparsebert", {"sparse_impl": "blocks"}),  # computes only the pattern's blocks
}
# any of ours + this suffix (roberta_1seq_eager): attention_impl=eager, the paper's kernel that materialises the
# N x N (or n blocks of (N/n)^2) probabilities; without it a model takes the attention_impl build() is given
EAGER = "_eager"
PEERS = {  # name -> (transformers architecture, attention implementation, extra config)
    "hf_bert": ("Bert", "sdpa", {}),
    "hf_bert_eager": ("Bert", "eager", {}),
    "hf_roberta": ("Roberta", "sdpa", {}),
    "hf_bigbird": ("BigBird", "eager", {"attention_type": "block_sparse", "block_size": 64, "num_random_blocks": 3}),
}


# the dense model with its attention kernel removed (projections kept): t_rest of the blockwise inference bound
NO_ATTENTION = "no_attention"


class _NoKernel(SelfAttention):
    """SelfAttention without its kernel: the projections run and the values pass through (z = v)."""

    def forward(self, x, key_mask=None, layout=None):
        cfg = self.config
        v = self.qkv(x).view(*x.shape[:-1], 3, cfg.hidden_size)[..., 2, :]  # [B, N, H*d], or [T, H*d] packed
        return self.out(v)


def known_models() -> list[str]:
    return [*PRESETS, *VARIANTS, *PEERS, NO_ATTENTION]


def check_model(name: str) -> None:
    """Refuse in one line a model name :func:`build` does not know."""
    if name not in (NO_ATTENTION, *PEERS) and _preset_of(name) is None:
        raise ConfigError(
            f"model {name!r} is unknown: accepted are {', '.join(known_models())}; "
            f"ours also as <name>{EAGER} (eager attention)"
        )


def _preset_of(name: str) -> str | None:
    """The preset a model of ours is built from (``blockbert_n2_eager``: blockbert_n2); None for the others."""
    base = name.removesuffix(EAGER)
    preset = VARIANTS.get(base, (base, {}))[0]
    return preset if name not in PEERS and preset in PRESETS else None


def check_heads(heads: dict, models: list[str], size: dict, setting: str = "models") -> None:
    """Refuse in one line, before anything is measured, a per-model head config (``+heads.NAME=...``) that no model
    measured would read: a NAME not among ``models`` (the config's ``setting``) or one without blockwise attention,
    or a value that is not a head config of that model's heads."""
    block = [name for name in models if _is_block(name)]
    for key, value in heads.items():
        given = f"heads.{key}={str(value)!r}"
        read_by = f"heads are read by the block models measured: {', '.join(block) or 'none'}"
        named = [name for name in models if key in (name, name.removesuffix(EAGER))]
        if not named:
            raise ConfigError(f"{given}: {key} is not among {setting}=[{', '.join(models)}]; {read_by}")
        if not _is_block(named[0]):
            raise ConfigError(f"{given}: {key} has no blockwise attention to give heads to; {read_by}")
        _check_head_config(key, str(value), preset_config(_preset_of(named[0]), **size).num_heads)


def _is_block(name: str) -> bool:
    preset = _preset_of(name)
    return preset is not None and PRESETS[preset].config.attention == "block"


def _check_head_config(key: str, value: str, num_heads: int) -> None:
    """``value`` as the heads of the model ``key`` names (``num_heads`` of them), or :func:`parse_heads`'s refusal
    naming ``heads.KEY`` and the model."""
    try:
        parse_heads(value, num_heads)
    except ConfigError as err:  # parse_heads names "heads=...": name the key and the model
        raise ConfigError(
            f"heads.{key}{str(err).removeprefix('heads').replace('the model has', f'{key} has')}"
        ) from None


def heads_of(name: str, model) -> dict:
    """What profile.json and benchmark.json record of a block model's heads: ``heads``, those it ran with, and
    ``preset_heads``, its preset's; nothing for the other models."""
    config = getattr(model, "config", None)
    if _preset_of(name) is None or getattr(config, "attention", None) != "block":
        return {}
    return {"heads": str(config.heads).strip(), "preset_heads": PRESETS[_preset_of(name)].config.heads}


def build(name: str, size: dict, heads: dict, max_len: int, attention_impl: str = "sdpa"):
    """A model for sequences of ``max_len`` tokens (block attention cuts that N into its blocks) whose
    ``forward(input_ids, attention_mask, labels=...)`` returns an output with ``loss``;
    ``model.config.vocab_size`` is the size of its vocabulary."""
    size = dict(size)
    if name == NO_ATTENTION:
        model = build("roberta_1seq", size, {}, max_len, attention_impl)
        for module in model.modules():
            if isinstance(module, SelfAttention):
                module.__class__ = _NoKernel
        return model
    if name in PEERS:
        return _peer(name, preset_config("roberta_1seq", **size), max_len)
    check_model(name)
    base = name.removesuffix(EAGER)
    preset, overrides = VARIANTS.get(base, (base, {}))
    overrides = dict(
        size, **overrides, max_position_embeddings=max_len, attention_impl="eager" if name != base else attention_impl
    )
    if name in heads or base in heads:
        overrides["heads"] = heads.get(name, heads.get(base))
    config = preset_config(preset, **overrides)
    return (BlockBertForPreTraining if PRESETS[preset].next_sentence_prediction else BlockBertForMaskedLM)(config)


def _peer(name: str, config, max_len: int) -> PeerModel:
    import transformers

    arch, attn_implementation, extra = PEERS[name]
    offset = 2 if arch == "Roberta" else 0  # RoBERTa's positions start after the padding index
    hf_config = getattr(transformers, f"{arch}Config")(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=max_len + offset,
        type_vocab_size=1 if arch == "Roberta" else 2,
        attn_implementation=attn_implementation,
        **extra,
    )
    return PeerModel(getattr(transformers, f"{arch}ForMaskedLM")(hf_config))


class PeerModel(torch.nn.Module):
    """A transformers ``*ForMaskedLM`` behind blockbert's call signature."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config  # transformers' config: vocab_size, hidden_size, ... as ours has

    def forward(self, input_ids, attention_mask=None, labels=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def encoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The encoder of a masked-LM model, ours or a transformers peer: the model without its LM head, called as
    ``encoder(input_ids, attention_mask)``."""
    return model.model.base_model if isinstance(model, PeerModel) else model.encoder


def random_batch(
    batch_size: int, seq_len: int, vocab_size: int, device, mlm_probability: float = 0.15, fill: float = 1.0
) -> dict:
    """A masked-LM batch of random tokens; with ``fill`` < 1 its sequences end early, their lengths spread evenly
    from (2 * fill - 1) * seq_len (at least 1) to seq_len, so its real tokens are about ``fill`` of its positions."""
    g = torch.Generator().manual_seed(seq_len * 1000 + batch_size)
    ids = torch.randint(5, vocab_size, (batch_size, seq_len), generator=g)
    shortest = max(1, round((2 * fill - 1) * seq_len)) if fill < 1 else seq_len
    lengths = torch.linspace(shortest, seq_len, batch_size).round().long()  # one sequence: the shortest
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    labels = torch.where((torch.rand(batch_size, seq_len, generator=g) < mlm_probability) & mask.bool(), ids, -100)
    return {k: v.to(device) for k, v in dict(input_ids=ids, attention_mask=mask, labels=labels).items()}
