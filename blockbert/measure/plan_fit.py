"""What `blockbert plan` stands on: the run it plans (:class:`Target`), the measured fit of the run's model on a device
(its 1- and 2-layer cuts, their peaks and times) and the store that keeps fits per device kind.

The arithmetic from a fit to memory, batches and time, the table and the check a run makes before training are in
:mod:`blockbert.measure.plan`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from blockbert.data.cache import cache_dir, write_atomically
from blockbert.errors import ConfigError
from blockbert.measure.device import autocast_for, where
from blockbert.measure.memory import step_peaks, step_phases
from blockbert.measure.models import random_batch
from blockbert.measure.timing import OthersLoad, time_in_order
from blockbert.model.config import BlockBertConfig
from blockbert.model.modeling import BlockBertForMaskedLM, BlockBertForPreTraining, BlockBertForQuestionAnswering
from blockbert.train.optim import weight_decay_groups
from blockbert.train.settings import derive_batch, model_config, split_batch, world_size

log = logging.getLogger(__name__)
GB = 1e9
MEASURE_TOKENS_CPU = 4096  # our choice: tokens per timed micro-batch on a CPU (time taken as linear in sequences)
FIT_LAYERS = (1, 2)
TIME_REPEATS = 5
BUSY_SHARE = 0.25  # our choice: a CPU time measured while other processes took more of our cores is timed again
FIT_TOKENS_CPU = 8192  # our choice: the most tokens of a fitted micro-batch on a CPU
LONG_STEP_S = 5.0  # our choice: a step whose warm-up takes this long is timed once, not TIME_REPEATS times
FIT_VERSION = 2  # raised when the model's kernels or the measurement change: older fits are not reused
CALIBRATIONS = Path(__file__).resolve().parent / "calibrations"  # shipped fits of GPU kinds (plan --calibrate)
PRECISIONS = {  # Lightning's precision -> (parameter dtype, autocast dtype)
    "32-true": (torch.float32, None),
    "16-mixed": (torch.float32, torch.float16),
    "bf16-mixed": (torch.float32, torch.bfloat16),
    "bf16-true": (torch.bfloat16, None),
    "16-true": (torch.float16, None),
}
PRECISION_ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed"}


@dataclasses.dataclass
class Target:
    """A run as its config derives it: the model, N, the batch arithmetic, the precision and the strategy."""

    command: str
    model: BlockBertConfig
    head: str  # mlm | mlm+nsp | qa
    seq_len: int
    batch: int  # sequences per optimizer step, all devices
    per_device: int  # sequences per micro-batch and device
    accumulate: int
    devices: int
    precision: str
    strategy: str  # single | ddp | fsdp
    max_steps: int | None

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.seq_len


def precision_name(value) -> str:
    name = PRECISION_ALIASES.get(str(value), str(value))
    if name not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision={value!r} cannot be planned: accepted are {', '.join(PRECISIONS)} "
            f"(or {', '.join(PRECISION_ALIASES)})"
        )
    return name


def target_of(cfg: DictConfig, command: str, devices: int | None = None) -> Target:
    """The run a composed ``pretrain``/``finetune`` config describes; ``devices`` replaces the trainer's device
    count (``plan --gpus``)."""
    seq_len = cfg.data.max_seq_length
    world = devices or world_size(cfg.trainer)
    setting = cfg.data.per_device_batch_size
    config = model_config(cfg.model, vocab_size=_vocab_size(cfg, command))
    config.check_sequence_length(seq_len, "data.max_seq_length")  # first, as the run checks it
    if not config_from_checkpoint(cfg):
        config = dataclasses.replace(config, block_seq_len=seq_len)  # a fresh model's blocks are cut from N
    if command == "pretrain":
        batch, per_dev, accumulate = derive_batch(cfg.tokens_per_batch, seq_len, setting, world)
        head = "mlm+nsp" if cfg.model.next_sentence_prediction else "mlm"
    else:
        batch = cfg.optim.batch_size
        per_dev, accumulate = split_batch(batch, setting, world)
        head = "qa"
    strategy = str(cfg.trainer.strategy)
    several = world > 1 and (strategy.startswith("ddp") or strategy == "auto")  # Lightning's auto: DDP
    kind = "fsdp" if strategy.startswith("fsdp") else "ddp" if several else "single"
    steps = cfg.trainer.max_steps
    return Target(
        command, config, head, seq_len, batch, per_dev, accumulate, world, precision_name(cfg.trainer.precision), kind,
        steps if steps and steps > 0 else None,
    )  # fmt: skip


def config_from_checkpoint(cfg: DictConfig) -> bool:
    return bool(cfg.get("init_from") or cfg.model.get("init_from"))


def _vocab_size(cfg: DictConfig, command: str) -> int:
    """The vocabulary the run's model gets: a checkpoint's; a tokenizer trained for the run has the size asked of
    it (at most: a small corpus may give fewer pieces); otherwise model.vocab_size."""
    if config_from_checkpoint(cfg):
        return cfg.model.vocab_size
    if command == "pretrain":
        return cfg.data.tokenizer_vocab_size if cfg.data.tokenizer == "train" else cfg.model.vocab_size
    return cfg.task.tokenizer_vocab_size


# ------------------------------------------------------------------------------------------- the model and a step


def model_at(target: Target, layers: int, seq_len: int) -> torch.nn.Module:
    """The run's model cut to ``layers`` layers, its blocks cut from ``seq_len``."""
    config = dataclasses.replace(target.model, num_layers=layers)
    if config.attention == "block":
        config = dataclasses.replace(config, block_seq_len=seq_len)
    model_class = {"mlm": BlockBertForMaskedLM, "mlm+nsp": BlockBertForPreTraining, "qa": BlockBertForQuestionAnswering}
    return model_class[target.head](config)


def parameter_count(target: Target) -> tuple[int, int]:
    """(parameters of the whole model, of its largest layer), counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = model_at(target, target.model.num_layers, target.seq_len)
    layer = max((sum(p.numel() for p in m.parameters()) for m in model.encoder.layers), default=0)
    return sum(p.numel() for p in model.parameters()), layer


def batch_maker(target: Target, batch: int, seq_len: int, device: torch.device):
    """A function building a training batch of the run's kind: the benchmark's random MLM batch
    (:func:`blockbert.measure.models.random_batch`), with NSP labels, or QA answer positions instead of MLM labels."""

    def make() -> dict:
        out = random_batch(batch, seq_len, target.model.vocab_size, device)
        g = torch.Generator().manual_seed(seq_len * 1000 + batch + 1)
        if target.head == "qa":
            del out["labels"]
            out["token_type_ids"] = torch.zeros_like(out["input_ids"])
            out["start_positions"] = torch.randint(0, seq_len, (batch,), generator=g).to(device)
            out["end_positions"] = torch.randint(0, seq_len, (batch,), generator=g).to(device)
        if target.head == "mlm+nsp":
            out["next_sentence_label"] = torch.randint(0, 2, (batch,), generator=g).to(device)
        return out

    return make


def loss_of(model, batch: dict) -> torch.Tensor:
    if isinstance(model, BlockBertForQuestionAnswering):
        return model(**batch).loss
    return model(**batch, masked_only=True).loss  # as the pre-training module calls it


def autocast_of(target: Target, device: torch.device):
    """The run's autocast; on a CPU fp16 is measured as bf16 (the same 2-byte tensors; CPUs compute fp16 slowly)."""
    dtype = PRECISIONS[target.precision][1]
    if dtype == torch.float16 and device.type == "cpu":
        dtype = torch.bfloat16
    return autocast_for(dtype, device)


def model_and_optimizer(target: Target, layers: int, seq_len: int, device: torch.device):
    torch.manual_seed(0)
    model = model_at(target, layers, seq_len).to(device=device, dtype=PRECISIONS[target.precision][0]).train()
    optimizer = torch.optim.AdamW(weight_decay_groups(model, 0.01), lr=1e-6)  # as the run's (train.optim)
    return model, optimizer


# --------------------------------------------------------------------------------------------------- the fit


def fit_key(target: Target) -> dict:
    """What a fit depends on besides the layers, the batch and the device kind (its store): the model's layer and
    heads, vocabulary, precision, N, and how it is measured (FIT_VERSION)."""
    values = target.model.to_dict()
    for key in ("num_layers", "block_seq_len", "max_position_embeddings"):
        del values[key]
    return {
        "model": values,
        "head": target.head,
        "precision": target.precision,
        "seq_len": target.seq_len,
        "version": FIT_VERSION,
    }


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def fit_lengths(target: Target) -> tuple[int, int]:
    """N and about N/2 (a multiple of the blocks)."""
    n = target.seq_len
    blocks = target.model.num_blocks if target.model.attention == "block" else 1
    return max(blocks, max(8, n // 2) // blocks * blocks), n


def fit_batches(target: Target, device: torch.device) -> tuple[int, int]:
    """The micro-batches fitted: the run's and half of it (a step's peak is where activations dominate; at a much
    smaller batch it can sit elsewhere), on a CPU at most FIT_TOKENS_CPU tokens."""
    high = target.per_device if device.type == "cuda" else min(target.per_device, FIT_TOKENS_CPU // target.seq_len)
    high = max(2, high)
    return high // 2, high


def measure_fit(target: Target, device: torch.device, timed: bool) -> dict:
    """The memory coefficients (and with ``timed`` the step times) of ``target`` on ``device``: module docstring."""
    autocast = autocast_of(target, device)
    rows = {layers: [] for layers in FIT_LAYERS}  # (b * N, b * N^2, first, accumulating)
    optimizer_peak = {layers: 0 for layers in FIT_LAYERS}
    batches = fit_batches(target, device)
    while True:
        try:
            for layers in FIT_LAYERS:
                for n in fit_lengths(target):
                    _fit_points(target, layers, n, batches, device, autocast, rows, optimizer_peak)
            break
        except torch.cuda.OutOfMemoryError:  # the run's batch does not fit even cut to 2 layers: fit smaller ones
            if batches == (1, 2):
                raise ConfigError(
                    f"not even 2 sequences of N={target.seq_len} fit on {device_name(device)} in a 2-layer cut of "
                    "the model: shorten data.max_seq_length or use model.gradient_checkpointing=true"
                ) from None
            rows, optimizer_peak = {layers: [] for layers in FIT_LAYERS}, {layers: 0 for layers in FIT_LAYERS}
            batches = (max(1, batches[0] // 2), max(2, batches[1] // 2))
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    memory = {"optimizer": [optimizer_peak[layers] for layers in FIT_LAYERS]}
    worst = 0.0
    for column, phase in ((2, "first"), (3, "accumulating")):
        coefficients = []
        for layers in FIT_LAYERS:
            x = np.array([[1.0, r[0], r[1]] for r in rows[layers]])
            y = np.array([float(r[column]) for r in rows[layers]])
            solution, *_ = np.linalg.lstsq(x, y, rcond=None)
            worst = max(worst, float(np.max(np.abs(x @ solution - y) / np.maximum(y, 1.0))))
            coefficients.append(solution.tolist())
        memory[phase] = {name: [c[i] for c in coefficients] for i, name in enumerate(("c0", "a1", "a2"))}
    entry = {
        "key": fit_key(target),
        "memory": memory,
        "memory_points": {str(layers): rows[layers] for layers in FIT_LAYERS},
        "worst_residual": worst,  # the fit's largest relative miss on its own points
        "measured": _where(device),
    }
    if timed:
        entry["time"] = time_fit(target, device, autocast, min(timed_micro_batch(target, device), batches[1]))
    return entry


def _fit_points(target, layers, n, batches, device, autocast, rows, optimizer_peak) -> None:
    model, optimizer = model_and_optimizer(target, layers, n, device)
    for phase in step_phases(model, batch_maker(target, 1, n, device), loss_of, optimizer, autocast):
        phase()  # a first step, untracked: the optimizer's states allocated
    for b in batches:
        peaks = step_peaks(model, batch_maker(target, b, n, device), loss_of, optimizer, autocast)
        rows[layers].append((b * n, b * n * n, peaks["first"], peaks["accumulating"]))
        optimizer_peak[layers] = max(optimizer_peak[layers], peaks["optimizer"])


def timed_micro_batch(target: Target, device: torch.device) -> int:
    """The micro-batch timed: the run's on a GPU; on a CPU at most MEASURE_TOKENS_CPU tokens (time is linear in the
    sequences there)."""
    if device.type == "cuda":
        return target.per_device
    return max(1, min(target.per_device, MEASURE_TOKENS_CPU // target.seq_len))


def time_fit(target: Target, device: torch.device, autocast, batch: int) -> dict:
    """Forward + backward of a micro-batch of ``batch`` sequences at the run's N and the optimizer step, for the
    model cut to 1 and 2 layers, timed in turns (so that a machine's drift hits both alike): medians of TIME_REPEATS
    after a warm-up, or one time when the warm-up took LONG_STEP_S or more (a long step's noise is small beside it)."""
    phases = {}
    for layers in FIT_LAYERS:
        model, optimizer = model_and_optimizer(target, layers, target.seq_len, device)
        inputs = batch_maker(target, batch, target.seq_len, device)()  # built once: the batch is not timed
        step = step_phases(model, lambda inputs=inputs: inputs, loss_of, optimizer, autocast)
        phases[f"forward_backward_{layers}"], phases[f"optimizer_{layers}"] = step
    warm_up = sum(time_in_order(phases, device, 0, 1).values())
    with OthersLoad() as others:
        times = time_in_order(phases, device, 0, 1 if warm_up >= LONG_STEP_S else TIME_REPEATS)
    return {
        "micro_batch": batch,
        "forward_backward_s": [times[f"forward_backward_{layers}"] for layers in FIT_LAYERS],
        "optimizer_s": [times[f"optimizer_{layers}"] for layers in FIT_LAYERS],
        # a CPU's time: the share of its cores' time that other processes took meanwhile
        **({"others_cpu_share": round(others.share, 3)} if device.type == "cpu" else {}),
    }


def timed_beside_others(entry: dict) -> bool:
    """Whether the fit's step times were measured on a CPU that other processes kept busy (BUSY_SHARE): too long.
    A CPU time stored before the share was recorded counts as busy: it may be (a plan here times it again)."""
    times = entry.get("time", {})
    if "others_cpu_share" not in times:
        unknown = bool(times) and entry["measured"].get("device", "").startswith("cpu")
        if unknown:
            log.info("plan: the step time stored on %s does not say how busy the CPU was", entry["measured"]["date"])
        return unknown
    busy = times["others_cpu_share"] > BUSY_SHARE
    if busy:
        log.warning(
            "plan: other processes took %.0f %% of the CPU while the step was timed (%s): the times below are too "
            "long; a plan on this machine times the step again",
            100 * times["others_cpu_share"],
            entry["measured"]["date"],
        )
    return busy


def _where(device: torch.device) -> dict:
    measured = where(device)
    return {"device": device_kind(device), "name": device_name(device), **{k: measured[k] for k in ("torch", "date")}}


def at_layers(values: list[float], layers: int) -> float:
    """A coefficient measured at 1 and 2 layers, at ``layers`` (linear in the layers)."""
    return values[0] + (layers - 1) * (values[1] - values[0])


# ----------------------------------------------------------------------------------------- devices and the store


def device_name(device: torch.device) -> str:
    machine = where(device)["machine"]
    return machine if device.type == "cuda" else f"CPU ({machine}, {os.cpu_count()} cores)"


def device_kind(device: torch.device) -> str:
    """A file name for a device kind: ``nvidia-h200``; ``cpu-x86-64-2`` (the machine and its cores)."""
    return slug(device_name(device) if device.type == "cuda" else f"cpu {where(device)['machine']} {os.cpu_count()}")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def free_memory(device: torch.device) -> int:
    """What the device has free now: the GPU's free memory, or the machine's available memory on a CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def total_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    import psutil

    return psutil.virtual_memory().total


def plan_dir(cfg: DictConfig) -> Path:
    """Where a composed config's fits are kept: ``paths.plan_dir``, by default ``paths.cache_dir/plan``."""
    return Path(cfg.paths.get("plan_dir") or cache_dir(cfg) / "plan").expanduser()


def describe_device(device: torch.device) -> dict:
    return {"kind": device_kind(device), "name": device_name(device), "memory_bytes": total_memory(device)}


class FitStore:
    """The fits of one device kind: ``<plan_dir>/<kind>.json`` (measured here), read over a shipped calibration
    (``blockbert/measure/calibrations/<kind>.json``, when there is one)."""

    def __init__(self, directory: Path, kind: str):
        self.kind = kind
        self.path = Path(directory) / f"{kind}.json"
        self.data = {"device": {}, "fits": {}}
        for source in (CALIBRATIONS / f"{kind}.json", self.path):
            stored = _read_fits(source)
            self.data["device"].update(stored.get("device", {}))
            self.data["fits"].update(stored.get("fits", {}))

    @classmethod
    def for_device(cls, cfg: DictConfig, device: torch.device) -> FitStore:
        """The fits of ``device``'s kind in the plan directory of ``cfg`` (a composed config): the store a plan on
        this machine reads and adds to."""
        return cls(plan_dir(cfg), device_kind(device))

    def get(self, target: Target, micro_batch: int | None = None) -> dict | None:
        """The fit of ``target``; with ``micro_batch``, only one timed at that micro-batch."""
        entry = self.data["fits"].get(key_hash(fit_key(target)))
        if entry and micro_batch is not None and entry.get("time", {}).get("micro_batch") != micro_batch:
            return None
        return entry

    def put(self, target: Target, entry: dict, device: dict) -> None:
        """Keep ``entry``, the fit of ``target`` on ``device`` (:func:`describe_device`), beside the fits the file
        holds now (another process may have added some)."""
        self.data["fits"] = {**_read_fits(self.path).get("fits", {}), key_hash(fit_key(target)): entry}
        self.data["device"] = device
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, lambda tmp: tmp.write_text(json.dumps(self.data, indent=1) + "\n"))


def _read_fits(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        log.warning("plan: %s is not a fits file (JSON): ignored, and replaced by the next fit", path)
        return {}


def named_store(directory: Path, gpu: str) -> FitStore:
    """The fits of the GPU kind named ``gpu`` (``H200``, ``nvidia-h200``): measured on it by ``plan --calibrate``
    and copied here, or shipped."""
    wanted = slug(gpu)
    kinds = sorted({p.stem for d in (CALIBRATIONS, directory) for p in d.glob("*.json")})
    gpus = [k for k in kinds if not k.startswith("cpu")]
    matches = [k for k in kinds if k == wanted] or [k for k in gpus if wanted in k]
    if len(matches) > 1:
        raise ConfigError(f"--gpu {gpu!r} matches several calibrated GPU kinds: give one of {', '.join(matches)}")
    if not matches:
        raise ConfigError(
            f"--gpu {gpu!r}: no calibration of that GPU kind (known: {', '.join(gpus) or 'none yet'}). Run "
            f"`blockbert plan --calibrate` on that GPU and copy <kind>.json from that machine's plan directory into "
            f"{directory}"
        )
    return FitStore(directory, matches[0])


def fit_for(target: Target, store: FitStore, device: torch.device | None, timed: bool) -> tuple[dict, str]:
    """(fit, where it comes from): stored for this device kind, or measured now on ``device`` (None: a named GPU's
    calibration, which must hold it). A stored CPU time measured beside busy processes is measured again here."""
    entry = store.get(target, timed_micro_batch(target, device) if timed and device is not None else None)
    if entry is not None and (not timed or "time" in entry):
        if not (timed and timed_beside_others(entry) and device is not None):
            return entry, f"fitted on {entry['measured']['name']} ({entry['measured']['date']}, stored in {store.path})"
    if device is None:
        raise ConfigError(
            f"the calibration of {store.kind} has no fit{' with times' if timed else ''} of this model "
            f"({target.model.attention}, {target.model.num_heads} heads, hidden {target.model.hidden_size}, "
            f"N={target.seq_len}, {target.precision}): run `blockbert plan --calibrate` with these overrides on that "
            "GPU"
        )
    log.info(
        "plan: fitting memory%s on %s: the model cut to 1 and 2 layers, N=%s, micro-batches %s (once per model and "
        "device kind: stored in %s for later plans and runs)",
        " and time" if timed else "",
        device_name(device),
        " and ".join(map(str, sorted(set(fit_lengths(target))))),
        " and ".join(map(str, sorted(set(fit_batches(target, device))))),
        store.path,
    )
    entry = measure_fit(target, device, timed)
    timed_beside_others(entry)
    store.put(target, entry, describe_device(device))
    return entry, f"fitted now on {entry['measured']['name']} (stored in {store.path})"
