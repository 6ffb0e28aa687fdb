"""Self-attention of three kinds behind one interface (plain PyTorch).

* dense   -- ordinary multi-head attention (RoBERTa); ``sdpa`` or an ``eager`` path that
             materialises the N x N probabilities.
* block   -- BlockBERT (section 3 of the paper): the configured length N (``block_seq_len``) is cut
             into n blocks, head h has a shift k_h and query block i attends only to key block
             (i + k_h) mod n. Computed as a batch of n problems of N/n tokens (fewer for a shorter
             input: its all-padding query blocks are skipped): never an N x N score matrix.
* sparse  -- SparseBert: the bidirectional "fixed" pattern of the Sparse Transformer as fairseq's
             ``sparse_multihead_attention.py`` builds it, either applied as a mask on dense attention
             (``mask``, faithful to the paper, which does not save compute with it) or computed over
             the pattern's keys only (``blocks``, same result).

Every kernel takes q, k, v of shape [B, H, N, d] and an optional key mask [B, N] (True = real
token) and returns [B, H, N, d]. A query that can see no real key gets a zero output.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from blockbert.errors import ConfigError
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
    """Blockwise attention; ``head_counts[s]`` consecutive heads take shift s.

    The blocks are fixed by ``block_seq_len`` (N; default: this call's length): block i holds positions
    i*m .. (i+1)*m - 1 with m = ceil(N/n), so a position's block never depends on how far a batch is padded.
    A shorter input is computed as if padded to N, but only its first b = ceil(L/m) query blocks are: the
    others are padding; a query block whose key block lies past the input sees no real key (zero output).
    The blocks are laid out as a batch of B * b independent attention problems of m tokens
    ([B * b, H, m, d]), so SDPA picks its fused kernels; k and v are permuted per head group on the
    way, which is all the permutation costs over the identity-only bound (forward and backward).
    """
    B, H, L, d = q.shape
    n = len(head_counts)
    N = L if block_seq_len is None else block_seq_len
    assert L <= N, f"sequence length {L} > block_seq_len={N}: BlockBertConfig.check_sequence_length refuses it"
    m = -(-N // n)  # footnote 4: N padded to a multiple of n
    b = -(-L // m)  # query blocks holding real positions; b = n when L > (n - 1) * m
    q, k, v, key_mask = _pad_positions(q, k, v, key_mask, b * m - L)
    q, k, v = (t.reshape(B, H, b, m, d).transpose(1, 2) for t in (q, k, v))  # [B, b, H, m, d]
    k, v = _shift_blocks(k, head_counts), _shift_blocks(v, head_counts)
    keep = None
    if key_mask is not None:
        keep = _shift_blocks(key_mask.reshape(B, b, 1, 1, m).expand(B, b, H, 1, m), head_counts)
    if b < n and any(head_counts[1:]):  # key blocks past the input are all padding
        present = _key_blocks(b, tuple(head_counts), q.device)[1][None, :, :, None, None]  # [1, b, H, 1, 1]
        keep = present.expand(B, b, H, 1, m) if keep is None else keep & present
    if keep is not None:
        keep = keep.reshape(B * b, H, 1, m)
    q, k, v = (t.reshape(B * b, H, m, d) for t in (q, k, v))
    out = _attend(q, k, v, keep, dropout_p, eager)  # [B * b, H, m, d]
    return out.view(B, b, H, m, d).transpose(1, 2).reshape(B, H, b * m, d)[:, :, :L]


def _pad_positions(q, k, v, key_mask, pad: int):
    """q, k, v [B, H, L, d] and key_mask [B, L] (None: no padding) with ``pad`` positions of padding appended."""
    if not pad:
        return q, k, v, key_mask
    q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    if key_mask is None:
        key_mask = torch.ones(q.shape[0], q.shape[2] - pad, dtype=torch.bool, device=q.device)
    return q, k, v, F.pad(key_mask, (0, pad), value=False)


def _shift_blocks(t, head_counts):
    """Block i of a head with shift s gets block (i + s) mod n: t is [B, b, H, ...] with b <= n blocks.

    With all n blocks this is a roll of block dim 1 by -s per head group (dim 2); with b < n, a key block
    (i + s) mod n >= b lies past the input (all padding, masked by the caller) and block 0 stands in
    for it. With every head at shift 0 (the identity-only bound) nothing is copied.
    """
    if not any(head_counts[1:]):
        return t
    b, n = t.shape[1], len(head_counts)
    if b == n:
        groups = torch.split(t, list(head_counts), dim=2)
        return torch.cat([g.roll(-s, dims=1) if s else g for s, g in enumerate(groups)], dim=2)
    source = _key_blocks(b, tuple(head_counts), t.device)[0]  # [b, H]
    return t[:, source, torch.arange(t.shape[2], device=t.device)]  # [B, b, H, ...]


def head_shifts(head_counts) -> torch.Tensor:
    """[H]: the shift of each head, ``head_counts[s]`` consecutive heads taking shift s."""
    return torch.repeat_interleave(torch.arange(len(head_counts)), torch.tensor(head_counts))


@functools.lru_cache(maxsize=64)
def _key_blocks(b: int, head_counts: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """([b, H] key block of query block i for head h, clamped to b - 1; [b, H] bool: that block exists)."""
    n = len(head_counts)
    target = (torch.arange(b)[:, None] + head_shifts(head_counts)[None, :]) % n
    return torch.where(target < b, target, 0).to(device), (target < b).to(device)


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

    def forward(self, x, key_mask=None, packed: Packing | None = None):
        """x [B, N, hidden] with ``key_mask`` [B, N]; or, ``packed``, x [T, hidden]: the batch's real tokens."""
        cfg = self.config
        qkv = self.qkv(x)  # [B, N, 3 * hidden], or [T, 3 * hidden] packed
        p = cfg.attention_dropout if self.training else 0.0
        if packed is not None and packed.groups is not None:
            q, k, v = qkv.view(-1, 3, cfg.num_heads, cfg.head_dim).unbind(1)  # 3 x [T, H, d]
            return self.out(jagged_attention(q, k, v, packed, p).reshape(-1, cfg.hidden_size))
        if packed is not None:  # unpadded: the attention kernels on the padded batch
            qkv, key_mask = packed.unpack(qkv), packed.key_mask  # [B, N, 3 * hidden]
        B, N, _ = qkv.shape
        q, k, v = qkv.view(B, N, 3, cfg.num_heads, cfg.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, N, d]
        z = self._attention(q, k, v, key_mask, p).transpose(1, 2).reshape(B, N, cfg.hidden_size)  # [B, N, H*d]
        return self.out(z if packed is None else packed.pack(z))

    def _attention(self, q, k, v, key_mask, p):
        """The configured kernel on [B, H, N, d]."""
        cfg = self.config
        eager = cfg.attention_impl == "eager"
        if cfg.attention_impl == "flex":
            return flex_attention(q, k, v, self.flex_pattern, key_mask)
        if cfg.attention == "block":
            return block_attention(q, k, v, cfg.head_counts, key_mask, p, eager, cfg.block_seq_len)
        if cfg.attention == "sparse":
            kernel = sparse_block_attention if cfg.sparse_impl == "blocks" else sparse_attention
            return kernel(q, k, v, cfg.sparse_stride, cfg.sparse_expressivity, key_mask, p, eager)
        return dense_attention(q, k, v, key_mask, p, eager)
