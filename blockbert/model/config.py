"""Model configuration: one dataclass, validated when it is built.

Every bad value raises :class:`ConfigError` whose message is one line naming the bad value and
what is accepted, so the CLI can print it as it is. N, the sequence length block attention cuts into n
blocks, is one attribute, ``block_seq_len``; it is checked against the positions here and against each
input in :meth:`BlockBertConfig.check_sequence_length`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from blockbert.errors import ConfigError

ATTENTION_KINDS = ("dense", "block", "sparse")
ATTENTION_IMPLS = ("sdpa", "eager", "flex")
SPARSE_IMPLS = ("mask", "blocks")
LAYOUTS = ("auto", "padded", "unpadded", "jagged")
# the settings that change how a model computes, not what: its kernels and layouts are exact against each other, and
# checkpointing recomputes the same activations
COMPUTE_ONLY = ("attention_impl", "layout", "sparse_impl", "gradient_checkpointing")
# what a run from a blockbert run (init_from) may set otherwise than the run's model: how the same model computes, and
# its dropouts (our choice; the rest is the pre-trained model)
MAY_DIFFER_FROM_RUN = (*COMPUTE_ONLY, "hidden_dropout", "attention_dropout")
# which positions a model attends to: the attention kind and its parameters
ATTENTION_PATTERN = ("attention", "heads", "sparse_stride", "sparse_expressivity")
READ_ONLY_BY = {"heads": "block", "sparse_stride": "sparse", "sparse_expressivity": "sparse"}  # the attention reading
# what a model imported from a Hugging Face checkpoint takes from model.* rather than from the checkpoint: all of the
# above and the attention pattern (the checkpoint's sizes, weights and tokenizer are the rest)
ATTENTION_SETTINGS = (*MAY_DIFFER_FROM_RUN, *ATTENTION_PATTERN)


def parse_heads(heads: str, num_heads: int | None = None) -> tuple[int, ...]:
    """Parse a head config such as ``"10:2"`` into head counts per shift (the one parser of head configs).

    Part ``k`` is the number of heads whose query block ``i`` attends to key block
    ``(i + k) mod n``; ``n`` is the number of parts. Zero counts are legal (``"12:0"``). With ``num_heads``
    the counts must sum to it.
    """
    text = str(heads).strip()
    parts = text.split(":")
    if not text or any(not p.strip().isdigit() for p in parts):
        total = "" if num_heads is None else f" summing to num_heads={num_heads}"
        raise ConfigError(
            f"heads={heads!r} is not a head config: expected non-negative integers separated "
            f"by ':'{total}, e.g. '10:2' (n=2) or '8:2:2' (n=3)"
        )
    counts = tuple(int(p) for p in parts)
    if num_heads is not None and sum(counts) != num_heads:
        raise ConfigError(
            f"heads={text!r} assigns {sum(counts)} heads but the model has num_heads={num_heads}: "
            f"the counts must sum to {num_heads}"
        )
    return counts


def scale_heads(heads: str, num_heads: int) -> str:
    """The head config ``heads`` with its proportions kept for a model of ``num_heads`` heads: every shift that
    had heads keeps at least one, identity (shift 0) takes the rest; ``"10:2"`` -> ``"13:3"`` for 16 heads,
    ``"5:1"`` for 6. A config that already fits is returned as it is."""
    counts = parse_heads(heads)
    if sum(counts) == num_heads:
        return str(heads).strip()
    shifted = [max(1, round(c * num_heads / sum(counts))) if c else 0 for c in counts[1:]]
    if not counts[0]:  # no identity head: the last shift takes the rest
        shifted[-1] += num_heads - sum(shifted)
    if num_heads - sum(shifted) < (1 if counts[0] else 0) or min(shifted, default=0) < 0:
        raise ConfigError(
            f"heads={heads!r} cannot be scaled to num_heads={num_heads}: give model.heads with counts summing to "
            f"{num_heads}"
        )
    return ":".join(str(c) for c in (num_heads - sum(shifted), *shifted))


@dataclass
class BlockBertConfig:
    """A BERT/RoBERTa encoder whose self-attention is dense, blockwise or Sparse-Transformer."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 0  # 0 means 4 * hidden_size
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    attention: str = "dense"  # dense | block | sparse
    heads: str = "10:2"  # read only when attention == "block"
    # N, the sequence length the model was set up for (a pre-trained model's). Block attention cuts it into the n
    # blocks -- block i is positions [i*m, (i+1)*m), m = ceil(N/n), whatever the padded batch length -- and refuses
    # longer sequences. 0 (the default, and configs saved before the field) is read as max_sequence_length
    block_seq_len: int = 0
    sparse_stride: int = 128  # Sparse Transformer "fixed" pattern: stride l
    sparse_expressivity: int = 32  # ... and expressivity c
    sparse_impl: str = "mask"  # mask (dense attention under the pattern, the paper's cost) | blocks (only its keys)
    attention_impl: str = "sdpa"  # sdpa (fused when available) | eager (materialises probabilities) | flex (GPU)
    # how a batch with padding is computed (blockbert.model.jagged); without dropout every layout gives the same
    # outputs at the real tokens:
    # padded (every position) | unpadded (linear layers and norms on real tokens only, attention on the padded
    # batch) | jagged (real tokens only, attention as variable-length problems; dense or block with sdpa)
    # | auto (unpadded when a batch's padding pays for it, else padded)
    layout: str = "auto"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    position_offset: int = 0  # RoBERTa: 2 -- positions start after the padding index (pad_token_id + 1)
    gradient_checkpointing: bool = False
    head_counts: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.intermediate_size == 0:
            self.intermediate_size = 4 * self.hidden_size
        if self.attention not in ATTENTION_KINDS:
            raise ConfigError(f"attention={self.attention!r} is unknown: accepted are {', '.join(ATTENTION_KINDS)}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ConfigError(
                f"attention_impl={self.attention_impl!r} is unknown: accepted are {', '.join(ATTENTION_IMPLS)}"
            )
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}: "
                f"choose a hidden size that is a multiple of {self.num_heads}"
            )
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout={self.layout!r} is unknown: accepted are {', '.join(LAYOUTS)}")
        if self.layout == "jagged" and (self.attention == "sparse" or self.attention_impl != "sdpa"):
            raise ConfigError(
                f"layout=jagged computes dense or block attention with attention_impl=sdpa, not attention="
                f"{self.attention} with attention_impl={self.attention_impl}: use layout=unpadded or padded"
            )
        if self.sparse_impl not in SPARSE_IMPLS:
            raise ConfigError(f"sparse_impl={self.sparse_impl!r} is unknown: accepted are {', '.join(SPARSE_IMPLS)}")
        # fairseq's summary loop never ends for expressivity == stride, so that value is refused
        if self.attention == "sparse" and not (0 < self.sparse_expressivity < self.sparse_stride):
            raise ConfigError(
                f"sparse_stride={self.sparse_stride}, sparse_expressivity={self.sparse_expressivity}: "
                "need 0 < expressivity < stride"
            )
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be in [0, 1)")
        if self.attention_impl == "flex" and self.attention_dropout:
            raise ConfigError(
                f"attention_impl=flex has no attention dropout (attention_dropout={self.attention_dropout}): "
                "set attention_dropout=0 or use attention_impl=sdpa"
            )
        self.head_counts = parse_heads(self.heads, self.num_heads) if self.attention == "block" else (self.num_heads,)
        if isinstance(self.block_seq_len, bool) or not isinstance(self.block_seq_len, int) or self.block_seq_len < 0:
            raise ConfigError(
                f"block_seq_len={self.block_seq_len!r} must be a non-negative integer "
                "(N, the length block attention cuts into blocks; 0: the model's longest sequence)"
            )
        if not self.block_seq_len:
            self.block_seq_len = self.max_sequence_length
        if self.attention == "block" and self.block_seq_len > self.max_sequence_length:
            raise ConfigError(
                f"block_seq_len={self.block_seq_len} exceeds the model's {self.max_sequence_length} "
                f"positions (max_position_embeddings={self.max_position_embeddings}"
                + (f" minus position_offset={self.position_offset}" if self.position_offset else "")
                + f"): use block_seq_len <= {self.max_sequence_length}"
            )

    @classmethod
    def from_values(cls, values: dict, **overrides) -> BlockBertConfig:
        """The config of the fields ``values`` names (a model node of conf/, a checkpoint's or an export's config),
        with ``overrides``; other keys (the node's ``name`` and ``init_from``, fields of a newer version) are left
        out. The one way a config is built from stored values."""
        known = {f.name for f in fields(cls) if f.init}
        return cls(**{key: value for key, value in {**values, **overrides}.items() if key in known})

    @property
    def num_blocks(self) -> int:
        """n, the number of blocks (1 unless attention is blockwise)."""
        return len(self.head_counts)

    @property
    def block_major(self) -> bool:
        """Block attention through SDPA or eager: hidden states laid out block-major (:mod:`blockbert.model.blocks`)."""
        return self.attention == "block" and self.attention_impl != "flex"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("head_counts")
        return d

    @property
    def max_sequence_length(self) -> int:
        return self.max_position_embeddings - self.position_offset

    @property
    def block_size(self) -> int:
        """m = ceil(N / n): block i holds positions i*m .. (i+1)*m - 1 (N padded to a multiple of n)."""
        return -(-self.block_seq_len // self.num_blocks)

    def check_sequence_length(self, seq_len: int, setting: str | None = None, hint: str | None = None) -> None:
        """Refuse sequences the model cannot hold: longer than its positions, or (block) than N. The one check of a
        length against the model: its inputs (``forward``), and a run's ``setting`` (``data.max_seq_length``),
        whose error names model.* or, for a model that comes from a checkpoint, gives ``hint`` instead."""
        what = f"sequence length {seq_len}" if setting is None else f"{setting}={seq_len}"
        offset = f" (minus position_offset={self.position_offset})" if self.position_offset else ""
        if seq_len > self.max_sequence_length:
            if setting is None:
                limit = f"max_position_embeddings={self.max_position_embeddings}{offset}"
                advice = f"use sequences of at most {self.max_sequence_length} tokens or a model with more positions"
            elif hint is None:
                limit = f"model.max_position_embeddings={self.max_position_embeddings}{offset}"
                advice = f"set model.max_position_embeddings={seq_len} or a shorter {setting}"
            else:
                limit, advice = f"the model's {self.max_sequence_length} positions", hint
            raise ConfigError(f"{what} exceeds {limit}: {advice}")
        if self.attention == "block" and seq_len > self.block_seq_len:
            advice = f"use sequences of at most {self.block_seq_len} tokens or a model with a larger block_seq_len"
            raise ConfigError(
                f"{what} exceeds block_seq_len={self.block_seq_len}, the length block attention cuts into "
                f"n={self.num_blocks} blocks of {self.block_size} positions: {hint or advice}"
            )
