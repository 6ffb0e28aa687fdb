"""torch.compile of the block model on CPU (``compile=true`` compiles the model the same way): every layout traces and
gives eager's loss and gradients, and the padded layout breaks the graph only where the forward reads how many real
tokens a batch holds. AOTAutograd's eager backend traces the graphs as inductor gets them, without generating code
(inductor's code for a GPU is checked in tests/test_gpu.py)."""

import pytest
import torch

from blockbert import BlockBertForMaskedLM, preset_config

L = 25  # n=3 does not divide it: blocks of 9, 9 and 7 positions


def tiny(layout: str, heads: str):
    preset = "blockbert_n3" if heads.count(":") == 2 else "blockbert_n2"
    return preset_config(
        preset,
        hidden_size=32,
        num_heads=4,
        heads=heads,
        num_layers=2,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=L,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        layout=layout,
    )


def batch(padded: bool):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (3, L), generator=g)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 20:] = 0
        mask[2, 7:] = 0  # within the first block
    labels = torch.where(torch.rand(3, L, generator=g) < 0.3, ids, -100)
    return ids, mask, labels


@pytest.mark.parametrize(
    "layout, heads, padded",
    [("padded", "2:1:1", True), ("padded", "2:1:1", False), ("padded", "0:4", False), ("unpadded", "2:1:1", True)]
    + [("jagged", "2:1:1", True)],
)
def test_the_compiled_block_model_trains_as_the_eager_one(layout, heads, padded):
    torch.manual_seed(0)
    torch._dynamo.reset()
    eager = BlockBertForMaskedLM(tiny(layout, heads))
    compiled = BlockBertForMaskedLM(tiny(layout, heads))
    compiled.load_state_dict(eager.state_dict())
    compiled.compile(backend="aot_eager")
    ids, mask, labels = batch(padded)
    losses = []
    for model in (eager, compiled):
        loss = model(ids, mask, labels=labels).loss
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0])
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)


@pytest.mark.parametrize("padded", [False, True])
def test_the_padded_layout_breaks_the_graph_only_at_the_real_token_count(padded):
    """The layers are one graph: the block-major layout's plans depend on shapes only, not on data."""
    torch._dynamo.reset()
    model = BlockBertForMaskedLM(tiny("padded", "2:1:1"))
    ids, mask, _ = batch(padded)
    explained = torch._dynamo.explain(model)(ids, mask)
    reasons = [reason.reason for reason in explained.break_reasons]
    assert reasons and all("nonzero" in reason for reason in reasons), reasons
