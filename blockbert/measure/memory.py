"""Memory of one training step, split as in the paper (section 2.1): model, optimizer, activations.

Activation memory is counted as the bytes of the tensors autograd saves for backward, each storage
once (parameters excluded: they are model memory). This works the same on CPU and GPU. On CUDA,
``a2_activation_bytes`` estimates it the paper's way too (Appendix A.2, Equation 4): the allocator's
peak in a training step minus model and optimizer memory.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class StepMemory:
    model_bytes: int  # parameters
    optimizer_bytes: int  # gradients + Adam's two moments
    activation_bytes: int  # saved for backward
    cuda_peak_bytes: int | None = None


class SavedTensorCounter:
    """Context manager: total bytes of distinct storages autograd saves, parameters excluded."""

    def __init__(self, exclude: list[torch.Tensor] = ()):
        self.excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self.storages: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.excluded and tensor.device.type != "meta":
            self.storages[ptr] = max(self.storages.get(ptr, 0), storage.nbytes())
        return tensor

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


def parameter_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def measure_step(model: torch.nn.Module, batch: dict, optimizer_states: int = 2) -> StepMemory:
    """Forward + backward of one batch (``model(**batch).loss``); AdamW keeps ``optimizer_states`` moments."""
    params = list(model.parameters())
    model_bytes = parameter_bytes(model)
    cuda = next(model.parameters()).is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with SavedTensorCounter(exclude=params) as counter:
        loss = model(**batch).loss
    loss.backward()
    peak = torch.cuda.max_memory_allocated() if cuda else None
    model.zero_grad(set_to_none=True)
    return StepMemory(model_bytes, (1 + optimizer_states) * model_bytes, counter.bytes, peak)


def a2_activation_bytes(model: torch.nn.Module, batch: dict, warmup_steps: int = 3, autocast=None) -> int:
    """Appendix A.2 on CUDA: after ``warmup_steps`` AdamW training steps, one more step's peak allocated memory
    (torch.cuda.max_memory_allocated) minus the parameters and the optimizer (gradients + AdamW's state)."""
    autocast = autocast if autocast is not None else contextlib.nullcontext()
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)  # fused: no step temporaries the size of the model

    def step():
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # gradients stay allocated between steps, as in fairseq

    for _ in range(warmup_steps):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    optimizer_bytes = sum(t.numel() * t.element_size() for t in [p.grad for p in params if p.grad is not None] + state)
    model.zero_grad(set_to_none=True)
    return peak - parameter_bytes(model) - optimizer_bytes


@dataclass
class LinearFit:
    """activation = intercept + slope * N (tokens per device fixed), with R^2."""

    intercept: float
    slope: float
    r2: float

    def linear_part(self) -> float:  # a1 * b * N: constant when b * N is fixed
        return self.intercept

    def quadratic_part(self, n: int) -> float:  # a2 * b * N^2 = slope * N
        return self.slope * n


def fit_linear_quadratic(seq_lengths: list[int], activation: list[float]) -> LinearFit:
    """Section 2.2's regression: with b*N fixed, activation = a1*bN + a2*bN*N is linear in N (OLS)."""
    x = np.asarray(seq_lengths, dtype=float)
    y = np.asarray(activation, dtype=float)
    design = np.stack([np.ones_like(x), x], axis=1)
    (intercept, slope), *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ np.array([intercept, slope])
    total = ((y - y.mean()) ** 2).sum()
    r2 = 1.0 - (residual**2).sum() / total if total > 0 else 1.0
    return LinearFit(float(intercept), float(slope), float(r2))
