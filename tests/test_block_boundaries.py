"""Block boundaries are fixed by the configured length N (block_seq_len), never by a batch's padded length."""

import json

import pytest
import torch
from test_attention import qkv, shapes_computed  # the attention tests' inputs and op-shape probe

from blockbert import BlockBertConfig, BlockBertForMaskedLM, BlockBertForQuestionAnswering, BlockBertModel, ConfigError
from blockbert.formats.convert import export
from blockbert.model.attention import SelfAttention, block_attention, sparse_fixed_mask

TINY = dict(
    vocab_size=60,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    intermediate_size=64,
    max_position_embeddings=32,
    hidden_dropout=0.0,
    attention_dropout=0.0,
)


def batch(windows, length):
    """input_ids, token types and attention mask of ``windows`` (lists of ids) padded to ``length``."""
    ids = torch.zeros(len(windows), length, dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for row, w in enumerate(windows):
        ids[row, : len(w)] = torch.tensor(w)
        types[row, len(w) // 2 : len(w)] = 1  # a question and a paragraph segment
        mask[row, : len(w)] = 1
    return ids, types, mask


def windows_of(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 60, (n,), generator=g).tolist() for n in lengths]


def scores(model, windows, length, row):
    """The model's per-token scores for window ``row`` of a batch padded to ``length``: [len, ...]."""
    ids, types, mask = batch(windows, length)
    with torch.no_grad():
        out = model(ids, mask, types)
    logits = torch.stack([out.start_logits, out.end_logits], -1) if hasattr(out, "start_logits") else out.logits
    return logits[row, : len(windows[row])]


@pytest.mark.parametrize("cls", [BlockBertForQuestionAnswering, BlockBertForMaskedLM])
@pytest.mark.parametrize("heads", ["3:1", "2:1:1"])  # n = 2 and n = 3
@pytest.mark.parametrize("N", [24, 25])  # 25: blocks of ceil(25/n) positions (footnote 4)
def test_a_window_scores_the_same_alone_with_short_windows_and_with_a_full_length_one(cls, heads, N):
    torch.manual_seed(0)
    model = cls(BlockBertConfig(**TINY, attention="block", heads=heads, block_seq_len=N)).eval()
    short, shorter, longer, full = windows_of([10, 7, 17, N])
    for subject in (short, longer):
        alone = scores(model, [subject], len(subject), 0)
        in_short_batch = scores(model, [shorter, subject, short], max(len(shorter), len(subject), len(short)), 1)
        with_full = scores(model, [subject, full], N, 0)
        torch.testing.assert_close(in_short_batch, alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(with_full, alone, atol=1e-5, rtol=0)


def test_the_issues_example_20_tokens_padded_to_20_30_64():
    """Before the fix these differed by up to 0.003 (QA logits) and 0.01 (MLM logits)."""
    torch.manual_seed(0)
    config = BlockBertConfig(**{**TINY, "max_position_embeddings": 64}, attention="block", heads="3:1")
    assert config.block_seq_len == 64  # no block_seq_len: N is the model's positions
    for cls in (BlockBertForQuestionAnswering, BlockBertForMaskedLM):
        model = cls(config).eval()
        (window,) = windows_of([20])
        alone = scores(model, [window], 20, 0)
        for length in (30, 64):
            torch.testing.assert_close(scores(model, [window], length, 0), alone, atol=1e-5, rtol=0)


def test_the_blocks_are_the_configured_ones():
    """N=12, n=3, a 9-token input: blocks are positions 0-3, 4-7, 8-11 (not 0-2, 3-5, 6-8)."""
    config = BlockBertConfig(
        vocab_size=50,
        hidden_size=32,
        num_layers=1,
        num_heads=4,
        max_position_embeddings=64,
        attention="block",
        heads="2:2:0",
        block_seq_len=12,
    )
    model = BlockBertModel(config).eval()
    torch.manual_seed(0)
    ids = torch.randint(5, 50, (1, 9))
    seen = torch.zeros(9, 9, dtype=torch.bool)
    with torch.no_grad():
        base = model(ids)
        for r in range(9):
            changed = ids.clone()
            changed[0, r] = 4 if ids[0, r] != 4 else 3
            seen[:, r] = (model(changed) - base).abs().amax(-1)[0] > 1e-6
    block = torch.arange(9) // 4
    expected = (block[None, :] == block[:, None]) | (block[None, :] == (block[:, None] + 1) % 3)
    assert torch.equal(seen, expected)


@pytest.mark.parametrize("head_counts", [(3, 1), (2, 2), (1, 1, 2), (2, 2, 0), (4, 0, 0), (0, 2, 1, 1)])
@pytest.mark.parametrize("L", [1, 5, 9, 12, 13])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("eager", [False, True])
def test_kernel_on_a_short_input_equals_the_input_padded_to_N(head_counts, L, masked, eager):
    """Skipping the all-padding query blocks gives the padded computation's outputs and gradients."""
    N, H = 13, sum(head_counts)
    q, k, v = qkv(2, H, L, 5)
    key_mask = torch.ones(2, L, dtype=torch.bool)
    if masked:
        key_mask[1, max(1, L - 3) :] = False
    got = block_attention(q, k, v, head_counts, key_mask if masked else None, eager=eager, block_seq_len=N)
    pad = (0, 0, 0, N - L)
    full_mask = torch.nn.functional.pad(key_mask, (0, N - L), value=False)
    expected = block_attention(
        *(torch.nn.functional.pad(t, pad) for t in (q, k, v)), head_counts, full_mask, eager=eager
    )[:, :, :L]
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)
    g = torch.randn_like(got)
    # k and v reach no output when every key block of a shifted-only head config lies past the input (L = 1)
    grads = [
        torch.autograd.grad(out, (q, k, v), g, allow_unused=True, materialize_grads=True) for out in (got, expected)
    ]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_kernel_computes_only_the_query_blocks_holding_the_input():
    q, k, v = (t.detach() for t in qkv(1, 4, 10, 5))
    seen = shapes_computed(block_attention, q, k, v, (2, 1, 1), eager=True, block_seq_len=24)  # m = 8: 2 blocks
    scores = {s for s in seen if len(s) == 4 and s[-2] == 8 and s[-1] != 5}  # [blocks * B, heads, m, keys]; d = 5
    # block 0's 8 keys, then block 1's 2 real positions (sliced, not masked); block 2 holds none and is not computed
    assert {s[-1] for s in scores} == {8, 2} and all(s[0] == 1 for s in scores)


def test_dropout_path_with_skipped_blocks_trains():
    q, k, v = (t.float() for t in qkv(2, 4, 10, 8))
    out = block_attention(q, k, v, (2, 1, 1), torch.ones(2, 10, dtype=torch.bool), dropout_p=0.1, block_seq_len=24)
    out.sum().backward()
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("heads", ["3:1", "2:1:1"])
def test_flex_backend_uses_the_same_blocks(heads):
    torch.manual_seed(0)
    base = dict(
        hidden_size=32,
        num_heads=4,
        attention_dropout=0.0,
        attention="block",
        heads=heads,
        max_position_embeddings=64,
        block_seq_len=50,
    )
    sdpa = SelfAttention(BlockBertConfig(**base)).eval()
    flex = SelfAttention(BlockBertConfig(**base, attention_impl="flex")).eval()
    flex.load_state_dict(sdpa.state_dict())
    for L in (10, 20, 37, 50):
        x = torch.randn(2, L, 32)
        mask = torch.ones(2, L, dtype=torch.bool)
        mask[1, L // 2 :] = False
        with torch.no_grad():
            for key_mask in (None, mask):
                torch.testing.assert_close(flex(x, key_mask), sdpa(x, key_mask), atol=1e-5, rtol=1e-5)
    with pytest.raises(AssertionError), torch.no_grad():  # the model refuses it first (ConfigError, below)
        flex(torch.randn(1, 51, 32))


def test_a_sequence_longer_than_N_is_refused_with_one_line():
    model = BlockBertModel(BlockBertConfig(**TINY, attention="block", heads="3:1", block_seq_len=24))
    with pytest.raises(ConfigError) as info:
        model(torch.ones(1, 25, dtype=torch.long))
    message = str(info.value)
    assert "sequence length 25 exceeds block_seq_len=24" in message and "\n" not in message
    with pytest.raises(AssertionError):  # the kernel asserts what the config checked
        block_attention(*qkv(1, 4, 25, 5), (3, 1), block_seq_len=24)


def test_bad_block_seq_len_is_refused_with_one_line():
    for value, text in [
        (33, "block_seq_len=33 exceeds the model's 32 positions"),
        (-1, "block_seq_len=-1 must be a non-negative integer"),
        (2.5, "block_seq_len=2.5 must be a non-negative integer"),
    ]:
        with pytest.raises(ConfigError) as info:
            BlockBertConfig(**TINY, attention="block", heads="3:1", block_seq_len=value)
        assert text in str(info.value) and "\n" not in str(info.value)
    BlockBertConfig(**TINY, attention="dense", block_seq_len=33)  # read only with block attention


def test_an_old_config_dict_without_the_field_still_builds():
    old = BlockBertConfig(**TINY, attention="block", heads="3:1").to_dict()
    del old["block_seq_len"]
    config = BlockBertConfig(**old)
    assert config.block_seq_len == 32 and config.block_size == 16  # read as the positions when built
    BlockBertForMaskedLM(config)(torch.ones(1, 32, dtype=torch.long))
    roberta = BlockBertConfig(**{**old, "max_position_embeddings": 34, "position_offset": 2})
    assert roberta.block_seq_len == 32  # the longest sequence, not the position table
    grown = BlockBertConfig(**{**old, "max_position_embeddings": 64})
    assert grown.block_seq_len == 64  # 0 follows the positions


def test_export_carries_N_and_an_old_export_without_it_loads_at_its_positions(tmp_path):
    torch.manual_seed(0)
    model = BlockBertForMaskedLM(BlockBertConfig(**TINY, attention="block", heads="3:1")).eval()
    export(model, tmp_path / "new")
    written = json.loads((tmp_path / "new" / "config.json").read_text())["blockbert"]
    assert written["block_seq_len"] == 32
    # an export from before the field: the same directory without it
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "model.safetensors").write_bytes((tmp_path / "new" / "model.safetensors").read_bytes())
    del written["block_seq_len"]
    (tmp_path / "old" / "config.json").write_text(json.dumps({"model_type": "blockbert", "blockbert": written}))
    ids, _, mask = batch(windows_of([11]), 20)
    for name in ("new", "old"):
        again = BlockBertForMaskedLM.from_pretrained(str(tmp_path / name)).eval()
        assert again.config.block_seq_len == 32
        with torch.no_grad():
            torch.testing.assert_close(again(ids, mask).logits, model(ids, mask).logits)
        shorter = BlockBertForMaskedLM.from_pretrained(str(tmp_path / name), max_position_embeddings=20)
        assert shorter.config.block_seq_len == 32  # fine-tuning shorter keeps the pre-trained blocks
        longer = BlockBertForMaskedLM.from_pretrained(str(tmp_path / name), max_position_embeddings=48)
        assert longer.config.block_seq_len == 48  # longer sequences need longer blocks
        chosen = BlockBertForMaskedLM.from_pretrained(str(tmp_path / name), block_seq_len=24)
        assert chosen.config.block_seq_len == 24


def test_a_dense_checkpoint_imported_as_block_takes_N_from_the_requested_length(tmp_path):
    torch.manual_seed(0)
    export(BlockBertForMaskedLM(BlockBertConfig(**TINY)), tmp_path / "dense")  # a Hugging Face BERT directory
    block = BlockBertForMaskedLM.from_pretrained(
        str(tmp_path / "dense"), attention="block", heads="3:1", max_position_embeddings=20
    )
    assert block.config.max_position_embeddings == 32 and block.config.block_seq_len == 20
    plain = BlockBertForMaskedLM.from_pretrained(str(tmp_path / "dense"), attention="block", heads="3:1")
    assert plain.config.block_seq_len == 32


@pytest.mark.parametrize("sparse_impl", ["mask", "blocks"])
def test_sparse_pattern_was_already_position_fixed(sparse_impl):
    """SparseBert's windows are positions g*l ..: the mask at L is the mask at N cut to L x L."""
    for L in (1, 7, 20, 33):
        assert torch.equal(sparse_fixed_mask(L, 8, 2), sparse_fixed_mask(48, 8, 2)[:L, :L])
    torch.manual_seed(0)
    model = BlockBertForQuestionAnswering(
        BlockBertConfig(**TINY, attention="sparse", sparse_stride=8, sparse_expressivity=2, sparse_impl=sparse_impl)
    ).eval()
    (window,) = windows_of([20])
    alone = scores(model, [window], 20, 0)
    for length in (27, 32):
        torch.testing.assert_close(scores(model, [window], length, 0), alone, atol=1e-5, rtol=0)
