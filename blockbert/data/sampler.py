"""A resumable sampler: seeded permutations read from a stream position, split over ranks.

The position counts the samples consumed by all ranks together since training started, so a
checkpoint stores one integer and a resumed run reads on from exactly there, whatever the
number of interruptions. Masking and dropout draw from seeds derived from positions and step
counts (:func:`stream_seed`), so a resumed run also draws the same masks and dropout as an
uninterrupted one.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from blockbert.errors import ConfigError


def stream_seed(*values: int) -> int:
    """A well-mixed 64-bit seed from integers (a run seed, a rank, a stream position, ...)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1, np.uint64)[0])


class ResumableSampler(Sampler[int]):
    """Seeded permutations of ``range(size)``, one per pass, read from ``position`` and split over ranks.

    One iteration runs to the end of the current permutation, so a resumed run first finishes the
    pass it was interrupted in, then goes on with the next. With ``drop_last`` a tail shorter than
    ``batches_per_step`` global batches (``global_batch``: a batch on each rank; ``batches_per_step``: the
    gradient accumulation) is dropped (pre-training, and fine-tuning on several ranks, whose last batches must
    match), so that every optimizer step takes a whole batch (Lightning steps at the end of a pass whatever it
    accumulated) and steps stay in line with the micro-batches counted across passes; without it the last batch
    of a pass is short (fine-tuning, one rank). Each rank takes every ``world_size``-th sample of the global order, so
    Lightning's distributed sampler is not used. With ``stream_keys`` the sampler yields
    ``pass * size + index`` instead of ``index``: each draw of a sample has its own key (read the
    rows through :class:`StreamDataset`).
    """

    def __init__(
        self,
        size: int,
        seed: int,
        global_batch: int,
        position: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        stream_keys: bool = False,
        batches_per_step: int = 1,
    ):
        if not drop_last and world_size > 1:
            raise ValueError("drop_last=False needs one rank: the ranks' last batches would differ in size")
        self.size, self.seed, self.global_batch, self.batches_per_step = size, seed, global_batch, batches_per_step
        self.unit = global_batch * batches_per_step if drop_last else global_batch  # what a pass holds a multiple of
        self.position, self.rank, self.world_size = position, rank, world_size
        self.drop_last, self.stream_keys = drop_last, stream_keys

    def __iter__(self):
        epoch, offset = divmod(self.position, self.size)
        if self.drop_last and self.size - offset < self.unit:  # only a dropped tail was left
            epoch, offset = epoch + 1, 0
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
        usable = (self.size - offset) // self.unit * self.unit if self.drop_last else self.size - offset
        self.position = (epoch + 1) * self.size  # the next iteration starts a new permutation
        base = epoch * self.size if self.stream_keys else 0
        for index in order[offset : offset + usable][self.rank :: self.world_size].tolist():
            yield base + index

    def __len__(self) -> int:
        """A whole pass's samples on this rank. Constant: Lightning sizes its epoch loop once, and validates at the
        end of an epoch when the batches it counts reach this length."""
        per_pass = self.size // self.unit * self.unit if self.drop_last else self.size
        return per_pass // self.world_size

    def position_after(self, batches: int) -> int:
        """The stream position after ``batches`` global batches since the start of training."""
        if self.drop_last:
            per_pass = self.size // self.unit * (self.unit // self.global_batch)
        else:
            per_pass = math.ceil(self.size / self.global_batch)
        passes, rest = divmod(batches, per_pass)
        return passes * self.size + rest * self.global_batch


class StreamDataset(Dataset):
    """The rows of ``data`` read by stream key (``pass * size + index``); each row carries its key."""

    def __init__(self, data):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: int) -> dict:
        return {**self.data[key % len(self.data)], "stream_key": key}


class ResumableData:
    """Data-module mixin: the sampler's stream position is the data module's checkpoint state.

    Lightning counts the micro-batches processed on each rank (the same on all ranks); the
    position after ``batches`` of them is :meth:`state_at`. A checkpoint taken in the middle of a
    gradient accumulation is saved at the last optimizer step instead (``RunGuard``), which is why
    the position can be asked for at any batch count.
    """

    sampler: ResumableSampler | None = None
    batch_size: int  # samples per micro-batch on each rank
    world_size: int = 1
    accumulate: int = 1  # micro-batches per optimizer step (a pass of the training sampler holds whole steps)
    _samples_consumed: int = 0  # restored from a checkpoint on resume
    _trained_batch: int | None = None  # the restored run's samples per micro-batch over all ranks
    _trained_batches_per_step: int | None = None  # the restored run's passes' unit (1: a checkpoint from before it)

    def state_dict(self) -> dict:
        return self.state_at(self.trainer.fit_loop.epoch_loop.batch_progress.total.processed)

    def state_at(self, batches: int) -> dict:
        if self.sampler is None:  # no training batch drawn in this process yet: the restored state holds
            restored = {"global_batch": self._trained_batch, "batches_per_step": self._trained_batches_per_step}
            return {"samples_consumed": self._samples_consumed, **{k: v for k, v in restored.items() if v is not None}}
        return {
            "samples_consumed": self.sampler.position_after(batches),
            "global_batch": self.sampler.global_batch,
            "batches_per_step": self.sampler.batches_per_step,
        }

    def load_state_dict(self, state: dict) -> None:
        self._samples_consumed = state["samples_consumed"]
        self._trained_batch = state.get("global_batch")  # absent from checkpoints written before it was recorded
        # a pass of a checkpoint from before passes held whole steps was cut at micro-batches: the run goes on so, or
        # the data position worked out from Lightning's count of batches would skip or repeat data
        self._trained_batches_per_step = state.get("batches_per_step", 1)

    def check_resume(self, state: dict | None) -> None:
        """Refuse, before training starts, to resume from a checkpoint whose data ``state`` counted micro-batches of
        another number of samples across the ranks (another per-device batch or device count): the position is
        worked out from Lightning's count of batches, in the trained run's batches."""
        trained, now = (state or {}).get("global_batch"), self.batch_size * self.world_size
        if trained is not None and trained != now:
            raise ConfigError(
                f"this run cannot resume with micro-batches of {now} samples across its devices: it trained with "
                f"{trained} (per-device batch x devices), and its data position counts those; resume with the "
                "trainer.devices and per-device batch size it had"
            )

    def training_sampler(self, size: int, rank: int, **options) -> ResumableSampler:
        """The training sampler of this rank, read on from the restored position."""
        global_batch = self.batch_size * self.world_size
        unit = self.accumulate if self._trained_batches_per_step is None else self._trained_batches_per_step
        self.sampler = ResumableSampler(
            size, self.seed, global_batch, self._samples_consumed, rank, self.world_size, **options,
            batches_per_step=unit,
        )  # fmt: skip
        return self.sampler

    def loader_options(self, num_workers: int | None) -> dict:
        """DataLoader options for where the batches go. To a CUDA device: pinned memory (the copy overlaps the step)
        and, for ``num_workers`` None, min(4, cores per device) workers kept alive across epochs. On a CPU: no worker
        processes by default (they would take the cores training runs on)."""
        trainer = getattr(self, "trainer", None)
        cuda = trainer.strategy.root_device.type == "cuda" if trainer is not None else torch.cuda.is_available()
        if num_workers is None:
            num_workers = default_workers(cuda, trainer.num_devices if trainer is not None else 1)
        return dict(num_workers=num_workers, pin_memory=cuda, persistent_workers=num_workers > 0)


def default_workers(cuda: bool, devices: int = 1) -> int:
    """DataLoader worker processes when data.num_workers is null: none on a CPU (they would take the cores training
    runs on); on a GPU min(4, the cores this process may use / the devices on this machine)."""
    if not cuda:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(4, max(1, cores // devices))
