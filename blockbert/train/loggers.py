"""The run's loggers: W&B (offline by default; a resumed run continues its W&B run), CSV, or none. Lightning is
imported when a logger is built: a sweep's command (:func:`finish_wandb`) does without it."""

from __future__ import annotations

import logging
import os
import secrets
import string
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from blockbert.errors import ConfigError
from blockbert.formats.run_dir import RunDir
from blockbert.formats.schema import LOGGER_KINDS

log = logging.getLogger(__name__)


def build_logger(cfg: DictConfig, run: RunDir):
    import pytorch_lightning as pl
    from pytorch_lightning.utilities import rank_zero_only

    kind = cfg.logger.kind
    if kind == "none":
        return False
    if kind == "csv":
        return pl.loggers.CSVLogger(save_dir=str(run.path), name=RunDir.CSV_LOGS)
    if kind == "wandb":
        mode = os.environ.get("WANDB_MODE", cfg.logger.mode)
        if mode == "disabled":
            return False
        from pytorch_lightning.loggers import WandbLogger

        # The run's W&B id is chosen before W&B starts and kept in the run directory: a resumed run (offline
        # or online) continues the same W&B run, and `wandb sync` joins the offline pieces in time order.
        id_file = run.wandb_id_file
        run_id = id_file.read_text().strip() if id_file.is_file() else ""
        if not run_id:
            run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's form
            if rank_zero_only.rank == 0:
                run.path.mkdir(parents=True, exist_ok=True)
                id_file.write_text(run_id + "\n")
        # W&B's closing run history and summary repeat what the command prints (30 lines a run): left out, unless
        # WANDB_QUIET or WANDB_SILENT says otherwise (our choice); its opening lines (offline, where) stay
        told = any(os.environ.get(key) for key in ("WANDB_QUIET", "WANDB_SILENT"))
        quiet = {} if told else {"settings": _quiet_settings()}
        logger = WandbLogger(
            save_dir=os.environ.get("WANDB_DIR") or str(run.path),
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            group=cfg.logger.group,
            offline=mode == "offline",
            mode=mode,
            id=run_id,
            resume="allow",
            config=OmegaConf.to_container(cfg, resolve=True),
            **quiet,
        )
        # Lightning passes anonymous=None, on which W&B >= 0.22 warns that the setting has no effect
        getattr(logger, "_wandb_init", {}).pop("anonymous", None)
        return logger
    raise ConfigError(f"logger.kind={kind!r} is unknown: accepted are {', '.join(LOGGER_KINDS)}")


def _quiet_settings():
    import wandb

    return wandb.Settings(quiet=True)


def wandb_sync_hint() -> str | None:
    """For an offline W&B run now open and quiet: the command that uploads it (W&B prints it only when not quiet),
    every piece of a run stopped and resumed included (a glob of them: before, the last piece only)."""
    wandb = sys.modules.get("wandb")
    run = wandb.run if wandb is not None else None
    if run is None or not run.settings._offline or not run.settings.quiet:
        return None
    piece = Path(run.settings.sync_dir)
    pieces = list(piece.parent.glob(f"offline-run-*-{run.id}"))
    return f"W&B (offline): wandb sync {piece.parent / f'offline-run-*-{run.id}' if len(pieces) > 1 else piece}"


def finish_wandb(exit_code: int = 0) -> None:
    """End the W&B run now (if one is open), so its closing lines come before the command's own last lines.
    A failure here is only logged: it must not hide the error being reported."""
    if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
        try:
            sys.modules["wandb"].finish(exit_code=exit_code)
        except Exception as err:  # noqa: BLE001
            log.warning("W&B could not finish its run: %s", err)
