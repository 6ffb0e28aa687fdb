"""`blockbert profile`: the Hydra entry point of Table 1's memory profile (:mod:`blockbert.measure.profile`)."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from blockbert.formats.run_dir import RunDir
from blockbert.measure.profile import profile


def main(cfg: DictConfig) -> dict:
    return profile(cfg, RunDir(HydraConfig.get().runtime.output_dir))
