"""The block-major layout of block attention (plain PyTorch).

Block attention cuts the configured length N into n blocks of m = ceil(N/n) positions: block i holds positions
i*m .. (i+1)*m - 1 (footnote 4 of the paper pads N to a multiple of n). A batch of B sequences of L <= N positions
has b = ceil(L/m) blocks holding positions, the last one r = L - (b-1)*m of them (r = m when m divides L).

Laid out block-major -- [b, B, m, ...], the last block padded to m -- the blocks of a batch are one batch of
independent problems: the queries, keys and values of any run of blocks are views [c * B, m, H, d] of the layer's
projections, with no copy, for SDPA's fused kernels. The encoder keeps its hidden states this way from the
embeddings to its last layer (:class:`blockbert.model.modeling.BlockBertModel`): two copies per forward, not per
layer. Every layer but attention works token by token, so the order is attention's business only.

The alignment padding (positions L .. b*m - 1) is never a key: the last block's keys are sliced to its r positions
(:func:`blockbert.model.attention.blockwise_attention`), so no mask is needed for it and, on a GPU, SDPA's flash
kernel runs whatever N is; its queries are computed and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Blocks:
    """Where a batch's positions are in the block-major layout, and its key padding there."""

    batch: int  # B
    length: int  # L, positions of the batch-major input
    size: int  # m
    count: int  # b, blocks holding positions
    keep_full: torch.Tensor | None  # [full * B, 1, 1, m] True = real key, in the blocks of m positions; None: all are
    keep_last: torch.Tensor | None  # [B, 1, 1, r] the same in a last block of r < m positions; None: all are, or none
    plans: tuple = ()  # per shift s: how a head group of shift s is computed on these blocks (group_plan)

    @property
    def last(self) -> int:
        """r, the positions of the last block."""
        return self.length - (self.count - 1) * self.size

    @property
    def full(self) -> int:
        """The blocks of m positions: b, or b - 1 when the last holds fewer."""
        return self.count if self.last == self.size else self.count - 1

    def to_blocks(self, x):
        """[B, L, ...] -> [b, B, m, ...] (one copy; zeros in the alignment padding)."""
        m, full = self.size, self.full
        if full == self.count:
            return x.unflatten(1, (self.count, m)).transpose(0, 1).contiguous()
        pieces = list(x[:, : full * m].unflatten(1, (full, m)).unbind(1))
        pieces.append(F.pad(x[:, full * m :], (0, 0) * (x.dim() - 2) + (0, m - self.last)))
        return torch.stack(pieces)

    def from_blocks(self, x):
        """[b, B, m, ...] -> [B, L, ...] (one copy)."""
        if self.full == self.count:
            return x.transpose(0, 1).flatten(1, 2)
        return torch.cat([*x[: self.full].unbind(0), x[self.full, :, : self.last]], dim=1)

    def index_of(self, index):
        """[T] flat positions in the batch-major [B * L] -> the same positions' flat index in [b * B * m]."""
        sequence, position = index // self.length, index % self.length
        block, offset = position // self.size, position % self.size
        return (block * self.batch + sequence) * self.size + offset


def blocks_of(key_mask, batch: int, length: int, n: int, block_seq_len: int) -> Blocks:
    """The block-major layout of a batch of ``length`` positions with ``key_mask`` [B, L] (True = real token; None:
    no padding), for n blocks of the length ``block_seq_len`` (N) is cut into."""
    m = -(-block_seq_len // n)
    layout = Blocks(batch, length, m, -(-length // m), None, None)
    layout.plans = tuple(group_plan(layout.count, layout.full, shift, n) for shift in range(n))
    if key_mask is not None:
        keys = layout.to_blocks(key_mask)  # [b, B, m]
        full, r = layout.full, layout.last
        if full:
            layout.keep_full = keys[:full].reshape(full * batch, 1, 1, m)
        if full < layout.count:
            layout.keep_last = keys[full, :, None, None, :r]
    return layout


def group_plan(b: int, full: int, shift: int, n: int) -> tuple[tuple, tuple, tuple]:
    """How a head group of ``shift`` is computed on b blocks, ``full`` of them of m positions (worked out once per
    forward, for every layer).

    Slot j (key block j) is computed when its query block (j - s) mod n holds positions, in runs of consecutive
    slots whose keys have one length (the last block's are cut to r < m). Returns the runs [first, stop) of slots;
    the computed slots' query blocks; and each query block i's output: slot (i + s) mod n's, or zeros where that key
    block lies past the input. The last two as runs of consecutive blocks (part, first, stop) of one part (the
    queries; the calls' outputs, one per run of slots), or (None, 0, count) of zeros.
    """
    slots = [j for j in range(b) if (j - shift) % n < b]
    runs: list[list[int]] = []
    for j in slots:
        if runs and runs[-1][1] == j and j != full:
            runs[-1][1] += 1
        else:
            runs.append([j, j + 1])
    where = {j: (index, j - first) for index, (first, stop) in enumerate(runs) for j in range(first, stop)}
    queries = [(0, (j - shift) % n) for j in slots]
    outputs = [where.get((i + shift) % n) for i in range(b)]
    return tuple(map(tuple, runs)), _as_runs(queries), _as_runs(outputs)


def _as_runs(sources: list) -> tuple:
    """Blocks (part, index), or None for zeros, as runs (part, first, stop) of consecutive blocks of one part, or
    (None, 0, count)."""
    runs: list[list] = []
    for source in sources:
        last = runs[-1] if runs else None
        if source is None and last is not None and last[0] is None:
            last[2] += 1
        elif source is None:
            runs.append([None, 0, 1])
        elif last is not None and last[0] == source[0] and last[2] == source[1]:
            last[2] += 1
        else:
            runs.append([source[0], source[1], source[1] + 1])
    return tuple(map(tuple, runs))


__all__ = ["Blocks", "blocks_of", "group_plan"]
