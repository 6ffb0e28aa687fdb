"""Sweep definitions (``sweeps/NAME.yaml``): the command, fixed overrides, swept parameters, metric.

A parameter's values are a list, or a generator:
``{head_assignments: {blocks: n, min_identity: k}}`` -- every way to give the model's heads to the n
shifts (12 heads: 13 for n=2, 91 for n=3) with at least k identity heads;
``{pretrained_jobs: {}}`` -- the run directory of every finished job of the pre-training sweep given
with ``--from`` (``finetune_each``: Figure 4's fine-tuning column).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from blockbert.errors import ConfigError
from blockbert.formats.compose import override_key
from blockbert.formats.run_dir import SweepDir
from blockbert.paths import sweeps_dir

GENERATORS = ("head_assignments", "pretrained_jobs")


@dataclass
class Sweep:
    name: str
    command: str
    description: str
    overrides: list[str]
    parameters: dict  # key -> list of values or a generator spec
    metric: str
    mode: str  # min | max
    select: dict = field(default_factory=dict)  # fine-tuning: {by: dev metric, report: test metric}


def available() -> list[str]:
    return sorted(p.stem for p in sweeps_dir().glob("*.yaml") if not p.name.endswith(".wandb.yaml"))


def load_sweep(name: str) -> Sweep:
    path = Path(name) if name.endswith(".yaml") else sweeps_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"sweep {name!r} is unknown: accepted are {', '.join(available())} or a path to a .yaml file")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    missing = [k for k in ("command", "parameters", "metric") if k not in raw]
    if missing:
        raise ConfigError(f"{path}: missing {'field' if len(missing) == 1 else 'fields'} {', '.join(missing)}")
    if raw.get("mode", "min") not in ("min", "max"):
        raise ConfigError(f"{path}: mode={raw['mode']!r}: accepted are min, max")
    return Sweep(
        path.stem,
        raw["command"],
        raw.get("description", ""),
        list(raw.get("overrides", [])),
        raw["parameters"],
        raw["metric"],
        raw.get("mode", "min"),
        raw.get("select", {}),
    )


def head_assignments(num_heads: int, blocks: int, min_identity: int = 0) -> list[str]:
    """Every head config "c0:c1:...:c{n-1}" with sum num_heads and c0 >= min_identity, identity-heavy first."""
    configs = []
    for cuts in itertools.combinations_with_replacement(range(num_heads + 1), blocks - 1):
        bounds = (0, *cuts, num_heads)
        counts = [bounds[i + 1] - bounds[i] for i in range(blocks)]
        if counts[0] >= min_identity:
            configs.append(counts)
    configs.sort(key=lambda c: [-x for x in c])
    return [":".join(map(str, c)) for c in configs]


def expand(sweep: Sweep, num_heads: int, source: Path | None = None) -> dict[str, list]:
    """{override key: values} with generators expanded (``source``: the ``--from`` sweep directory). The keys over
    pre-training jobs come first, outermost in the jobs' product: a job finished since, appended to their values
    (:func:`blockbert.app.commands.sweep.keep_job_numbers`), adds jobs after the others and renumbers none."""
    grid = {}
    for key, values in sweep.parameters.items():
        if isinstance(values, dict):
            ((generator, options),) = values.items()
            if generator not in GENERATORS:
                raise ConfigError(
                    f"sweep {sweep.name}: parameter {key}: generator {generator!r} is unknown: "
                    f"accepted are {', '.join(GENERATORS)}"
                )
            if generator == "pretrained_jobs":
                values = pretrained_jobs(sweep, source)
            else:
                values = head_assignments(num_heads, **(options or {}))
        if not values:
            raise ConfigError(f"sweep {sweep.name}: parameter {key} has no values")
        grid[key] = list(values)
    takes_source = any(isinstance(v, dict) and "pretrained_jobs" in v for v in sweep.parameters.values())
    if source is not None and not takes_source:
        raise ConfigError(f"sweep {sweep.name} takes no --from (only sweeps over pretrained_jobs do: finetune_each)")
    runs = [key for key, values in sweep.parameters.items() if isinstance(values, dict) and "pretrained_jobs" in values]
    return {key: grid[key] for key in [*runs, *(key for key in grid if key not in runs)]}


def pretrained_jobs(sweep: Sweep, source: Path | None) -> list[str]:
    """The run directories of the finished jobs of the pre-training sweep in ``source``."""
    from blockbert.experiments.sweep_summary import read_jobs

    if source is None:
        raise ConfigError(
            f"sweep {sweep.name} fine-tunes the jobs of a pre-training sweep: give its directory with "
            "--from (e.g. --from multirun/sweeps/heads_n3/2026-01-01_00-00-00)"
        )
    if not SweepDir(source).spec_file.is_file():
        raise ConfigError(
            f"--from {source}: not a sweep directory (no sweep.yaml): give the directory "
            "`blockbert sweep` printed for a pre-training sweep"
        )
    finished = [source / row["job"] for row in read_jobs(source, []) if row["status"] == "finished"]
    if not finished:
        raise ConfigError(
            f"--from {source}: no finished job to fine-tune yet (resume it with `blockbert sweep NAME --dir {source}`)"
        )
    return [str(job.resolve()) for job in finished]


def merge_overrides(fixed: list[str], extra: list[str]) -> list[str]:
    """The sweep file's fixed overrides, each replaced by a command-line override of the same key
    (``experiment=tiny`` replaces the file's ``experiment=blockbert_n2_512``), then the other extra ones."""
    replaced = {override_key(o) for o in extra}
    return [o for o in fixed if override_key(o) not in replaced] + list(extra)


def jobs(grid: dict[str, list]) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def multirun_args(grid: dict[str, list], texts: dict[str, list[str]] | None = None) -> list[str]:
    """Hydra's comma-list overrides for the basic sweeper (which takes their product in this order)."""
    return [f"{key}={','.join(values)}" for key, values in value_texts(grid, texts).items()]


def job_overrides(grid: dict[str, list], texts: dict[str, list[str]] | None = None) -> list[list[str]]:
    """Each job's swept overrides (``key=value``), in the order of :func:`jobs` and of the basic sweeper's jobs."""
    keys, values = list(grid), value_texts(grid, texts).values()
    return [[f"{k}={v}" for k, v in zip(keys, combo)] for combo in itertools.product(*values)]


def value_texts(grid: dict[str, list], texts: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Each swept value as the text of an override's value: ``texts``' where Hydra's grammar gave them (a sweep
    written on the command line or among the file's overrides: ``seed=range(0,3)``), else the value quoted."""
    texts = texts or {}
    return {key: list(texts[key]) if key in texts else [_quote(v) for v in values] for key, values in grid.items()}


def shown(override: str) -> str:
    """An override as a person reads it: without the backslashes Hydra's grammar puts before ``:`` and other
    characters it reserves (``model.heads=4\\:0`` -> ``model.heads=4:0``)."""
    return re.sub(r"\\(.)", r"\1", override)


def _quote(value) -> str:
    text = str(value)
    return f"'{text}'" if any(c in text for c in " ,[]{}()") else text


def wandb_sweep(sweep: Sweep, grid: dict[str, list]) -> dict:
    """A W&B sweep configuration running the same grid (parameters arrive as Hydra overrides)."""
    deletions = [o for o in sweep.overrides if "=" not in o]
    if deletions:
        raise ConfigError(f"sweep {sweep.name}: {deletions[0]} cannot be given to a W&B sweep (only key=value)")
    fixed = {o.split("=", 1)[0]: {"value": o.split("=", 1)[1]} for o in sweep.overrides}
    return {
        "name": sweep.name,
        "description": sweep.description,
        "method": "grid",
        "metric": {"name": sweep.metric, "goal": "minimize" if sweep.mode == "min" else "maximize"},
        "command": ["${env}", "blockbert", sweep.command, "logger=wandb", "logger.mode=online", "${args_no_hyphens}"],
        "parameters": {**fixed, **{k: {"values": v} for k, v in grid.items()}},
    }
