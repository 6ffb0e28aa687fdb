"""`blockbert benchmark`: the Hydra entry point of the measurements (:mod:`blockbert.measure.benchmark`)."""

from __future__ import annotations

from omegaconf import DictConfig

from blockbert.app.run_config import run_measurement
from blockbert.measure.benchmark import benchmark


def main(cfg: DictConfig) -> dict:
    return run_measurement(cfg, benchmark)
