"""Memory of one training step, split as in the paper (section 2.1): model, optimizer, activations.

Activation memory is counted as the bytes of the tensors autograd saves for backward, each storage
once (parameters excluded: they are model memory). This works the same on CPU and GPU. On CUDA,
``a2_activation_bytes`` estimates it the paper's way too (Appendix A.2, Equation 4): the allocator's
peak in a training step minus model and optimizer memory.

:func:`step_peaks` measures what a training step adds at its peak, on any device (``blockbert plan``'s fits).
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


def resident_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """What stays allocated between training steps: parameters, gradients still held, the optimizer's states."""
    tensors = {id(p): p for p in model.parameters()}
    tensors |= {id(p.grad): p.grad for p in model.parameters() if p.grad is not None}
    tensors |= {id(t): t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def step_phases(model, batch_fn, loss_fn, optimizer, autocast, clip: float | None = 1.0):
    """A training step as a Lightning run takes it, in its two phases: (a micro-batch's forward under ``autocast``
    and backward; gradient clipping, the optimizer's step and the gradients set to None). ``batch_fn()`` gives the
    batch, ``loss_fn(model, batch)`` the loss."""

    def forward_backward():
        batch = batch_fn()
        with autocast:
            loss = loss_fn(model, batch)
        loss.backward()

    def optimizer_step():
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return forward_backward, optimizer_step


def step_peaks(model, batch_fn, loss_fn, optimizer, autocast, clip: float | None = 1.0) -> dict[str, int]:
    """A training step (:func:`step_phases`) in bytes above :func:`resident_bytes` at its start, phase by phase:
    ``first``, the peak of a micro-batch's forward + backward with no gradients held (set to None after the last
    step); ``accumulating``, the same for the next micro-batch of a gradient accumulation, the gradients held;
    ``optimizer``, the peak of the optimizer's phase. ``batch_fn()`` builds the batch inside each forward phase (its
    tensors count).

    CUDA: the allocator's peak (``torch.cuda.max_memory_allocated``). Elsewhere: the peak of the live tensor
    storages torch's ``MemTracker`` (``torch.distributed._tools.mem_tracker``) follows, parameters, gradients and
    optimizer states included."""
    resident = resident_bytes(model, optimizer)
    device = next(model.parameters()).device
    forward_backward, optimizer_step = step_phases(model, batch_fn, loss_fn, optimizer, autocast, clip)
    phases = (("first", forward_backward), ("accumulating", forward_backward), ("optimizer", optimizer_step))
    return {phase: _peak(call, model, optimizer, device) - resident for phase, call in phases}


def _peak(phase, model, optimizer, device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        phase()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        phase()
    return tracker.get_tracker_snapshot("peak")[device]["Total"]


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
