"""Each of the six paper models (at tiny width) learns a repeated batch through the Lightning module."""

import pytest
import torch

from blockbert import PRESETS, preset_config
from blockbert.train.pretrain_module import PretrainModule

OPTIM = dict(lr=1e-3, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.01, warmup_steps=0)


@pytest.mark.parametrize("name", [n for n in PRESETS if n != "tiny"])
def test_loss_decreases_on_a_repeated_batch(name):
    torch.manual_seed(0)
    config = preset_config(
        name,
        hidden_size=48,
        num_layers=2,
        intermediate_size=96,
        vocab_size=100,
        max_position_embeddings=64,
        sparse_stride=8,
        sparse_expressivity=2,
    )
    nsp = PRESETS[name].next_sentence_prediction
    module = PretrainModule(config, nsp, OPTIM, max_steps=30)
    optimizer = module.configure_optimizers()["optimizer"]
    ids = torch.randint(5, 100, (4, 32))
    labels = torch.full_like(ids, -100)
    labels[:, ::5] = ids[:, ::5]
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    if nsp:
        batch.update(token_type_ids=torch.zeros_like(ids), next_sentence_label=torch.tensor([0, 1, 0, 1]))
    losses = []
    for _ in range(30):
        loss = module(batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_no_weight_decay_on_biases_and_layer_norms():
    module = PretrainModule(preset_config("tiny"), False, OPTIM, max_steps=10)
    decay, no_decay = module.configure_optimizers()["optimizer"].param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in module.model.named_parameters()}
    assert all(names[id(p)].endswith("bias") or "norm" in names[id(p)] for p in no_decay["params"])
    assert all(names[id(p)].endswith("weight") and "norm" not in names[id(p)] for p in decay["params"])


def test_tokens_per_second_counts_real_tokens_on_the_host_over_windows_of_a_second(monkeypatch):
    """train/tokens_per_s: real tokens (not padding) counted before the batch moves to its device (no host sync a
    step on a GPU), times the processes, over windows of at least a second once the first step has given a rate;
    the time of validation and of writing a checkpoint is left out."""
    from types import SimpleNamespace

    import blockbert.train.pretrain_module as pretrain_module

    now = [0.0]
    monkeypatch.setattr(pretrain_module.time, "perf_counter", lambda: now[0])
    module = PretrainModule(preset_config("tiny", vocab_size=100), False, OPTIM, max_steps=10)
    module._trainer = SimpleNamespace(training=True, world_size=2, datamodule=None)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0  # 13 real tokens of 16

    def step(seconds):
        module.on_before_batch_transfer({"attention_mask": mask}, 0)
        rate = module._tokens_per_s()
        now[0] += seconds
        return rate

    assert step(0.5) is None  # nothing measured yet
    assert step(0.25) == pytest.approx(13 * 2 / 0.5)  # the first step's rate
    rates = [step(0.25) for _ in range(4)]  # twice as fast now: kept until a second has passed
    assert rates == [pytest.approx(52.0)] * 3 + [pytest.approx(4 * 13 * 2 / 1.0)]
    module.on_validation_epoch_start()
    module._trainer.training = False  # validation batches are not counted, nor is validation's time
    module.on_before_batch_transfer({"attention_mask": mask}, 0)
    now[0] += 10.0
    module._trainer.training = True
    rates = [step(0.5) for _ in range(4)]
    assert rates == [pytest.approx(104.0)] * 2 + [pytest.approx(2 * 13 * 2 / 1.0)] * 2  # not over the 10 s
    module.on_save_checkpoint({})  # at a step's end; writing the file takes 10 s
    now[0] += 10.0
    rates = [step(0.5) for _ in range(4)]
    assert rates == [pytest.approx(52.0)] * 4  # the rate before, then the new window's: not over the save's 10 s
    assert module.real_tokens == 14 * 13
