"""Self-attention of three kinds behind one interface (plain PyTorch).

* dense   -- ordinary multi-head attention (RoBERTa); ``sdpa`` or an ``eager`` path that
             materialises the N x N probabilities.
* block   -- BlockBERT (section 3 of the paper): the configured length N (``block_seq_len``) is cut
             into n blocks, head h has a shift k_h and query block i attends only to key block
             (i + k_h) mod n. Computed as a batch of n problems of N/n tokens (fewer for a shorter
             input: its all-padding query blocks are skipped) on hidden states laid out block-major
             (:mod:`blockbert.model.blocks`): never an N x N score matrix.
* sparse  -- SparseBert: the bidirectional "fixed" pattern of the Sparse Transformer as fairseq's
             ``sparse_multihead_attention.py`` builds it, either applied as a mask on dense attention
             (``mask``, faithful to the paper, which does not save compute with it) or computed over
             the pattern's keys only (``blocks``, same result).

Every kernel takes q, k, v of shape [B, H, N, d] and an optional key mask [B, N] (True = real
token) and returns [B, H, N, d] (but :func:`blockwise_attention`, which a model calls: block-major
[b, B, m, H, d] with its :class:`Blocks`). A query that can see no real key gets a zero output.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from blockbert.errors import ConfigError
from blockbert.model.blocks import Blocks, blocks_of
from blockbert.model.config import BlockBertConfig
from blockbert.model.dropout_attention import dropout_attention
from blockbert.model.jagged import Packing, jagged_attention


def _attend(q, k, v, keep, dropout_p: float, eager: bool):
    """Masked softmax attention over the last two dims; ``keep`` broadcasts to [..., Nq, Nk]."""
    # Rows with no visible key would be NaN: let them see everything, then zero their output.
    visible = None
    if keep is not None:
        visible = keep.any(dim=-1, keepdim=True)  # [..., Nq or 1, 1]
        keep = keep | ~visible
    if eager:
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [..., Nq, Nk]
        if keep is not None:
            scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        probs = F.dropout(scores.softmax(dim=-1), p=dropout_p, training=dropout_p > 0)
        out = probs @ v
    elif dropout_p > 0 and q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64):
        out = dropout_attention(q, k, v, keep, dropout_p)  # SDPA's CPU fallback with dropout is its math path
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout_p)
    if visible is not None:
        out = out * visible.to(out.dtype)
    return out


def dense_attention(q, k, v, key_mask=None, dropout_p: float = 0.0, eager: bool = False):
    keep = None if key_mask is None else key_mask[:, None, None, :]  # [B, 1, 1, N]
    return _attend(q, k, v, keep, dropout_p, eager)


def block_attention(
    q, k, v, head_counts, key_mask=None, dropout_p: float = 0.0, eager: bool = False, block_seq_len: int | None = None
):
    """Blockwise attention on [B, H, L, d] (the functional form; a model keeps its hidden states block-major and
    calls :func:`blockwise_attention` itself); ``head_counts[s]`` consecutive heads take shift s.

    The blocks are fixed by ``block_seq_len`` (N; default: this call's length): block i holds positions
    i*m .. (i+1)*m - 1 with m = ceil(N/n), so a position's block never depends on how far a batch is padded.
    A shorter input is computed as if padded to N, but only its first b = ceil(L/m) query blocks are: the
    others are padding; a query block whose key block lies past the input sees no real key (zero output).
    """
    B, H, L, d = q.shape
    N = L if block_seq_len is None else block_seq_len
    assert L <= N, f"sequence length {L} > block_seq_len={N}: BlockBertConfig.check_sequence_length refuses it"
    blocks = blocks_of(key_mask, B, L, len(head_counts), N)
    q, k, v = (blocks.to_blocks(t.transpose(1, 2)) for t in (q, k, v))  # [b, B, m, H, d]
    out = blockwise_attention(q, k, v, head_counts, blocks, dropout_p, eager)
    return blocks.from_blocks(out).transpose(1, 2)  # [B, H, L, d]


def blockwise_attention(q, k, v, head_counts, blocks: Blocks, dropout_p: float = 0.0, eager: bool = False):
    """Blockwise attention on block-major q, k, v [b, B, m, H, d] -> [b, B, m, H, d] (:mod:`blockbert.model.blocks`).

    Each head group (the heads of one shift s) is computed in key order: slot j holds the query block that attends
    to key block j, query block (j - s) mod n. So the keys and values are the layout's own blocks, never copied,
    and all key blocks of m positions are one SDPA call on [c * B, h, m, d] views; a last block of r < m positions
    is a second call with its keys sliced to r. Neither needs a mask unless the batch has padding, so on a GPU the
    flash kernel runs at any N, divisible by n or not. Only a shifted group's queries are permuted on the way in,
    and its outputs back to query order on the way out; a query block whose key block lies past the input (b < n)
    gets a zero output.
    """
    assert len(blocks.plans) == len(head_counts), "blocks_of(..., n) with n = len(head_counts)"
    shifts = [shift for shift, count in enumerate(head_counts) if count]
    # split, not sliced: in backward the groups' gradients are joined in one cat, not each added into a zeroed whole
    groups = zip(*(t.split([c for c in head_counts if c], dim=3) for t in (q, k, v)))
    outs = [_head_group(*group, shift, blocks, dropout_p, eager) for shift, group in zip(shifts, groups)]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=3)  # [b, B, m, H, d]


def _head_group(q, k, v, shift: int, blocks: Blocks, dropout_p: float, eager: bool):
    """One head group's attention, q, k, v [b, B, m, h, d] -> [b, B, m, h, d], as :attr:`Blocks.plans` says."""
    full, r, batch = blocks.full, blocks.last, blocks.batch
    runs, query_runs, output_runs = blocks.plans[shift]
    if not runs:  # every key block of this group's queries lies past the input
        return q * 0  # zeros that keep the parameters' gradients (zero, not none: DDP needs them)
    queries = _take_blocks([q], query_runs, q).split([stop - first for first, stop in runs])
    ends = [end for run in runs for end in run]
    keys, values = _segments(k, ends), _segments(v, ends)
    outs = []
    for (first, stop), qr in zip(runs, queries):
        kr, vr, keep = keys[first], values[first], blocks.keep_full
        if first >= full:  # the last block's keys sliced to its r positions
            kr, vr, keep = kr[:, :, :r], vr[:, :, :r], blocks.keep_last
        elif keep is not None:
            keep = keep[first * batch : stop * batch]
        outs.append(_attend_blocks(qr, kr, vr, keep, dropout_p, eager))
    return _take_blocks(outs, output_runs, q)


def _attend_blocks(q, k, v, keep, dropout_p: float, eager: bool):
    """q [c, B, m, h, d], k and v [c, B, m or r, h, d] -> [c, B, m, h, d]: c * B independent problems, one call."""
    c = q.shape[0]
    q, k, v = (t.flatten(0, 1).transpose(1, 2) for t in (q, k, v))  # [c * B, h, m, d]: views
    return _attend(q, k, v, keep, dropout_p, eager).transpose(1, 2).unflatten(0, (c, -1))


def _segments(t, ends) -> dict:
    """t cut along dim 0 at ``ends``: {first block: piece}. With ``split``, whose backward is one cat, not a zeroed
    whole per slice."""
    cuts = sorted({0, t.shape[0], *ends})
    return dict(zip(cuts, t.split([stop - first for first, stop in zip(cuts, cuts[1:])])))


def _take_blocks(parts: list, runs: tuple, like):
    """Blocks along dim 0 of [c, ...] tensors, given as ``runs`` (part, first, stop) of consecutive blocks of one
    part, or (None, 0, count) of zeros (``like[:1] * 0``: in the autograd graph, so that parameters reaching only
    zeros get zero gradients, not none). A whole part in order is returned as it is (no copy)."""
    if len(runs) == 1 and runs[0][0] is not None and runs[0][1:] == (0, parts[runs[0][0]].shape[0]):
        return parts[runs[0][0]]
    pieces = [_segments(part, [end for run in runs if run[0] == p for end in run[1:]]) for p, part in enumerate(parts)]
    zeros = like[:1] * 0  # [1, ...]
    return torch.cat(
        [zeros.expand(stop, *like.shape[1:]) if p is None else pieces[p][first] for p, first, stop in runs]
    )


def _pad_positions(q, k, v, key_mask, pad: int):
    """q, k, v [B, H, L, d] and key_mask [B, L] (None: no padding) with ``pad`` positions of padding appended."""
    if not pad:
        return q, k, v, key_mask
    q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    if key_mask is None:
        key_mask = torch.ones(q.shape[0], q.shape[2] - pad, dtype=torch.bool, device=q.device)
    return q, k, v, F.pad(key_mask, (0, pad), value=False)


def head_shifts(head_counts) -> torch.Tensor:
    """[H]: the shift of each head, ``head_counts[s]`` consecutive heads taking shift s."""
    return torch.repeat_interleave(torch.arange(len(head_counts)), torch.tensor(head_counts))


@functools.lru_cache(maxsize=32)
def sparse_fixed_mask(seq_len: int, stride: int, expressivity: int) -> torch.Tensor:
    """Boolean [N, N] mask (True = may attend) of fairseq's bidirectional fixed pattern.

    Query i sees (1) its stride window -- positions floor(i/l)*l .. floor(i/l)*l + l, inclusive;
    for i a non-zero multiple of l, i - l .. i instead -- and (2) the "summaries": for every window,
    the c + 1 positions starting c before the window's end. fairseq asserts N > l; here N <= l is
    allowed and simply gives full attention. Needs 0 < c < l (fairseq's summary loop never ends at c = l).
    """
    l, c = stride, expressivity
    summaries: set[int] = set()
    start = l - c
    while start <= seq_len - 1:
        summaries.update(range(start, min(start + c + 1, seq_len)))
        start = _next_summary_start(start + l, l, c)
    mask = torch.zeros(seq_len, seq_len, dtype=torch.bool)
    mask[:, sorted(summaries)] = True
    for i in range(seq_len):
        if i % l == 0 and i != 0:
            lo, hi = i - l, i + 1
        else:
            lo = (i // l) * l
            hi = lo + l + 1
        mask[i, lo : min(hi, seq_len)] = True
    return mask


@functools.lru_cache(maxsize=32)
def _sparse_mask_on(seq_len: int, stride: int, expressivity: int, device: torch.device) -> torch.Tensor:
    return sparse_fixed_mask(seq_len, stride, expressivity).to(device)


def _next_summary_start(index: int, l: int, c: int) -> int:
    if index % l == 0 and index != 0:
        return index - c
    return (index // l) * l + l - c


def sparse_attention(
    q, k, v, stride: int, expressivity: int, key_mask=None, dropout_p: float = 0.0, eager: bool = False
):
    """The faithful SparseBert: dense attention under the fixed-pattern mask (the paper's cost)."""
    keep = _sparse_mask_on(q.shape[-2], stride, expressivity, q.device)  # [N, N]
    if key_mask is not None:
        keep = keep & key_mask[:, None, None, :]  # [B, 1, N, N]
    return _attend(q, k, v, keep, dropout_p, eager)


def sparse_block_attention(
    q, k, v, stride: int, expressivity: int, key_mask=None, dropout_p: float = 0.0, eager: bool = False
):
    """The same pattern as :func:`sparse_attention`, computing only the keys it allows.

    Every query of group g -- positions g*l + 1 .. g*l + l, and position 0 in group 0 -- sees the
    same local window of keys g*l .. g*l + l (fairseq's edge rule: a multiple of l looks back), so
    queries and keys are cut into the same overlapping windows of l + 1 positions ([B, H, G, l+1, d],
    slot j of window g is position g*l + j). The summary keys -- the last c + 1 slots of every window --
    are appended to each window's keys, masked where already in it. Cost per head: G(l+1)(l+1+S)
    scores for S = G(c+1) summaries instead of N^2.
    """
    B, H, N, d = q.shape
    l, c = stride, expressivity
    G = max(1, -(-(N - 1) // l))  # windows
    S = G * (c + 1)  # summary slots
    padded = G * l + 1
    if key_mask is None:
        key_mask = torch.ones(B, N, dtype=torch.bool, device=q.device)
    key_mask = F.pad(key_mask, (0, padded - N), value=False)
    windows = [F.pad(t, (0, 0, 0, padded - N)).unfold(2, l + 1, l).transpose(-1, -2) for t in (q, k, v)]
    qw, kw, vw = windows  # [B, H, G, l+1, d]
    local_keep = key_mask.unfold(1, l + 1, l)  # [B, G, l+1]
    summary_keep = local_keep[:, :, l - c :].reshape(B, 1, S) & _summary_keep_on(G, l, c, q.device)  # [B, G, S]
    keep = torch.cat([local_keep, summary_keep], dim=-1)  # [B, G, l+1+S]
    keys, values = ([kv, kv[:, :, :, l - c :].reshape(B, H, 1, S, d).expand(B, H, G, S, d)] for kv in (kw, vw))
    K = l + 1 + S
    out = _attend(
        qw.reshape(B, H * G, l + 1, d),
        torch.cat(keys, dim=3).reshape(B, H * G, K, d),
        torch.cat(values, dim=3).reshape(B, H * G, K, d),
        keep[:, None, :, None, :].expand(B, H, G, 1, K).reshape(B, H * G, 1, K),
        dropout_p,
        eager,
    ).view(B, H, G, l + 1, d)
    # position 0 is slot 0 of window 0; position g*l + j (j = 1..l) is slot j of window g
    return torch.cat([out[:, :, 0, :1], out[:, :, :, 1:].reshape(B, H, G * l, d)], dim=2)[:, :, :N]


@functools.lru_cache(maxsize=32)
def _summary_keep_on(windows: int, l: int, c: int, device: torch.device) -> torch.Tensor:
    """[G, S] bool: summary slot s of the flattened [G, c+1] summaries is not in window g itself."""
    position = (torch.arange(windows)[:, None] * l + l - c + torch.arange(c + 1)).reshape(1, -1)  # [1, S]
    start = torch.arange(windows)[:, None] * l  # [G, 1]; window g holds positions g*l .. g*l + l
    return ((position < start) | (position > start + l)).to(device)


FLEX_BLOCK = 128  # FlexAttention's default tile: every input length is padded to a multiple of it


def flex_attention(q, k, v, pattern: tuple, key_mask=None):
    """Any of the three patterns through PyTorch's FlexAttention (``attention_impl=flex``).

    ``pattern`` is ("dense",), ("block", head_counts, block_seq_len) or ("sparse", stride, expressivity).
    Inputs are padded (as padding) to a multiple of FLEX_BLOCK: the kernel is compiled once per shape, and batches
    padded to their longest sequence (QA windows) would otherwise pass torch.compile's recompile limit and fall back
    to the unfused kernel.
    The pattern's BlockMask is built once per (pattern, length, device) and cached, so fully masked tiles
    are skipped; padding is a score_mod on top. Block boundaries come from block_seq_len (N), not from
    the input's length, as in :func:`block_attention`. FlexAttention has no dropout and, on CPU, neither
    backward nor a fused kernel: it is a GPU path (compiled there), checked on CPU in inference.
    """
    from torch.nn.attention import flex_attention as fa

    if not q.is_cuda and torch.is_grad_enabled() and q.requires_grad:
        raise ConfigError(
            "attention_impl=flex trains only on a CUDA GPU (PyTorch has no FlexAttention backward "
            "on CPU): use attention_impl=sdpa, or flex for inference"
        )
    L = q.shape[2]
    assert pattern[0] != "block" or L <= pattern[2], "BlockBertConfig.check_sequence_length refuses it"
    padded = -(-L // FLEX_BLOCK) * FLEX_BLOCK
    q, k, v, key_mask = _pad_positions(q, k, v, key_mask, padded - L)  # key_mask [B, padded]
    score_mod = None
    if key_mask is not None:

        def score_mod(score, b, h, q_idx, kv_idx):
            return torch.where(key_mask[b, kv_idx], score, -float("inf"))

    block_mask = _flex_block_mask(pattern, q.shape[1], padded, q.device)
    kernel = _compiled_flex() if q.is_cuda else fa.flex_attention
    return kernel(q, k, v, score_mod=score_mod, block_mask=block_mask)[:, :, :L]


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention import flex_attention as fa

    return torch.compile(fa.flex_attention, dynamic=False)


@functools.lru_cache(maxsize=32)
def _flex_block_mask(pattern: tuple, num_heads: int, seq_len: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    if pattern[0] == "block":
        counts, n = pattern[1], len(pattern[1])
        m = -(-pattern[2] // n)  # footnote 4's padded block length, from block_seq_len, not this length
        shifts = head_shifts(counts).to(device)  # [H]

        def mask_mod(b, h, q_idx, kv_idx):
            return kv_idx // m == (q_idx // m + shifts[h]) % n

        return create_block_mask(mask_mod, None, num_heads, seq_len, seq_len, device=device)
    if pattern[0] == "sparse":
        allowed = _sparse_mask_on(seq_len, pattern[1], pattern[2], device)

        def mask_mod(b, h, q_idx, kv_idx):
            return allowed[q_idx, kv_idx]

        return create_block_mask(mask_mod, None, None, seq_len, seq_len, device=device)
    return None


class SelfAttention(nn.Module):
    """Multi-head self-attention: projections around one of the three kernels."""

    def __init__(self, config: BlockBertConfig):
        super().__init__()
        self.config = config
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.flex_pattern = {
            "block": ("block", config.head_counts, config.block_seq_len),
            "sparse": ("sparse", config.sparse_stride, config.sparse_expressivity),
        }.get(config.attention, ("dense",))

    def forward(self, x, key_mask=None, layout: Packing | Blocks | None = None):
        """x [B, N, hidden] with ``key_mask`` [B, N]; x [b, B, m, hidden] block-major with ``layout`` its
        :class:`Blocks` (the model's for block attention); or x [T, hidden], the batch's real tokens, with ``layout``
        their :class:`Packing`."""
        cfg = self.config
        if layout is None and cfg.block_major:  # alone, not in a model: the block-major layout for this call
            blocks = blocks_of(key_mask, x.shape[0], x.shape[1], cfg.num_blocks, cfg.block_seq_len)
            return blocks.from_blocks(self(blocks.to_blocks(x), None, blocks))
        qkv = self.qkv(x)  # [B, N, 3 * hidden], [b, B, m, 3 * hidden] block-major, or [T, 3 * hidden] packed
        p = cfg.attention_dropout if self.training else 0.0
        if isinstance(layout, Blocks):
            return self.out(self._blockwise(qkv, layout, p))
        if layout is not None and layout.groups is not None:
            q, k, v = qkv.view(-1, 3, cfg.num_heads, cfg.head_dim).unbind(1)  # 3 x [T, H, d]
            return self.out(jagged_attention(q, k, v, layout, p).reshape(-1, cfg.hidden_size))
        if layout is not None and layout.blocks is not None:  # unpadded block attention: real tokens to blocks
            return self.out(layout.pack_blocks(self._blockwise(layout.unpack_blocks(qkv), layout.blocks, p)))
        if layout is not None:  # unpadded: the attention kernels on the padded batch
            qkv, key_mask = layout.unpack(qkv), layout.key_mask  # [B, N, 3 * hidden]
        B, N, _ = qkv.shape
        q, k, v = qkv.view(B, N, 3, cfg.num_heads, cfg.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, N, d]
        z = self._attention(q, k, v, key_mask, p).transpose(1, 2).reshape(B, N, cfg.hidden_size)  # [B, N, H*d]
        return self.out(z if layout is None else layout.pack(z))

    def _blockwise(self, qkv, blocks: Blocks, p):
        """Block attention on block-major projections [b, B, m, 3 * hidden] -> [b, B, m, hidden]."""
        cfg = self.config
        q, k, v = qkv.unflatten(-1, (3, cfg.num_heads, cfg.head_dim)).unbind(3)  # 3 x [b, B, m, H, d]
        eager = cfg.attention_impl == "eager"
        return blockwise_attention(q, k, v, cfg.head_counts, blocks, p, eager).flatten(3)

    def _attention(self, q, k, v, key_mask, p):
        """The configured kernel on [B, H, N, d] (not block attention through SDPA or eager: :meth:`_blockwise`)."""
        cfg = self.config
        assert not cfg.block_major, "block attention through SDPA or eager runs block-major: SelfAttention._blockwise"
        eager = cfg.attention_impl == "eager"
        if cfg.attention_impl == "flex":
            return flex_attention(q, k, v, self.flex_pattern, key_mask)
        if cfg.attention == "sparse":
            kernel = sparse_block_attention if cfg.sparse_impl == "blocks" else sparse_attention
            return kernel(q, k, v, cfg.sparse_stride, cfg.sparse_expressivity, key_mask, p, eager)
        return dense_attention(q, k, v, key_mask, p, eager)
