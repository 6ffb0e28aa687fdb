"""Packed batches: the encoder on a batch's real tokens only (the unpadded and jagged layouts; plain PyTorch).

A padded batch [B, L] is packed into its T real tokens ([T, hidden], ModernBERT's unpadding), so embeddings' work
aside, every linear layer, LayerNorm and dropout skips padding. The unpadded layout runs attention on the batch
padded again (:meth:`Packing.unpack`; block attention's straight into its block-major layout,
:meth:`Packing.unpack_blocks`); the jagged layout runs it as a jagged batch of independent problems,
computed by SDPA on nested jagged tensors (its variable-length fused kernels on a CUDA GPU, its math kernel per
problem on a CPU):

* dense -- one problem per sequence: its real tokens attend to its real tokens;
* block -- one problem per (sequence, query block, head group): the real tokens of query block i attend to the real
  tokens of key block (i + s) mod n, for the heads of shift s. Blocks are fixed by N (``block_seq_len``) as in
  :func:`blockbert.model.attention.block_attention`: block i holds positions i*m .. (i+1)*m - 1, m = ceil(N/n).
  The query side is the packed tokens as they are; only the shifted heads' keys and values are gathered into their
  key blocks' order. A query block whose key block holds no real token gets a zero output, as on the mask path.

:class:`Packing` is computed once per forward and shared by every layer: the real tokens' index (the forward's host
sync), and for the jagged layout the problems' sizes (a second sync) and one copy of their offsets to the device.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from blockbert.model.blocks import Blocks, blocks_of

# torch.fx logs a notice about is_fx_tracing on the first use of nested tensors: not the user's concern
logging.getLogger("torch.fx._symbolic_trace").addFilter(lambda record: "is_fx_tracing" not in record.getMessage())


@dataclass
class HeadGroup:
    """The problems of the heads ``heads`` (a slice of the head dim) in the packed token order."""

    heads: slice
    query_offsets: torch.Tensor  # [P + 1] int64: problem p's queries are packed tokens offsets[p] .. offsets[p+1]-1
    key_offsets: torch.Tensor  # [P + 1] int64, into the gathered keys
    key_index: torch.Tensor | None  # [T_k] packed token of each gathered key; None: the keys are the queries' tokens
    visible: torch.Tensor | None  # [T, 1, 1] 0 where the query's key block is empty (its output is zero); None: none
    max_query: int
    max_key: int


@dataclass
class Packing:
    """Where a padded batch's real tokens are, and the attention problems over them."""

    index: torch.Tensor | None  # [T] flat index of each real token in [B * L]; None: no padding (T = B * L)
    key_mask: torch.Tensor | None  # [B, L] True = real token; None: no padding
    batch: int
    length: int
    groups: list[HeadGroup] | None  # the jagged layout's attention problems; None: attention on the padded batch
    blocks: Blocks | None = None  # unpadded block attention: the padded batch block-major
    block_index: torch.Tensor | None = None  # [T] each real token's flat index in the block-major [b * B * m]

    def pack(self, x):
        """[B, L, ...] -> [T, ...]: the real tokens, in order."""
        flat = x.reshape(self.batch * self.length, *x.shape[2:])
        return flat if self.index is None else flat[self.index]

    def unpack(self, x):
        """[T, ...] -> [B, L, ...]: the real tokens back in place, zeros at the padding."""
        if self.index is None:
            return x.reshape(self.batch, self.length, *x.shape[1:])
        out = x.new_zeros(self.batch * self.length, *x.shape[1:])
        return out.index_copy(0, self.index, x).view(self.batch, self.length, *x.shape[1:])

    def pack_blocks(self, x):
        """[b, B, m, ...] block-major -> [T, ...]: the real tokens, in order."""
        return x.flatten(0, 2)[self.block_index]

    def unpack_blocks(self, x):
        """[T, ...] -> [b, B, m, ...]: the real tokens in the block-major layout, zeros elsewhere."""
        b, m = self.blocks.count, self.blocks.size
        out = x.new_zeros(b * self.batch * m, *x.shape[1:])
        return out.index_copy(0, self.block_index, x).view(b, self.batch, m, *x.shape[1:])


def packing(
    key_mask,
    batch: int,
    length: int,
    head_counts: tuple,
    block_seq_len: int,
    jagged: bool,
    device,
    index=None,
    block_major: bool = False,
) -> Packing:
    """The packing of a batch of ``length`` tokens with ``key_mask`` [B, L] (True = real; None: all real) and its
    real tokens' flat ``index`` (computed here when not given: a host sync); with ``jagged``, its attention problems
    too: ``head_counts`` (n = its length) and ``block_seq_len`` (N) give the blocks, n = 1 being dense attention.
    The problems' sizes are read on the host (a second sync) and their offsets and indices reach the device in one
    copy, asynchronous from pinned memory on a GPU. Unpadded (not ``jagged``) with ``block_major``, block attention
    runs on the padded batch laid out block-major (:mod:`blockbert.model.blocks`), its tokens put there directly."""
    if key_mask is not None and index is None:
        index = key_mask.reshape(-1).nonzero().squeeze(1)  # [T]
    if not jagged:
        if not block_major:
            return Packing(index, key_mask, batch, length, None)
        blocks = blocks_of(key_mask, batch, length, len(head_counts), block_seq_len)
        flat = torch.arange(batch * length, device=device) if index is None else index
        return Packing(index, key_mask, batch, length, None, blocks, blocks.index_of(flat))
    n = len(head_counts)
    m = -(-block_seq_len // n) if n > 1 else length  # block length; dense: one block, the sequence
    nb = -(-length // m)  # blocks holding positions of this batch
    if key_mask is None:
        counts = torch.tensor([min(m, length - i * m) for i in range(nb)]).repeat(batch, 1)  # [B, nb]
    else:
        padded = F.pad(key_mask, (0, nb * m - length), value=False)
        counts = padded.view(batch, nb, m).sum(-1).cpu()  # [B, nb]
    starts = counts.reshape(-1).cumsum(0) - counts.reshape(-1)  # [B * nb] first packed token of each block
    groups, head = [], 0
    for shift, count in enumerate(head_counts):
        if count:
            groups.append(_head_group(counts, starts, shift, n, slice(head, head + count)))
        head += count
    fields = ("query_offsets", "key_offsets", "key_index", "visible")
    moved = iter(_on_device([getattr(g, name) for g in groups for name in fields], device))
    for group in groups:
        for name in fields:
            setattr(group, name, next(moved))
    return Packing(index, key_mask, batch, length, groups)


def _head_group(counts, starts, shift: int, n: int, heads: slice) -> HeadGroup:
    """The problems of the heads of ``shift``, their offsets and indices on the CPU."""
    B, nb = counts.shape
    blocks = torch.arange(nb)
    query_len = counts.reshape(-1)  # [B * nb]
    real = query_len > 0  # problems: query blocks holding real tokens
    key_block = (blocks + shift) % n  # [nb]
    inside = key_block < nb  # key blocks past the batch's length hold no real token
    key_block = torch.where(inside, key_block, 0)
    key_len = torch.where(inside, counts[:, key_block], 0).reshape(-1)  # [B * nb]
    key_start = starts.view(B, nb)[:, key_block].reshape(-1)
    empty = real & (key_len == 0)
    visible = None
    if bool(empty.any()):  # a stand-in key (the block's first query) keeps the kernel off empty problems
        visible = torch.repeat_interleave((~empty[real]).long(), query_len[real])[:, None, None]  # [T, 1, 1]
        key_start = torch.where(empty, starts, key_start)
        key_len = torch.where(empty, 1, key_len)
    query_len, key_len, key_start = query_len[real], key_len[real], key_start[real]
    query_offsets = F.pad(query_len.cumsum(0), (1, 0))
    key_offsets = F.pad(key_len.cumsum(0), (1, 0))
    key_index = None
    if shift or visible is not None:
        total = int(key_offsets[-1])
        key_index = torch.repeat_interleave(key_start - key_offsets[:-1], key_len, output_size=total)
        key_index += torch.arange(total)
    return HeadGroup(
        heads=heads,
        query_offsets=query_offsets,
        key_offsets=key_offsets,
        key_index=key_index,
        visible=visible,
        max_query=int(query_len.max()) if len(query_len) else 0,
        max_key=int(key_len.max()) if len(key_len) else 0,
    )


def _on_device(tensors: list, device) -> list:
    """CPU int64 tensors (or None) on ``device``: on a GPU in one copy from pinned memory, not waiting for it."""
    present = [t for t in tensors if t is not None]
    if not present or torch.device(device).type == "cpu":
        return tensors
    flat = torch.cat([t.reshape(-1) for t in present]).pin_memory().to(device, non_blocking=True)
    parts = iter(flat.split([t.numel() for t in present]))
    return [None if t is None else next(parts).view(t.shape) for t in tensors]


def jagged_attention(q, k, v, packing: Packing, dropout_p: float = 0.0):
    """Attention over packed tokens: q, k, v [T, H, d] -> [T, H, d], one SDPA call on a jagged batch per head group."""
    outs = []
    for group in packing.groups:
        qg, kg, vg = (t[:, group.heads] for t in (q, k, v))  # [T, h, d]
        if group.max_query == 0:  # no real token in the batch
            outs.append(torch.zeros_like(qg))
            continue
        if group.key_index is not None:
            kg, vg = kg[group.key_index], vg[group.key_index]  # [T_k, h, d]
        with _quiet_prototype() if not qg.is_cuda else contextlib.nullcontext():
            out = F.scaled_dot_product_attention(
                _nested(qg, group.query_offsets, group.max_query),
                _nested(kg, group.key_offsets, group.max_key),
                _nested(vg, group.key_offsets, group.max_key),
                dropout_p=dropout_p,
            )  # [P, h, j, d]
        out = out.transpose(1, 2).values()  # [T, h, d]
        outs.append(out if group.visible is None else out * group.visible.to(out.dtype))  # 0: no key, no output
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)  # [T, H, d]


@contextlib.contextmanager
def _quiet_prototype():
    """On a CPU, SDPA goes through torch's strided nested tensors, which warn that they are a prototype (not on a GPU,
    where entering this each call would only cost time)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors is in prototype stage")
        yield


def _nested(values, offsets, max_len: int):
    """[T, h, d] + offsets -> a nested jagged tensor [P, h, j, d] (SDPA's layout)."""
    if not values.is_cuda or values.dtype == torch.float64 or values.shape[-1] % 8:
        values = values.contiguous()  # SDPA's math kernel (the one left when the fused ones decline) needs it
    return torch.nested.nested_tensor_from_jagged(values, offsets, min_seqlen=1, max_seqlen=max_len).transpose(1, 2)


__all__ = ["Packing", "HeadGroup", "packing", "jagged_attention"]
