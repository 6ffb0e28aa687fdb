import dataclasses

import pytest
import torch

from blockbert import (
    PRESETS,
    BlockBertConfig,
    BlockBertForMaskedLM,
    BlockBertForPreTraining,
    BlockBertForQuestionAnswering,
    BlockBertModel,
    ConfigError,
    preset_config,
)
from blockbert.model.attention import sparse_fixed_mask


def one_layer(**kw):
    base = dict(vocab_size=50, hidden_size=32, num_layers=1, num_heads=4, max_position_embeddings=64)
    base.update(kw)
    model = BlockBertModel(BlockBertConfig(**base)).eval()
    return model


def influence(model, N):
    """[N, N] bool: entry (p, r) is True when changing token r changes the output at p."""
    torch.manual_seed(0)
    ids = torch.randint(5, 50, (1, N))
    with torch.no_grad():
        base = model(ids)
        seen = torch.zeros(N, N, dtype=torch.bool)
        for r in range(N):
            changed = ids.clone()
            changed[0, r] = 4 if ids[0, r] != 4 else 3
            diff = (model(changed) - base).abs().amax(-1)[0]  # [N]
            seen[:, r] = diff > 1e-6
    return seen


def test_dense_pattern_every_position_sees_every_other():
    assert influence(one_layer(attention="dense"), 9).all()


def test_block_pattern_2_2_0():
    """n=3, N=12 (blocks of 4): two heads identity, two heads shift 1, none shift 2."""
    seen = influence(one_layer(attention="block", heads="2:2:0", block_seq_len=12), 12)
    block = torch.arange(12) // 4
    expected = (block[None, :] == block[:, None]) | (block[None, :] == (block[:, None] + 1) % 3)
    assert torch.equal(seen, expected)


@pytest.mark.parametrize("sparse_impl", ["mask", "blocks"])
def test_sparse_pattern_small_stride(sparse_impl):
    seen = influence(one_layer(attention="sparse", sparse_stride=4, sparse_expressivity=1, sparse_impl=sparse_impl), 14)
    assert torch.equal(seen, sparse_fixed_mask(14, 4, 1) | torch.eye(14, dtype=torch.bool))


def test_sparse_blocks_model_equals_masked_model_with_padding():
    torch.manual_seed(0)
    masked = BlockBertForMaskedLM(preset_config("tiny", attention="sparse", sparse_impl="mask")).eval()
    blocks = BlockBertForMaskedLM(preset_config("tiny", attention="sparse", sparse_impl="blocks")).eval()
    blocks.load_state_dict(masked.state_dict())
    ids = torch.randint(5, 100, (2, 70))
    attention_mask = torch.ones_like(ids)
    attention_mask[1, 41:] = 0
    with torch.no_grad():
        expected = masked(ids, attention_mask).logits
        got = blocks(ids, attention_mask).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kind",
    [
        dict(attention="dense"),
        dict(attention="block", heads="1:2:1"),
        dict(attention="sparse", sparse_stride=4, sparse_expressivity=2),
        dict(attention="dense", attention_impl="eager"),
    ],
)
def test_padding_is_finite_and_never_leaks(kind):
    model = one_layer(num_layers=2, **kind)
    ids = torch.randint(5, 50, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[0, 5:] = 0
    with torch.no_grad():
        out = model(ids, mask)
        other = ids.clone()
        other[0, 5:] = torch.randint(5, 50, (6,))
        out2 = model(other, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out2[0, :5], out[0, :5])
    torch.testing.assert_close(out2[1], out[1])


def test_block_with_padding_to_multiple_of_n_matches_unpadded_length():
    """N=10 with n=3: internal padding; output has N rows and gradients are finite."""
    model = one_layer(attention="block", heads="2:1:1", block_seq_len=10)
    ids = torch.randint(5, 50, (2, 10))
    out = model(ids)
    assert out.shape == (2, 10, 32)
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_runs_forward_and_backward_at_tiny_scale(name):
    preset = PRESETS[name]
    config = preset_config(
        name, hidden_size=48, num_layers=1, intermediate_size=64, vocab_size=120, sparse_stride=8, sparse_expressivity=2
    )
    assert config.attention == preset.config.attention and config.heads == preset.config.heads
    cls = BlockBertForPreTraining if preset.next_sentence_prediction else BlockBertForMaskedLM
    model = cls(config)
    ids = torch.randint(0, 120, (2, 20))
    labels = torch.full_like(ids, -100)
    labels[:, 3] = ids[:, 3]
    kwargs = dict(next_sentence_label=torch.tensor([0, 1])) if preset.next_sentence_prediction else {}
    out = model(ids, torch.ones_like(ids), labels=labels, **kwargs)
    out.loss.backward()
    assert out.logits.shape == (2, 20, 120)
    assert torch.isfinite(model.encoder.embeddings.word.weight.grad).all()


def test_paper_presets_have_paper_sizes():
    for name in ("google_bert", "roberta_2seq", "roberta_1seq", "sparsebert", "blockbert_n2", "blockbert_n3"):
        c = PRESETS[name].config
        assert (c.num_layers, c.hidden_size, c.num_heads, c.vocab_size, c.intermediate_size) == (
            12,
            768,
            12,
            30522,
            3072,
        )
    assert PRESETS["blockbert_n2"].config.head_counts == (10, 2)
    assert PRESETS["blockbert_n3"].config.num_blocks == 3
    assert (PRESETS["sparsebert"].config.sparse_stride, PRESETS["sparsebert"].config.sparse_expressivity) == (128, 32)
    assert [n for n, p in PRESETS.items() if p.next_sentence_prediction] == ["google_bert", "roberta_2seq"]


def test_mlm_decoder_is_tied_to_input_embeddings():
    model = BlockBertForMaskedLM(preset_config("tiny"))
    assert model.mlm.decoder_weight is model.encoder.embeddings.word.weight


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    config = preset_config("tiny", hidden_dropout=0.0, attention_dropout=0.0)
    a = BlockBertForMaskedLM(config).train()
    b = BlockBertForMaskedLM(dataclasses.replace(config, gradient_checkpointing=True)).train()
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, config.vocab_size, (2, 16))
    for m in (a, b):
        m(ids, labels=ids).loss.backward()
    torch.testing.assert_close(a.encoder.layers[0].ffn_in.weight.grad, b.encoder.layers[0].ffn_in.weight.grad)


def test_question_answering_head_and_loss():
    model = BlockBertForQuestionAnswering(preset_config("tiny"))
    ids = torch.randint(0, 100, (3, 24))
    out = model(ids, start_positions=torch.tensor([1, 2, 30]), end_positions=torch.tensor([3, 2, 30]))
    assert out.start_logits.shape == out.end_logits.shape == (3, 24)
    assert torch.isfinite(out.loss)
    out.loss.backward()


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout():
    model = BlockBertModel(preset_config("tiny"))
    ids = torch.randint(0, 100, (2, 16))
    model.eval()
    torch.testing.assert_close(model(ids), model(ids))
    model.train()
    assert not torch.allclose(model(ids), model(ids))


BAD_CONFIGS = [
    (dict(attention="block", heads="7:2"), "heads='7:2' assigns 9 heads"),
    (dict(attention="block", heads="10:x"), "heads='10:x' is not a head config"),
    (dict(attention="block", heads=""), "heads='' is not a head config"),
    (dict(attention="block", heads="10::2"), "is not a head config"),
    (dict(attention="block", heads="1.5:10.5"), "is not a head config"),
    (dict(hidden_size=100), "hidden_size=100 is not divisible by num_heads=12"),
    (dict(attention="flash"), "attention='flash' is unknown: accepted are dense, block, sparse"),
    (dict(attention_impl="cuda"), "attention_impl='cuda' is unknown"),
    (dict(sparse_impl="dense"), "sparse_impl='dense' is unknown: accepted are mask, blocks"),
    (dict(attention="sparse", sparse_stride=4, sparse_expressivity=4), "sparse_expressivity=4"),
    (dict(num_layers=0), "num_layers=0 must be a positive integer"),
]


@pytest.mark.parametrize("kwargs,message", BAD_CONFIGS)
def test_bad_config_raises_one_line_error(kwargs, message):
    with pytest.raises(ConfigError) as info:
        BlockBertConfig(**kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_heads_ignored_unless_block_and_zero_counts_legal():
    assert BlockBertConfig(attention="dense", heads="nonsense").num_blocks == 1
    assert BlockBertConfig(attention="block", heads="12:0").head_counts == (12, 0)


def test_sequence_longer_than_positions_is_rejected():
    model = BlockBertModel(preset_config("tiny"))
    with pytest.raises(ConfigError, match="sequence length 129 exceeds max_position_embeddings=128"):
        model(torch.zeros(1, 129, dtype=torch.long))


def test_unknown_preset_names_accepted_ones():
    with pytest.raises(ConfigError, match="'bert_large' is unknown: accepted are blockbert_n2, .*google_bert"):
        preset_config("bert_large")


@pytest.mark.parametrize("cls", [BlockBertForMaskedLM, BlockBertForPreTraining])
def test_masked_only_logits_give_identical_loss_and_gradients(cls):
    torch.manual_seed(0)
    model = cls(preset_config("tiny", hidden_dropout=0.0, attention_dropout=0.0))
    ids = torch.randint(5, 100, (3, 20))
    labels = torch.full_like(ids, -100)
    labels[:, [2, 7, 11]] = ids[:, [2, 7, 11]]
    kwargs = dict(next_sentence_label=torch.tensor([0, 1, 0])) if cls is BlockBertForPreTraining else {}
    outputs, grads = [], []
    for masked_only in (False, True):
        model.zero_grad()
        out = model(ids, labels=labels, masked_only=masked_only, **kwargs)
        out.loss.backward()
        outputs.append(out)
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    full, masked = outputs
    assert masked.logits.shape == (9, model.config.vocab_size)
    torch.testing.assert_close(masked.loss, full.loss)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
