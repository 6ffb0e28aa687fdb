"""The block-major layout (blockbert.model.blocks): a model's block attention against a masked reference written in
test_attention.py, at lengths n does not divide, with and without padding; and the calls it makes to SDPA carry no
mask unless the batch has padding (so a GPU runs its flash kernel whatever N)."""

import pytest
import torch
import torch.nn.functional as F

from blockbert.model import attention
from blockbert.model.attention import SelfAttention
from blockbert.model.blocks import blocks_of
from blockbert.model.config import BlockBertConfig
from blockbert.model.modeling import BlockBertModel
from tests.test_attention import block_permutation_mask, reference_attention

N = 25  # n = 3: blocks of 9, 9 and 7 positions


def config(heads: str, **overrides) -> BlockBertConfig:
    values = dict(vocab_size=40, hidden_size=24, num_heads=6, num_layers=2, max_position_embeddings=N, heads=heads)
    return BlockBertConfig(attention="block", hidden_dropout=0.0, attention_dropout=0.0, **{**values, **overrides})


def padding(batch: int, length: int, padded: bool):
    if not padded:
        return None
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, max(1, length - 6) :] = False
    mask[1, 1::3] = False
    return mask


@pytest.mark.parametrize("heads", ["3:2:1", "0:4:2", "6:0:0", "2:0:4"])
@pytest.mark.parametrize("length", [25, 20, 18, 10, 9, 4])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_self_attention_equals_the_masked_reference(heads, length, padded, impl):
    """Outputs and gradients; a short input whose key blocks all lie past it (0:4:2 at 9 positions or fewer) gives
    zeros and still zero gradients, not none (DDP needs every parameter's gradient)."""
    torch.manual_seed(0)
    layer = SelfAttention(config(heads, attention_impl=impl)).double().train()
    x = torch.randn(3, length, 24, dtype=torch.float64, requires_grad=True)
    mask = padding(3, length, padded)
    got = layer(x, mask)
    q, k, v = layer.qkv(x).view(3, length, 3, 6, 4).permute(2, 0, 3, 1, 4)  # [B, H, L, d]
    allowed = block_permutation_mask(27, layer.config.head_counts)[:, :length, :length][None]  # N padded to 3 * 9
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    expected = layer.out(reference_attention(q, k, v, allowed).transpose(1, 2).reshape(3, length, 24))
    torch.testing.assert_close(got, expected)
    g = torch.randn_like(got)
    params = (x, *layer.parameters())
    for a, b in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(expected, params, g)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("length", [25, 22, 13])
@pytest.mark.parametrize("padded", [False, True])
def test_model_in_blocks_equals_the_jagged_layout(length, padded):
    """The padded layout (block-major) against the jagged one, which computes the blocks as nested tensors."""
    ids = torch.randint(1, 40, (3, length), generator=torch.Generator().manual_seed(1))
    mask = padding(3, length, padded)
    results = []
    for layout in ("padded", "jagged"):
        torch.manual_seed(0)
        model = BlockBertModel(config("3:2:1", layout=layout)).double()
        out = model(ids, mask)
        real = out if mask is None else out[mask]
        real.pow(2).sum().backward()
        results.append((real.detach(), [p.grad for p in model.parameters()]))
    (got, got_grads), (expected, expected_grads) = results
    torch.testing.assert_close(got, expected)
    for a, b in zip(got_grads, expected_grads):
        torch.testing.assert_close(a, b)


def test_sdpa_gets_no_mask_without_padding_whatever_n(monkeypatch):
    """N = 25 is no multiple of 3: the last block's keys are sliced, not masked; with padding, one mask per block is
    shared by the heads."""
    calls = []
    real_sdpa = F.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, **kwargs):
        calls.append((tuple(q.shape), tuple(k.shape), None if attn_mask is None else tuple(attn_mask.shape)))
        return real_sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", recording)
    model = BlockBertModel(config("3:2:1", num_layers=1)).eval()
    ids = torch.randint(1, 40, (2, N))
    model(ids, torch.ones(2, N, dtype=torch.long))
    # per head group (3, 2 and 1 heads): blocks 0 and 1 in one call, the last block's 7 keys in another
    assert calls == [
        ((4, h, 9, 4), (4, h, 9, 4), None) if i == 0 else ((2, h, 9, 4), (2, h, 7, 4), None)
        for h in (3, 2, 1)
        for i in (0, 1)
    ]
    calls.clear()
    model(ids, padding(2, N, True).long())
    assert {mask for _, _, mask in calls} == {(4, 1, 1, 9), (2, 1, 1, 7)}


@pytest.mark.parametrize("length", [25, 18, 9, 3])
def test_to_blocks_and_back(length):
    x = torch.randn(2, length, 5)
    blocks = blocks_of(None, 2, length, 3, N)
    laid = blocks.to_blocks(x)  # [b, B, m, 5]
    assert laid.shape == (-(-length // 9), 2, 9, 5)
    assert torch.equal(blocks.from_blocks(laid), x)
    index = torch.arange(2 * length)
    assert torch.equal(laid.flatten(0, 2)[blocks.index_of(index)], x.flatten(0, 1))


def test_a_short_input_computes_only_the_blocks_it_holds(monkeypatch):
    """N = 24, m = 8, n = 3 and 10 positions (b = 2): the identity heads compute both blocks; a shifted head only the
    query block whose key block holds positions (the other key block lies past the input: zeros, not computed)."""
    problems = []
    real_attend = attention._attend

    def counting(q, k, v, keep, dropout_p, eager):
        problems.append((q.shape[0] * q.shape[1], k.shape[2]))  # (blocks x batch x heads, keys)
        return real_attend(q, k, v, keep, dropout_p, eager)

    monkeypatch.setattr(attention, "_attend", counting)
    q, k, v = (torch.randn(1, 4, 10, 5) for _ in range(3))
    attention.block_attention(q, k, v, (2, 1, 1), block_seq_len=24)
    # identity (2 heads): block 0 (8 keys), block 1 (its 2 positions); shift 1: query block 0 -> key block 1 (2 keys);
    # shift 2: query block 1 -> key block 0 (8 keys)
    assert problems == [(2, 8), (2, 2), (1, 2), (1, 8)]
