"""Task entry points (one module per command) and the hand-over from the CLI to Hydra."""

import os
from pathlib import Path

from omegaconf import OmegaConf

RANK_VARIABLES = ("RANK", "SLURM_PROCID", "SUBMITIT_LOCAL_GLOBALID", "LOCAL_RANK")  # the first one set is the rank


def hydra_output_subdir(run_dir: str) -> str | None:
    """Where Hydra stores a job's config: ``.hydra`` for a new run directory. A run resumed in the same
    directory keeps the original there and gets ``.hydra/resume-K`` (K = 1, 2, ...) for its own config and
    overrides, so a resume with other overrides never rewrites what the run was started with. Ranks other
    than 0 of a job (SLURM or submitit tasks) store nothing."""
    rank = next((os.environ[name] for name in RANK_VARIABLES if os.environ.get(name, "").isdigit()), "0")
    if int(rank) != 0:
        return None
    base = Path(run_dir) / ".hydra"
    if not (base / "config.yaml").is_file():
        return ".hydra"
    return f".hydra/resume-{len(list(base.glob('resume-*'))) + 1}"


def job_config_dir(run_dir: Path) -> Path:
    """Where Hydra stored this job's config (.hydra or the newest .hydra/resume-K), read while the job runs:
    ``hydra.output_subdir`` resolves afresh at every access and points past it by then."""
    resumes = sorted((run_dir / ".hydra").glob("resume-*"), key=lambda path: int(path.name.split("-")[1]))
    return resumes[-1] if resumes else run_dir / ".hydra"


OmegaConf.register_new_resolver("blockbert_output_subdir", hydra_output_subdir, replace=True)
