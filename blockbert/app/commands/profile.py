"""`blockbert profile`: the Hydra entry point of Table 1's memory profile (:mod:`blockbert.measure.profile`)."""

from __future__ import annotations

from omegaconf import DictConfig

from blockbert.app.run_config import run_measurement


def main(cfg: DictConfig) -> dict:
    return run_measurement(cfg, _profile)


def _profile(cfg: DictConfig, run):
    from blockbert.measure.profile import profile  # torch, Lightning: after the checks needing none

    return profile(cfg, run)
