"""The layouts of a padded batch (padded, unpadded, jagged) give the same outputs and gradients at its real tokens;
auto unpads where it pays; the data loaders' options follow the device."""

import itertools
import json
import pickle
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir

from blockbert.data.pretrain_datamodule import PretrainDataModule
from blockbert.errors import ConfigError
from blockbert.model import modeling
from blockbert.model.attention import block_attention, dense_attention
from blockbert.model.config import BlockBertConfig
from blockbert.model.jagged import jagged_attention, packing
from blockbert.model.modeling import BlockBertForPreTraining, BlockBertForQuestionAnswering, BlockBertModel
from blockbert.paths import config_dir

TINY = dict(vocab_size=50, hidden_size=24, num_layers=2, num_heads=6, max_position_embeddings=40)
KINDS = {
    "dense": dict(attention="dense"),
    "n=2": dict(attention="block", heads="4:2"),
    "n=3, N=25": dict(attention="block", heads="3:2:1", block_seq_len=25),  # blocks of 9, 9, 7 positions
    "n=3, shift 1 empty": dict(attention="block", heads="4:0:2"),
    "sparse": dict(attention="sparse", sparse_stride=4, sparse_expressivity=1),
}


def key_mask(batch: int, length: int, holes: bool, seed: int = 0) -> torch.Tensor:
    """Sequences of length, length - 4 and length // 2 (padding at the end); with ``holes`` masked positions inside."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([length, max(1, length - 4), max(1, length // 2)])[:batch]
    mask = torch.arange(length)[None, :] < lengths[:, None]
    if holes:
        mask &= torch.rand(batch, length, generator=g) > 0.3
        mask[:, 0] = True
    return mask


@pytest.mark.parametrize(
    "counts, N, L, holes",
    [
        (c, N, L, h)
        for c, N, L, h in itertools.product([(6,), (4, 2), (3, 2, 1), (2, 0, 4)], [12, 13], [13, 12, 7, 3], [0, 1])
        if L <= N
    ],
)
def test_jagged_attention_equals_the_mask_path_in_values_and_gradients(counts, N, L, holes):
    """Every head group, N divisible by n or not, short inputs whose key blocks hold no real token (zero output),
    padding at the end or anywhere: the jagged problems give the mask path's outputs and gradients at real tokens."""
    torch.manual_seed(0)
    B, H, d = 3, 6, 8
    q, k, v = (torch.randn(B, H, L, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = key_mask(B, L, bool(holes))
    reference = (
        dense_attention(q, k, v, mask) if len(counts) == 1 else block_attention(q, k, v, counts, mask, 0.0, False, N)
    )
    packed = packing(mask, B, L, counts, N, True, "cpu")
    out = packed.unpack(jagged_attention(*(packed.pack(t.transpose(1, 2)) for t in (q, k, v)), packed)).transpose(1, 2)
    real = mask[:, None, :, None]
    torch.testing.assert_close(out * real, reference * real)
    weights = torch.randn_like(reference) * real
    expected = torch.autograd.grad((reference * weights).sum(), (q, k, v))
    got = torch.autograd.grad((out * weights).sum(), (q, k, v))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_a_query_block_whose_key_block_is_padding_gets_zero_output():
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, :3] = True  # N=8, n=2: block 1 (positions 4..7) is all padding
    packed = packing(mask, 1, 8, (1, 1), 8, True, "cpu")
    q = torch.randn(3, 2, 4)
    out = jagged_attention(q, q, q, packed)  # [T, H, d]
    assert out[:, 1].abs().max() == 0  # the shift-1 head: block 0 sees block 1
    assert out[:, 0].abs().min() > 0


def outputs(cls, kind: dict, layout: str, ids, mask, **config):
    torch.manual_seed(0)
    model = cls(BlockBertConfig(**TINY, **kind, layout=layout, hidden_dropout=0.0, attention_dropout=0.0, **config))
    out = model.train()(ids, mask)
    if isinstance(out, torch.Tensor):
        scores = out
    else:
        scores = torch.stack([out.start_logits, out.end_logits], -1) if hasattr(out, "start_logits") else out.logits
    real = scores[mask.bool()]
    (real * torch.linspace(-1, 1, real.numel()).view_as(real)).sum().backward()
    return real.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("cls", [BlockBertModel, BlockBertForPreTraining, BlockBertForQuestionAnswering])
def test_every_layout_gives_the_same_outputs_and_gradients_at_real_tokens(cls, kind):
    ids = torch.randint(1, 50, (3, 25), generator=torch.Generator().manual_seed(1))
    mask = key_mask(3, 25, holes=False).long()
    expected, expected_grads = outputs(cls, KINDS[kind], "padded", ids, mask)
    for layout in ("unpadded", "jagged") if kind != "sparse" else ("unpadded",):
        got, grads = outputs(cls, KINDS[kind], layout, ids, mask)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert grads.keys() == expected_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, expected_grads[name], atol=1e-5, rtol=1e-4, msg=f"{layout} {name}")


@pytest.mark.parametrize("layout", ["padded", "unpadded", "jagged"])
def test_layouts_under_gradient_checkpointing(layout):
    ids = torch.randint(1, 50, (3, 20), generator=torch.Generator().manual_seed(2))
    mask = key_mask(3, 20, holes=True, seed=3).long()
    kind = KINDS["n=2"]
    expected, expected_grads = outputs(BlockBertForQuestionAnswering, kind, "padded", ids, mask)
    got, grads = outputs(BlockBertForQuestionAnswering, kind, layout, ids, mask, gradient_checkpointing=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_jagged_attention_dropout_is_seeded_and_keeps_the_expectation():
    mask = key_mask(2, 16, holes=False)
    packed = packing(mask, 2, 16, (2, 2), 16, True, "cpu")
    q, k, v = (torch.randn(int(mask.sum()), 4, 8) for _ in range(3))
    plain = jagged_attention(q, k, v, packed)
    torch.manual_seed(0)
    first = jagged_attention(q, k, v, packed, dropout_p=0.5)
    torch.manual_seed(0)
    assert torch.equal(jagged_attention(q, k, v, packed, dropout_p=0.5), first)
    assert not torch.allclose(first, plain)
    mean = torch.stack([jagged_attention(q, k, v, packed, dropout_p=0.5) for _ in range(400)]).mean(0)
    assert (mean - plain).abs().mean() < 0.1 * plain.abs().mean()


@pytest.mark.parametrize("layout", ["padded", "unpadded", "jagged"])
def test_a_batch_of_padding_only_runs_in_every_layout(layout):
    model = BlockBertForQuestionAnswering(BlockBertConfig(**TINY, **KINDS["n=2"], layout=layout)).eval()
    ids = torch.randint(1, 50, (2, 12))
    out = model(ids, torch.zeros_like(ids))
    assert out.start_logits.shape == (2, 12) and not out.start_logits.isnan().any()
    packed = packing(torch.zeros(2, 12, dtype=torch.bool), 2, 12, (4, 2), 40, True, "cpu")
    assert jagged_attention(*(torch.randn(0, 6, 4) for _ in range(3)), packed).shape == (0, 6, 4)


def test_qa_logits_at_padding_are_never_an_answer():
    ids = torch.randint(1, 50, (3, 25), generator=torch.Generator().manual_seed(1))
    mask = key_mask(3, 25, holes=False).long()
    for layout in ("padded", "unpadded"):
        out = BlockBertForQuestionAnswering(BlockBertConfig(**TINY, layout=layout)).eval()(ids, mask)
        assert (out.start_logits[mask == 0] == torch.finfo(torch.float32).min).all()


def test_auto_unpads_a_batch_only_when_its_padding_pays(monkeypatch):
    """auto: padded without padding or with little of it; unpadded at a fill at most UNPAD_BELOW_FILL."""
    model = BlockBertModel(BlockBertConfig(**TINY, attention="block", heads="4:2"))
    assert model.layout_for(100, None) == "padded"
    assert model.layout_for(100, 100) == "padded"
    assert model.layout_for(100, 95) == "padded"
    assert model.layout_for(100, int(100 * modeling.UNPAD_BELOW_FILL)) == "unpadded"
    chosen = []
    real_packing = modeling.packing
    monkeypatch.setattr(modeling, "packing", lambda *a: chosen.append(a[5]) or real_packing(*a))
    ids = torch.randint(1, 50, (3, 25))
    model(ids, key_mask(3, 25, holes=False).long())  # 25 + 21 + 12 of 75 positions: unpadded
    model(ids, torch.ones_like(ids))
    assert chosen == [False]


def test_a_layout_the_attention_cannot_take_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"layout=jagged computes dense or block attention.*use layout=unpadded"):
        BlockBertConfig(**TINY, **KINDS["sparse"], layout="jagged")
    with pytest.raises(ConfigError, match=r"layout='packed' is unknown: accepted are auto, padded, unpadded, jagged"):
        BlockBertConfig(**TINY, layout="packed")


def test_benchmark_layout_mode_compares_the_layouts_on_the_same_weights(blockbert, tmp_path):
    args = ["layout.models=[blockbert_n2]", "layout.fills=[1.0,0.5]", "layout.batch_size=2", "layout.seq_len=64"]
    blockbert(tmp_path, "benchmark", "mode=layout", "size=cpu_tiny", *args, "repeats=1", "warmup=0", "hydra.run.dir=b")
    records = json.loads((tmp_path / "b" / "benchmark.json").read_text())["records"]
    assert {r["layout"] for r in records} == {"padded", "unpadded", "jagged"}
    assert sorted({r["fill"] for r in records}) == [pytest.approx(0.5, abs=0.02), 1.0]
    assert {r["phase"].split()[0] for r in records} == {"train", "inference"}
    for r in records:
        assert r["model"] == f"blockbert_n2 {r['layout']}"
        assert r["ratio_to_baseline"] == (
            1.0
            if r["layout"] == "padded"
            else pytest.approx(
                r["median_s"]
                / next(p["median_s"] for p in records if p["layout"] == "padded" and p["phase"] == r["phase"])
            )
        )


def test_loader_options_follow_the_device():
    module = PretrainDataModule.__new__(PretrainDataModule)
    on = {"cpu": SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")), num_devices=1)}
    on["cuda"] = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)), num_devices=2)
    for device, trainer in on.items():
        module.trainer = trainer
        options = module.loader_options(None)
        assert options["pin_memory"] == (device == "cuda")
        assert options["num_workers"] == 0 if device == "cpu" else 1 <= options["num_workers"] <= 4
        assert options["persistent_workers"] == (options["num_workers"] > 0)
        assert module.loader_options(2) == dict(num_workers=2, pin_memory=device == "cuda", persistent_workers=True)


def test_loader_workers_give_the_same_batches(tmp_path):
    """data.num_workers=2 (the masking keyed by stream position) draws exactly the batches one process draws."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="pretrain", overrides=["data.generated_documents=40", "data.max_seq_length=64"])
    batches = {}
    for workers in (0, 2):
        cfg.data.num_workers = workers
        module = PretrainDataModule(cfg.data, False, 4, 0, tmp_path / "cache")
        module.setup()
        batches[workers] = list(itertools.islice(module.train_dataloader(), 3))
    for ours, theirs in zip(batches[0], batches[2]):
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), key
    for loader in (module.train_dataloader(), module.val_dataloader()):  # what spawned workers (macOS, 3.14) get
        assert pickle.loads(pickle.dumps(loader.collate_fn)).__class__ is loader.collate_fn.__class__
