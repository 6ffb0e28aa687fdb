"""The CPU attention kernel with dropout against autograd on the same dropout mask."""

import math

import pytest
import torch

import blockbert.model.dropout_attention as da
from blockbert.model.attention import block_attention, dense_attention, sparse_attention, sparse_block_attention


def reference(q, k, v, keep, kept, rate):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    return (scores.softmax(-1) * kept / rate) @ v


@pytest.mark.parametrize("masked", [None, "keys", "per query", "shared"])
@pytest.mark.parametrize("scores_per_tile", [13, 3 * 13, 11 * 13, 4 * 11 * 13, 1 << 20])
def test_outputs_and_gradients_equal_autograd_with_the_same_mask(masked, scores_per_tile, monkeypatch):
    """Tiles of one query row, three rows, one head, four heads, everything (11 queries, 13 keys)."""
    monkeypatch.setattr(da, "SCORES_PER_CHUNK", scores_per_tile)
    drawn = []
    draw = da.draw_keep_mask
    monkeypatch.setattr(da, "draw_keep_mask", lambda out, p: drawn.append(draw(out, p)) or drawn[-1])
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 11, 4, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, 3, 13, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    keep = None
    if masked == "keys":
        keep = torch.ones(2, 1, 1, 13, dtype=torch.bool)
        keep[1, :, :, 9:] = False
    elif masked == "per query":  # a banded pattern, as a sparse mask is
        keep = (torch.arange(11)[:, None] - torch.arange(13)[None, :]).abs() <= 3
        keep = keep.expand(2, 1, 11, 13).clone()
        keep[0, :, :, 5] = False
    elif masked == "shared":  # one [Nq, Nk] pattern for every sequence and head, as the sparse mask is
        keep = (torch.arange(11)[:, None] - torch.arange(13)[None, :]).abs() <= 4
    out = da.dropout_attention(q, k, v, keep, 0.3)
    kept = torch.zeros(6, 11, 13, dtype=torch.bool)
    for (heads, rows), mask in zip(da._tiles(6, 11, 13), drawn):
        kept[heads, rows] = mask
    kept = kept.view(2, 3, 11, 13)
    assert 0 < kept.float().mean() < 1
    expected = reference(q, k, v, keep, kept, da.kept_rate(0.3))
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(expected, (q, k, v), grad)):
        torch.testing.assert_close(a, b)


def test_keep_mask_rate_and_scale_are_exact():
    torch.manual_seed(0)
    mask = da.draw_keep_mask(torch.empty(1000, 1000, dtype=torch.bool), 0.1)
    assert da.kept_rate(0.1) == pytest.approx(0.9, abs=1e-5)
    assert mask.float().mean().item() == pytest.approx(da.kept_rate(0.1), abs=2e-3)
    assert da.kept_rate(0.0) == 1.0


@pytest.mark.parametrize(
    "kernel",
    [
        lambda q, k, v, m, p: dense_attention(q, k, v, m, p),
        lambda q, k, v, m, p: block_attention(q, k, v, (1, 1, 1), m, p),
        lambda q, k, v, m, p: sparse_attention(q, k, v, 8, 2, m, p),
        lambda q, k, v, m, p: sparse_block_attention(q, k, v, 8, 2, m, p),
    ],
)
def test_every_kernel_routes_cpu_dropout_through_it_and_stays_exact_without_drops(kernel, monkeypatch):
    """A rate that rounds to zero drops nothing: the result must equal the no-dropout path, padding included."""
    calls = []
    import blockbert.model.attention as attention

    monkeypatch.setattr(attention, "dropout_attention", lambda *a: calls.append(1) or da.dropout_attention(*a))
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 40, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 25:] = False
    got, expected = kernel(q, k, v, mask, 1e-9), kernel(q, k, v, mask, 0.0)
    assert calls
    torch.testing.assert_close(got, expected)
    for a, b in zip(torch.autograd.grad(got.sum(), (q, k, v)), torch.autograd.grad(expected.sum(), (q, k, v))):
        torch.testing.assert_close(a, b)
