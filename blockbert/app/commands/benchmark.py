"""`blockbert benchmark`: the Hydra entry point of the measurements (:mod:`blockbert.measure.benchmark`)."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from blockbert.formats.run_dir import RunDir
from blockbert.measure.benchmark import benchmark


def main(cfg: DictConfig) -> dict:
    return benchmark(cfg, RunDir(HydraConfig.get().runtime.output_dir))
