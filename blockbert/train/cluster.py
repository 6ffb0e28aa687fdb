"""Scale-out on Lightning's side: the cluster environment a run trains under (SLURM with Lightning's requeue, or the
tasks of a ``cluster=submitit_local`` job) and the accelerator check. Hydra's side -- the launcher settings and the
checks that make ``cluster=slurm`` / ``cluster=submitit_local`` start as written -- is :mod:`blockbert.app.cluster`.

Who owns SLURM's preemption and time-limit signals: **Lightning**, nobody else.

- ``conf/cluster/slurm.yaml`` asks SLURM for ``--signal=USR1@<hydra.launcher.signal_delay_s>``
  (``hydra.launcher.additional_parameters.signal``; submitit writes ``USR2@...`` unless told otherwise).
- Every task SLURM starts (``srun``, one per device) is seen by Lightning as a ``SLURMEnvironment``;
  :func:`cluster_environment` returns it with ``auto_requeue=True`` on ``SIGUSR1``. On the signal each
  rank saves ``hpc_ckpt_<k>.ckpt`` into the run directory (the Trainer's ``default_root_dir``) and
  rank 0 runs ``scontrol requeue $SLURM_JOB_ID`` (``<array job>_<task>`` in an array). SLURM then
  ends the job (SIGTERM: Lightning stops at the next step and writes ``checkpoints/interrupted.ckpt``
  when it got further) and starts it again later under the same job id.
- submitit is left out of it: its handler stays on ``SIGUSR2``, which SLURM is no longer asked to send,
  so its ``checkpoint()``/requeue never runs (``hydra.launcher.max_num_timeout`` stays 0). A
  ``SUBMITIT_PREEMPT_SIGNAL=USR1`` in the environment would put submitit's handler on Lightning's
  signal (Lightning then installs none): :func:`cluster_environment` refuses it.

Why Lightning: it saves the training state *before* it requeues, on every rank; the run guard
(``RunGuard._defer_requeue``) runs Lightning's handler at the next optimizer-step boundary rather than
inside the signal, which may arrive in the middle of an optimizer step. submitit's handler requeues first and
saves no model state (Hydra's launcher ``checkpoint()`` only resubmits the same job), so the state
would be whatever SIGTERM leaves before SLURM's kill, and only rank 0 reacts. Lightning's handler also
serves a ``blockbert pretrain`` started by one's own ``sbatch``/``srun`` script with ``--signal=USR1@120``.

The interrupted task ends without a result: a run stopped by SIGTERM inside a submitit job exits with
code 143 (``blockbert.app.launch``) instead of returning Hydra's failed job, which submitit would store as the
job's result; the ``blockbert ... -m`` process that waits on the jobs then keeps waiting for the
requeued one.

The requeued job resumes in place. With ``-m cluster=slurm`` the job re-runs submitit's pickle of the
launcher, whose Hydra config carries the resolved ``${now:...}`` of ``hydra.sweep.dir`` in its resolver
cache (Hydra copies that cache into each job's config), so the job directory ``<sweep dir>/<job num>``
is the same one; the task then resumes from the newest checkpoint there (``hpc_ckpt_*`` included).
A single run from one's own script must name its directory (``hydra.run.dir=runs/pretrain/$SLURM_JOB_ID``):
a ``${now:...}`` run directory is new on each start (:func:`cluster_environment` warns on a requeued
start in a directory without checkpoints).

``cluster=submitit_local`` rehearses the same path on one machine: one submitit task per device,
which :class:`SubmititLocalEnvironment` tells Lightning about (no processes started by Lightning).
There is no SLURM there, so no Lightning requeue: its time limit (``hydra.launcher.timeout_min``) is
submitit's own (USR2, then a local restart), as it would be for any submitit job.
"""

from __future__ import annotations

import functools
import logging
import os
import signal

from blockbert.errors import ConfigError
from blockbert.formats.run_dir import RunDir
from blockbert.formats.schema import GPU_ACCELERATORS

log = logging.getLogger(__name__)

REQUEUE_SIGNAL = signal.SIGUSR1  # keep in step with hydra.launcher.additional_parameters.signal in slurm.yaml


def is_gpu(accelerator) -> bool:
    """``trainer.accelerator`` names a CUDA GPU (Lightning's ``auto`` is decided on the machine that runs the job)."""
    return accelerator in GPU_ACCELERATORS


def runs_on_gpu(accelerator) -> bool:
    """This process's trainer will use CUDA GPUs: a GPU named, or ``auto`` on a machine with CUDA (Lightning picks
    the GPU then)."""
    if accelerator == "auto":
        import torch

        return torch.cuda.is_available()
    return is_gpu(accelerator)


def is_count(value) -> bool:
    """A device or node count: a positive int (a YAML ``true`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def cluster_environment(run_dir: RunDir | None):
    """The Lightning cluster environment plugin for this run, or None for Lightning's own choice.

    - inside a ``cluster=submitit_local`` job: :class:`SubmititLocalEnvironment` (its tasks are the ranks);
    - inside a SLURM job step (``srun``; not an interactive ``bash``/``interactive`` one): Lightning's
      ``SLURMEnvironment`` with auto-requeue on ``SIGUSR1``, the only owner of that signal (module docstring);
    - otherwise (a plain process, ``torchrun``): None.
    """
    from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if in_submitit_local_job():
        return submitit_local_environment()()
    if TorchElasticEnvironment.detect() or not SLURMEnvironment.detect():
        return None
    submitit_signal = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper()
    if "SIG" + submitit_signal.removeprefix("SIG") == REQUEUE_SIGNAL.name:
        raise ConfigError(
            f"SUBMITIT_PREEMPT_SIGNAL={submitit_signal} puts submitit's requeue handler on "
            f"{REQUEUE_SIGNAL.name}, the signal Lightning requeues on: unset it"
        )
    _warn_if_requeued_into_a_new_directory(run_dir)
    return SLURMEnvironment(auto_requeue=True, requeue_signal=REQUEUE_SIGNAL)


def _warn_if_requeued_into_a_new_directory(run_dir: RunDir | None) -> None:
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    if run_dir is None or not restarts.isdigit() or int(restarts) == 0:
        return
    if not run_dir.checkpoint_candidates():
        log.warning(
            "this SLURM job was requeued (SLURM_RESTART_COUNT=%s) but %s holds no checkpoint: training "
            "starts afresh. A run started by your own script resumes only with a fixed "
            "hydra.run.dir (e.g. runs/pretrain/$SLURM_JOB_ID)",
            restarts,
            run_dir.path,
        )


def check_accelerator(trainer_cfg) -> None:
    """Fail with one line before any data work when the trainer asks for an accelerator this machine lacks, or for
    a strategy whose processes Lightning starts from inside this one (ddp_spawn, ddp_fork, ddp_notebook): spawned
    ones run without the command's setup (matmul_precision, warning filters), and what any of them computes after
    training (predictions, validation history) stays in them. ``trainer=ddp`` does the same work with processes
    that each run the command."""
    strategy = str(trainer_cfg.get("strategy", "auto"))
    if any(kind in strategy for kind in ("spawn", "fork", "notebook")):
        raise ConfigError(
            f"trainer.strategy={strategy} is not supported: Lightning would start its processes from inside this "
            "one, and what they compute would not come back; use trainer=ddp (strategy ddp, each process runs the "
            "command), with trainer.accelerator=cpu for CPU processes"
        )
    if not is_gpu(trainer_cfg.get("accelerator", "auto")):
        return
    import torch

    hint = "use trainer=cpu, or trainer=ddp trainer.accelerator=cpu for CPU processes"
    if not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={trainer_cfg.accelerator} but this machine has no CUDA GPU: {hint}")
    devices = trainer_cfg.get("devices", "auto")
    count = torch.cuda.device_count()
    if is_count(devices) and devices > count:
        raise ConfigError(
            f"trainer.devices={devices} but this machine has {count} CUDA GPU{'s' * (count != 1)}: "
            f"set trainer.devices={count} or fewer, or -1 for all of them"
        )


def in_submitit_local_job() -> bool:
    return os.environ.get("SUBMITIT_EXECUTOR") == "local" and "SUBMITIT_LOCAL_NTASKS" in os.environ


def set_process_rank() -> None:
    """Called as a job starts: in a ``cluster=submitit_local`` task, Lightning's rank-zero helpers (and what
    uses them before the Trainer exists, such as the run lock) see this task's rank. Lightning reads
    SLURM's ``SLURM_PROCID`` and its own ranks' ``LOCAL_RANK`` when imported, but not submitit's."""
    if in_submitit_local_job():
        from lightning_fabric.utilities.rank_zero import rank_zero_only

        rank_zero_only.rank = int(os.environ.get("SUBMITIT_LOCAL_GLOBALID", "0"))


@functools.cache
def submitit_local_environment():
    """The class :class:`SubmititLocalEnvironment` (built on first use: Lightning is slow to import)."""
    from lightning_fabric.plugins.environments import ClusterEnvironment

    class SubmititLocalEnvironment(ClusterEnvironment):
        """The tasks of a ``cluster=submitit_local`` job are the ranks: submitit starts
        ``hydra.launcher.tasks_per_node`` processes and numbers them in ``SUBMITIT_LOCAL_*``, so Lightning
        starts none itself (its own launcher would re-run ``python -m submitit.core._submit``, which takes no
        Hydra overrides). The rendezvous port follows from the job id (the controller's pid), the same in
        every task."""

        @property
        def creates_processes_externally(self) -> bool:
            return True

        @property
        def main_address(self) -> str:
            return os.environ.get("MASTER_ADDR", "127.0.0.1")

        @property
        def main_port(self) -> int:
            if "MASTER_PORT" in os.environ:
                return int(os.environ["MASTER_PORT"])
            return 20000 + int(os.environ.get("SUBMITIT_LOCAL_JOB_ID", "0")) % 20000

        @staticmethod
        def detect() -> bool:
            return in_submitit_local_job()

        def world_size(self) -> int:
            return int(os.environ["SUBMITIT_LOCAL_NTASKS"])

        def set_world_size(self, size: int) -> None:
            pass  # fixed by submitit

        def global_rank(self) -> int:
            return int(os.environ.get("SUBMITIT_LOCAL_GLOBALID", "0"))

        def set_global_rank(self, rank: int) -> None:
            set_process_rank()  # fixed by submitit

        def local_rank(self) -> int:
            return int(os.environ.get("SUBMITIT_LOCAL_LOCALID", "0"))

        def node_rank(self) -> int:
            return int(os.environ.get("SUBMITIT_LOCAL_NODEID", "0"))

    return SubmititLocalEnvironment
