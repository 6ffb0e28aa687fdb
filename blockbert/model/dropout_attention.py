"""Softmax attention with dropout for the CPU (plain PyTorch).

On CPU, SDPA has no fused kernel with dropout: it falls back to its math path, which materialises the
scores, the probabilities, the dropped probabilities and a mask for every head at once and keeps three
of them for backward. Here the scores are computed in tiles of about a million -- a few heads, or one
head a band of query rows at a time -- so each stays cache- and allocator-friendly, and backward
recomputes the probabilities from the saved log-sum-exp (as FlashAttention does). Saved per score:
one byte, the dropout mask.

The dropout mask is drawn 16 bits per entry (four per 64-bit draw of torch's generator), several
times faster than ``bernoulli_``: the rate is p rounded to a multiple of 1/65536 (0.1 -> 0.100006),
and the kept values are scaled by 1 / (1 - that rate), so the expectation is exact.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

SCORES_PER_CHUNK = 1 << 20  # ~4 MB of float32 scores per step: (heads per step) x Nq x Nk


def dropout_attention(q, k, v, keep, dropout_p: float):
    """softmax(q k^T / sqrt(d), masked by ``keep``) with dropout, times v.

    q [..., Nq, d], k and v [..., Nk, d]; ``keep`` (bool, True = may attend) broadcasts to
    [..., Nq, Nk] and must leave every query at least one key (a query with none gets NaN; the
    kernels in attention.py see to it).
    """
    lead = q.shape[:-2]
    heads_per_mask = 1  # flattened head i uses mask i // heads_per_mask: a mask shared by heads stays shared
    if keep is not None:
        keep = keep.reshape((1,) * (len(lead) + 2 - keep.dim()) + tuple(keep.shape))
        if all(size == 1 for size in keep.shape[:-2]):
            heads_per_mask = math.prod(lead)
        elif keep.shape[-3] == 1:
            heads_per_mask = lead[-1]
            keep = keep.expand(*lead[:-1], 1, *keep.shape[-2:])
        else:
            keep = keep.expand(*lead, *keep.shape[-2:])
        keep = keep.reshape(-1, *keep.shape[-2:])  # [BH / heads_per_mask, Nq or 1, Nk]
    q3, k3, v3 = (t.reshape(-1, *t.shape[-2:]) for t in (q, k, v))  # [BH, N, d]
    out = _DropoutAttention.apply(q3, k3, v3, keep, heads_per_mask, dropout_p)
    return out.view(*lead, *out.shape[-2:])


def kept_rate(p: float) -> float:
    return 1.0 - round(p * 65536) / 65536


def draw_keep_mask(out: torch.Tensor, p: float) -> torch.Tensor:
    """Fill the bool tensor ``out``: True with probability kept_rate(p)."""
    n = out.numel()
    bits = torch.randint(-(2**63), 2**63 - 1, (-(-n // 4),), dtype=torch.int64, device=out.device)
    threshold = -32768 + round(p * 65536)
    return torch.ge(bits.view(torch.int16)[:n].view(out.shape), threshold, out=out)


class _DropoutAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, keep, heads_per_mask, p):
        BH, Nq, _ = q.shape
        scale, rescale = 1 / math.sqrt(q.shape[-1]), 1 / kept_rate(p)
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        lse = torch.empty(BH, Nq, 1, dtype=q.dtype, device=q.device)
        kept = torch.empty(BH, Nq, k.shape[1], dtype=torch.bool, device=q.device)
        for h, r in _tiles(BH, Nq, k.shape[1]):
            s = _scores(q[h, r], k[h], keep, heads_per_mask, h, r, scale)  # [heads, rows, Nk]
            torch.logsumexp(s, -1, keepdim=True, out=lse[h, r])
            probs = s.sub_(lse[h, r]).exp_()
            probs.mul_(draw_keep_mask(kept[h, r], p)).mul_(rescale)
            torch.bmm(probs, v[h], out=out[h, r])
        ctx.save_for_backward(q, k, v, keep, out, lse, kept)
        ctx.scale, ctx.rescale, ctx.heads_per_mask = scale, rescale, heads_per_mask
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        q, k, v, keep, out, lse, kept = ctx.saved_tensors
        scale, rescale = ctx.scale, ctx.rescale
        dout = dout.contiguous()
        rowdot = (dout * out).sum(-1, keepdim=True)  # [BH, Nq, 1]: sum_j dP_ij P_ij
        dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        dk, dv = (torch.zeros(t.shape, dtype=t.dtype, device=t.device) for t in (k, v))
        for h, r in _tiles(*q.shape[:2], k.shape[1]):
            probs = _scores(q[h, r], k[h], keep, ctx.heads_per_mask, h, r, scale).sub_(lse[h, r]).exp_()  # no dropout
            dv[h].baddbmm_((probs * kept[h, r]).mul_(rescale).transpose(1, 2), dout[h, r])
            dscores = torch.bmm(dout[h, r], v[h].transpose(1, 2)).mul_(kept[h, r]).mul_(rescale)
            dscores.sub_(rowdot[h, r]).mul_(probs)
            torch.bmm(dscores, k[h], out=dq[h, r]).mul_(scale)
            dk[h].baddbmm_(dscores.transpose(1, 2), q[h, r], alpha=scale)
        return dq, dk, dv, None, None, None


def _tiles(heads: int, rows: int, cols: int):
    """(head slice, query-row slice) steps of about SCORES_PER_CHUNK scores: several whole heads while
    a head's scores fit, else one head a band of query rows at a time (softmax is per row)."""
    per_head = rows * cols
    if per_head <= SCORES_PER_CHUNK:
        step = SCORES_PER_CHUNK // per_head
        for i in range(0, heads, step):
            yield slice(i, min(i + step, heads)), slice(None)
        return
    band = max(1, SCORES_PER_CHUNK // cols)
    for i in range(heads):
        for j in range(0, rows, band):
            yield slice(i, i + 1), slice(j, j + band)


def _scores(q, k, keep, heads_per_mask: int, heads: slice, rows: slice, scale: float):
    s = torch.bmm(q, k.transpose(1, 2)).mul_(scale)  # [heads, rows, Nk]
    if keep is not None:
        first, last = heads.start // heads_per_mask, (heads.stop - 1) // heads_per_mask
        if first == last:  # one mask for the whole tile: a view, broadcast over its heads
            mask = keep[first : first + 1]
        else:
            mask = keep[torch.arange(heads.start, heads.stop, device=keep.device) // heads_per_mask]
        mask = mask[:, rows] if keep.shape[1] > 1 else mask
        s.masked_fill_(mask.logical_not(), float("-inf"))
    return s
