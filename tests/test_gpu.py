"""GPU paths: fused SDPA kernels with dropout, half precision, FlexAttention, torch.compile, and Appendix A.2's
peak-memory estimate of activation memory.

Skipped without CUDA. Needs torch and blockbert with Hydra's packages (presets and plan compose configs): on a bare
GPU image, benchmarks/gpu_check.sh installs those from the wheels gpu_wheels.sh carries, then runs it.
"""

import pytest
import torch

from blockbert import BlockBertForMaskedLM, preset_config
from blockbert.measure.memory import a2_activation_bytes, fit_linear_quadratic, measure_step
from blockbert.measure.models import build, random_batch
from blockbert.model.attention import SelfAttention, block_attention, sparse_attention, sparse_block_attention
from blockbert.model.config import BlockBertConfig
from blockbert.model.jagged import jagged_attention, packing

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def qkv(B=2, H=12, N=1024, d=64, dtype=torch.float32, seed=0):
    g = torch.Generator(device=CUDA).manual_seed(seed)
    return [torch.randn(B, H, N, d, generator=g, device=CUDA, dtype=dtype, requires_grad=True) for _ in range(3)]


def padding_mask(B, N):
    mask = torch.ones(B, N, dtype=torch.bool, device=CUDA)
    mask[-1, N * 3 // 4 :] = False
    return mask


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("padded", [False, True])
def test_block_attention_uses_fused_kernels_with_dropout(dtype, padded):
    """With the math kernel switched off, SDPA must still run: flash or memory-efficient, dropout on."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = qkv(dtype=dtype)
    mask = padding_mask(2, 1024) if padded else None
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
        out = block_attention(q, k, v, (8, 2, 2), mask, dropout_p=0.1)
        out.float().sum().backward()
    assert torch.isfinite(out).all() and all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("heads,N", [("10:2", 1024), ("8:2:2", 1024), ("8:2:2", 4096)])
def test_block_attention_runs_on_flash_alone_without_padding(heads, N):
    """A training step of a BlockBERT layer in bf16 with dropout, SDPA limited to its flash kernel: n=3 at N = 1024
    and 4096 (not multiples of 3) included, as the last block's keys are sliced, not masked."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    config = BlockBertConfig(hidden_size=768, num_heads=12, max_position_embeddings=N, attention="block", heads=heads)
    layer = SelfAttention(config).to(CUDA).train()
    x = torch.randn(2, N, 768, device=CUDA, requires_grad=True)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), torch.autocast("cuda", dtype=torch.bfloat16):
        out = layer(x)
    out.float().sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype,atol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_half_precision_block_and_sparse_match_float32(dtype, atol):
    q, k, v = (t.detach() for t in qkv(N=1000))
    mask = padding_mask(2, 1000)
    half = [t.to(dtype) for t in (q, k, v)]
    for kernel, args in (
        (block_attention, ((10, 2),)),
        (sparse_block_attention, (128, 32)),
        (sparse_attention, (128, 32)),
    ):
        expected = kernel(q, k, v, *args, mask)
        torch.testing.assert_close(kernel(*half, *args, mask).float(), expected, atol=atol, rtol=0)


@pytest.mark.parametrize(
    "dtype,atol,d",
    [(torch.float16, 2e-3, 64), (torch.bfloat16, 2e-2, 64), (torch.float32, 1e-4, 64), (torch.bfloat16, 4e-2, 12)],
)
@pytest.mark.parametrize("counts,N", [((12,), 1024), ((10, 2), 1024), ((8, 2, 2), 1024), ((8, 2, 2), 1000)])
def test_jagged_attention_on_cuda_matches_the_mask_path(counts, N, dtype, atol, d):
    """The jagged layout (variable-length flash attention through nested jagged tensors in half precision, the
    memory-efficient kernel in float32, the math kernel for a head size the fused ones decline) against the mask path
    in float32, forward and backward, with padding that leaves a key block empty; dropout runs."""
    from blockbert.model.attention import dense_attention

    q, k, v = (t.detach() for t in qkv(B=3, N=N, d=d))
    mask = padding_mask(3, N)
    mask[1, N // 4 :] = False  # shorter than one block: its shifted heads see only padding
    reference = (
        dense_attention(q, k, v, mask) if len(counts) == 1 else block_attention(q, k, v, counts, mask, 0.0, False, N)
    )
    packed = packing(mask, 3, N, counts, N, True, CUDA)
    half = [packed.pack(t.transpose(1, 2)).to(dtype).requires_grad_() for t in (q, k, v)]  # [T, H, d]
    out = jagged_attention(*half, packed)
    real = mask[:, :, None, None]
    torch.testing.assert_close(packed.unpack(out).float() * real, reference.transpose(1, 2) * real, atol=atol, rtol=0)
    out.float().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in half)
    dropped = jagged_attention(*half, packed, dropout_p=0.1)
    dropped.float().sum().backward()
    assert torch.isfinite(dropped).all() and not torch.equal(dropped, out)


@pytest.mark.parametrize("layout", ["unpadded", "jagged"])
def test_layouts_train_on_cuda_as_padded_does(layout):
    """A bf16 training step of BlockBERT n=3 on a padded batch: the same loss and gradients in every layout."""
    torch.manual_seed(0)
    size = dict(hidden_size=768, num_heads=12, num_layers=2, vocab_size=1000, hidden_dropout=0.0, attention_dropout=0.0)
    batch = random_batch(8, 512, 1000, CUDA, fill=0.6)
    grads = {}
    for name in ("padded", layout):
        torch.manual_seed(0)
        model = BlockBertForMaskedLM(preset_config("blockbert_n3", **size, max_position_embeddings=512, layout=name))
        model = model.to(CUDA).train()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        grads[name] = (loss.detach(), torch.cat([p.grad.flatten().float() for p in model.parameters()]))
    torch.testing.assert_close(grads[layout][0], grads["padded"][0], atol=2e-2, rtol=0)
    cosine = torch.nn.functional.cosine_similarity(grads[layout][1], grads["padded"][1], dim=0)
    assert cosine > 0.99


@pytest.mark.parametrize(
    "config,length",
    [
        (dict(attention="block", heads="8:2:2"), 1024),
        (dict(attention="block", heads="8:2:2"), 1000),  # padded to FLEX_BLOCK's multiple, 1024, for the kernel
        (dict(attention="block", heads="10:2"), 1024),
        (dict(attention="sparse"), 1024),
        (dict(attention="dense"), 1024),
    ],
)
def test_flex_equals_sdpa_forward_and_backward(config, length):
    torch.manual_seed(0)
    base = dict(hidden_size=768, num_heads=12, attention_dropout=0.0, max_position_embeddings=1024, **config)
    sdpa = SelfAttention(BlockBertConfig(**base)).to(CUDA)
    flex = SelfAttention(BlockBertConfig(**base, attention_impl="flex")).to(CUDA)
    flex.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, length, 768, device=CUDA, requires_grad=True)
    mask = padding_mask(2, length)
    expected = sdpa(x, mask)
    (grad_expected,) = torch.autograd.grad(expected.sum(), x)
    got = flex(x, mask)
    (grad_got,) = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(grad_got, grad_expected, atol=2e-3, rtol=2e-3)


def test_compiled_model_matches_eager_training_step():
    torch.manual_seed(0)
    config = preset_config(
        "blockbert_n3", num_layers=2, max_position_embeddings=1024, hidden_dropout=0.0, attention_dropout=0.0
    )
    eager = BlockBertForMaskedLM(config).to(CUDA)
    compiled = BlockBertForMaskedLM(config).to(CUDA)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile()
    ids = torch.randint(5, config.vocab_size, (2, 1024), device=CUDA)
    labels = torch.where(torch.rand(2, 1024, device=CUDA) < 0.15, ids, -100)
    losses = []
    for model in (eager, compiled):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids, torch.ones_like(ids), labels=labels).loss
        loss.backward()
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)
    for a, b in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=5e-2, rtol=5e-2)


def test_a2_estimate_covers_the_saved_tensors_and_blockwise_halves_its_quadratic_part():
    """Peak allocated - model - optimizer, fitted over N with b*N fixed: the eager N x N part halves at n=2."""
    size = dict(hidden_size=192, num_layers=2, intermediate_size=384, vocab_size=1000)
    lengths, tokens = [256, 512, 1024], 4096
    slopes = {}
    for name in ("roberta_1seq_eager", "blockbert_n2_eager"):
        estimates = []
        for n in lengths:
            torch.manual_seed(0)
            model = build(name, size, {}, n).to(CUDA).train()
            batch = random_batch(tokens // n, n, 1000, CUDA)
            autocast = torch.autocast("cuda", dtype=torch.float16)
            with autocast:
                saved = measure_step(model, batch).activation_bytes
            estimates.append(a2_activation_bytes(model, batch, 2, autocast))
            assert estimates[-1] >= 0.9 * saved  # every saved tensor is alive at the peak
        fit = fit_linear_quadratic(lengths, estimates)
        assert fit.slope > 0 and fit.r2 > 0.95
        slopes[name] = fit.slope
    assert 0.35 < slopes["blockbert_n2_eager"] / slopes["roberta_1seq_eager"] < 0.65


def _plan_target(model: str, seq_len: int, per_device: int):
    from blockbert.formats.compose import compose
    from blockbert.measure import plan_fit

    heads = {"roberta_1seq": [], "blockbert_n2": ["model.heads='10:2'"], "blockbert_n3": ["model.heads='8:2:2'"]}
    overrides = [
        f"model={model}", *heads[model], "model.num_layers=4", "model.max_position_embeddings=1024",
        "data.tokenizer_vocab_size=30522", f"data.max_seq_length={seq_len}", f"tokens_per_batch={per_device * seq_len}",
        f"data.per_device_batch_size={per_device}", "trainer=gpu",
    ]  # fmt: skip
    return plan_fit.target_of(compose("pretrain", overrides, finished=True), "pretrain")


def _measured_peak(target, per_device: int) -> int:
    from blockbert.measure import plan_fit
    from blockbert.measure.memory import resident_bytes, step_peaks

    model, optimizer = plan_fit.model_and_optimizer(target, target.model.num_layers, target.seq_len, CUDA)
    make = plan_fit.batch_maker(target, per_device, target.seq_len, CUDA)
    autocast = plan_fit.autocast_of(target, CUDA)
    step_peaks(model, make, plan_fit.loss_of, optimizer, autocast)
    peaks = step_peaks(model, make, plan_fit.loss_of, optimizer, autocast)
    measured = resident_bytes(model, optimizer) + max(peaks["first"], peaks["optimizer"])
    del model, optimizer
    torch.cuda.empty_cache()
    return measured


@pytest.mark.parametrize("seq_len", [512, 1024])
@pytest.mark.parametrize("model", ["roberta_1seq", "blockbert_n2", "blockbert_n3"])
def test_plan_predicts_the_gpu_peak_within_10_percent(model, seq_len):
    """BERT-base width, 4 layers (fitted at 1 and 2), bf16 autocast: the allocator's peak of a training step."""
    from blockbert.measure import plan, plan_fit

    target = _plan_target(model, seq_len, 4)
    fit = plan_fit.measure_fit(target, CUDA, timed=False)
    for per_device in (4, 8):
        predicted = plan.memory_of(target, fit, per_device)["peak"]
        measured = _measured_peak(target, per_device)
        assert abs(predicted / measured - 1) < 0.10, (per_device, predicted, measured)


def test_plan_largest_batch_fits_and_the_next_does_not():
    """With the GPU's memory capped between the predicted peaks of b and b + 1, b trains and b + 1 runs out."""
    from blockbert.measure import plan, plan_fit

    target = _plan_target("blockbert_n3", 1024, 8)
    fit = plan_fit.measure_fit(target, CUDA, timed=False)
    capacity = (plan.memory_of(target, fit, 8)["peak"] + plan.memory_of(target, fit, 9)["peak"]) / 2
    assert plan.largest_batch(target, fit, capacity) == 8
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(capacity / torch.cuda.get_device_properties(CUDA).total_memory)
    try:
        _measured_peak(target, 8)
        with pytest.raises(torch.cuda.OutOfMemoryError):
            _measured_peak(target, 9)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
