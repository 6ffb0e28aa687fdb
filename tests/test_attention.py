"""Attention kernels against naive references written here, independent of the kernels."""

import math

import pytest
import torch

from blockbert.model.attention import (
    block_attention,
    dense_attention,
    sparse_attention,
    sparse_block_attention,
    sparse_fixed_mask,
)


def reference_attention(q, k, v, allowed):
    """Dense softmax attention; ``allowed`` [B or 1, H or 1, N, N]; rows with no key give 0."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.nan_to_num(scores.softmax(-1), nan=0.0)
    return probs @ v


def block_permutation_mask(N, head_counts):
    """[H, N, N]: head with shift s lets query block i see key block (i + s) mod n."""
    n = len(head_counts)
    m = math.ceil(N / n)
    block = torch.arange(N) // m
    masks = []
    for shift, count in enumerate(head_counts):
        allowed = block[None, :] == (block[:, None] + shift) % n
        masks += [allowed] * count
    return torch.stack(masks)


def qkv(B, H, N, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, N, d, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize(
    "head_counts", [(4,), (3, 1), (2, 2), (1, 1, 2), (2, 2, 0), (4, 0, 0), (1, 1, 1, 1), (0, 2, 1, 1)]
)
@pytest.mark.parametrize("N", [12, 13, 7])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("eager", [False, True])
def test_block_attention_matches_masked_reference(head_counts, N, padded, eager):
    H = sum(head_counts)
    q, k, v = qkv(2, H, N, 5)
    key_mask = torch.ones(2, N, dtype=torch.bool)
    if padded:
        key_mask[0, N - 5 :] = False
        key_mask[1, 2:] = False
    n = len(head_counts)
    if N % n:  # the reference pads like footnote 4: extra keys exist but are never real
        pad = -N % n
        allowed = block_permutation_mask(N + pad, head_counts)[:, :N, :N]
    else:
        allowed = block_permutation_mask(N, head_counts)
    allowed = allowed[None] & key_mask[:, None, None, :]
    expected = reference_attention(q, k, v, allowed)
    got = block_attention(q, k, v, head_counts, key_mask if padded else None, eager=eager)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(expected)
    grads_got = torch.autograd.grad(got, (q, k, v), g)
    grads_expected = torch.autograd.grad(expected, (q, k, v), g)
    for a, b in zip(grads_got, grads_expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_one_block_equals_dense_and_eager_equals_sdpa():
    q, k, v = qkv(2, 4, 9, 8)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    dense = dense_attention(q, k, v, mask)
    torch.testing.assert_close(block_attention(q, k, v, (4,), mask), dense)
    torch.testing.assert_close(dense_attention(q, k, v, mask, eager=True), dense)


def shapes_computed(kernel, *args, **kwargs) -> list[tuple]:
    """The shape of every tensor the kernel's ops produce."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Shapes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                seen.append(tuple(out.shape))
            return out

    with Shapes():
        kernel(*args, **kwargs)
    return seen


def test_block_attention_never_builds_full_score_matrix():
    """FLOPs drop by n: the kernel's matmuls see only (N/n) x (N/n) score blocks."""
    q, k, v = (t.detach() for t in qkv(1, 4, 24, 5))
    seen = shapes_computed(block_attention, q, k, v, (2, 1, 1), eager=True)
    assert (3, 2, 8, 8) in seen and (3, 1, 8, 8) in seen  # [B * n, heads of a shift, N/n, N/n] score blocks
    assert not any(len(s) >= 2 and s[-1] == 24 for s in seen)


def test_fully_padded_key_block_gives_finite_output_and_no_leak():
    """n=2, second half padded: heads with shift 1 see only padding from the first block."""
    q, k, v = qkv(1, 2, 8, 4)
    mask = torch.tensor([[True] * 4 + [False] * 4])
    out = block_attention(q, k, v, (1, 1), mask)
    assert torch.isfinite(out).all()
    assert torch.all(out[0, 1, :4] == 0)  # shift-1 head, real queries, all keys padding
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[..., 4:, :] += 100.0
    v2[..., 4:, :] -= 50.0
    out2 = block_attention(q, k2, v2, (1, 1), mask)
    torch.testing.assert_close(out2[..., :4, :], out[..., :4, :])
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_sparse_fixed_mask_small_case_derived_by_hand():
    # l=4, c=1, N=10. Windows: 0..4 (rows 0-4), 4..8 (rows 5-8), 8..9 (row 9).
    # Summaries: the c+1 positions from c before each window's end: {3,4}, {7,8}.
    rows = [{0, 1, 2, 3, 4, 7, 8}] * 5 + [{3, 4, 5, 6, 7, 8}] * 4 + [{3, 4, 7, 8, 9}]
    expected = torch.zeros(10, 10, dtype=torch.bool)
    for i, cols in enumerate(rows):
        expected[i, sorted(cols)] = True
    assert torch.equal(sparse_fixed_mask(10, 4, 1), expected)


def test_sparsebert_density_matches_paper():
    """The paper's SparseBert (l=128, c=32) at N=512: 115,841 of 512^2 entries, 0.4419 -> 44.20 %."""
    mask = sparse_fixed_mask(512, 128, 32)
    assert int(mask.sum()) == 115841
    assert round(mask.float().mean().item(), 3) == 0.442
    assert mask.diagonal().all()


def test_sparse_attention_matches_masked_reference_with_padding():
    q, k, v = qkv(2, 2, 20, 4)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, 13:] = False
    allowed = sparse_fixed_mask(20, 4, 1)[None, None] & mask[:, None, None, :]
    expected = reference_attention(q, k, v, allowed)
    for eager in (False, True):
        torch.testing.assert_close(sparse_attention(q, k, v, 4, 1, mask, eager=eager), expected)


@pytest.mark.parametrize("stride,expressivity", [(4, 1), (4, 3), (3, 2), (8, 3)])
@pytest.mark.parametrize("N", [1, 4, 5, 9, 13, 17, 33])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("eager", [False, True])
def test_sparse_block_attention_matches_masked_reference(stride, expressivity, N, padded, eager):
    """Computing only the pattern's keys gives the masked path's outputs and gradients."""
    q, k, v = qkv(2, 3, N, 5)
    mask = torch.ones(2, N, dtype=torch.bool)
    if padded:
        mask[0, max(1, N - 3) :] = False
        mask[1, max(1, N // 2) :] = False
    allowed = sparse_fixed_mask(N, stride, expressivity)[None, None] & mask[:, None, None, :]
    expected = reference_attention(q, k, v, allowed)
    got = sparse_block_attention(q, k, v, stride, expressivity, mask if padded else None, eager=eager)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(expected)
    for a, b in zip(torch.autograd.grad(got, (q, k, v), g), torch.autograd.grad(expected, (q, k, v), g)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_sparse_block_attention_equals_masked_path_in_float32_with_fused_kernel():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, 150, 16, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 150, dtype=torch.bool)
    mask[1, 90:] = False
    masked = sparse_attention(q, k, v, 32, 8, mask)
    blocks = sparse_block_attention(q, k, v, 32, 8, mask)
    torch.testing.assert_close(blocks, masked, atol=1e-5, rtol=1e-5)
    for a, b in zip(torch.autograd.grad(blocks.sum(), (q, k, v)), torch.autograd.grad(masked.sum(), (q, k, v))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_sparse_block_attention_never_builds_full_score_matrix():
    """N=64, l=8, c=2: 8 windows of 9 queries see 9 local + 24 summary keys, never 64."""
    q, k, v = (t.detach() for t in qkv(1, 2, 64, 5))
    seen = shapes_computed(sparse_block_attention, q, k, v, 8, 2, eager=True)
    assert (1, 16, 9, 33) in seen  # [B, H * windows, l + 1, l + 1 + summaries]
    assert max(math.prod(s) for s in seen) < 2 * 64 * 64  # less than one [B, H, N, N] score matrix


@pytest.mark.parametrize(
    "config",
    [
        dict(attention="dense"),
        dict(attention="block", heads="2:1:1"),
        dict(attention="block", heads="3:1"),
        dict(attention="sparse", sparse_stride=8, sparse_expressivity=2),
    ],
)
def test_flex_backend_equals_sdpa_in_inference(config):
    """FlexAttention (a GPU path; forward only on CPU) computes the same pattern, padding included."""
    from blockbert.model.attention import SelfAttention
    from blockbert.model.config import BlockBertConfig

    torch.manual_seed(0)
    base = dict(hidden_size=32, num_heads=4, attention_dropout=0.0, block_seq_len=37, **config)
    sdpa = SelfAttention(BlockBertConfig(**base)).eval()
    flex = SelfAttention(BlockBertConfig(**base, attention_impl="flex")).eval()
    flex.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 37, 32)
    mask = torch.ones(2, 37, dtype=torch.bool)
    mask[1, 20:] = False
    with torch.no_grad():
        torch.testing.assert_close(flex(x, mask), sdpa(x, mask), atol=1e-5, rtol=1e-5)


def test_flex_kernel_sees_lengths_in_multiples_of_its_tile(monkeypatch):
    """Batches padded to their longest sequence take few shapes at FlexAttention (each shape is a compile on a GPU,
    and past torch.compile's recompile limit the unfused kernel runs): every length is padded to FLEX_BLOCK."""
    from torch.nn.attention import flex_attention as fa

    from blockbert.model.attention import FLEX_BLOCK, SelfAttention
    from blockbert.model.config import BlockBertConfig

    kernel, lengths = fa.flex_attention, []

    def recorded(q, k, v, **kwargs):
        lengths.append(q.shape[2])
        return kernel(q, k, v, **kwargs)

    monkeypatch.setattr(fa, "flex_attention", recorded)
    config = dict(hidden_size=32, num_heads=4, attention_dropout=0.0, attention="block", heads="3:1")
    flex = SelfAttention(BlockBertConfig(**config, attention_impl="flex", block_seq_len=300)).eval()
    with torch.no_grad():
        for L in (37, 100, 129, 300):
            assert flex(torch.randn(1, L, 32)).shape == (1, L, 32)
    assert lengths == [FLEX_BLOCK, FLEX_BLOCK, 2 * FLEX_BLOCK, 3 * FLEX_BLOCK]


def test_flex_backend_refuses_dropout_and_cpu_training():
    from blockbert.errors import ConfigError
    from blockbert.model.attention import SelfAttention
    from blockbert.model.config import BlockBertConfig

    with pytest.raises(ConfigError, match="attention_impl=flex has no attention dropout"):
        BlockBertConfig(attention_impl="flex", attention_dropout=0.1)
    layer = SelfAttention(BlockBertConfig(hidden_size=32, num_heads=4, attention_impl="flex", attention_dropout=0.0))
    with pytest.raises(ConfigError, match="trains only on a CUDA GPU"):
        layer(torch.randn(1, 8, 32))
