"""`blockbert benchmark`: the Hydra entry point of the measurements (:mod:`blockbert.measure.benchmark`)."""

from __future__ import annotations

from omegaconf import DictConfig

from blockbert.app.run_config import run_measurement


def main(cfg: DictConfig) -> dict:
    return run_measurement(cfg, _benchmark)


def _benchmark(cfg: DictConfig, run):
    from blockbert.measure.benchmark import benchmark  # torch, Lightning: after the checks needing none

    return benchmark(cfg, run)
