"""Scale-out on Hydra's side: the launcher settings ``conf/cluster/*.yaml`` resolve, and the checks that make
``cluster=slurm`` / ``cluster=submitit_local`` start as written. Who owns SLURM's signals, and how a requeued job
resumes, is told in :mod:`blockbert.train.cluster`, which holds Lightning's side."""

from __future__ import annotations

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from blockbert.errors import ConfigError
from blockbert.train.cluster import is_count, is_gpu

# overrides that decide what a cluster job asks for: the launcher asks once, for every job of the multirun
RESOURCE_KEYS = ("trainer", "trainer.devices", "trainer.num_nodes", "trainer.accelerator")


def gpus_per_node(accelerator, devices):
    """``hydra.launcher.gpus_per_node``: the devices per node when they are GPUs, else null (none asked)."""
    return devices if is_gpu(accelerator) else None


OmegaConf.register_new_resolver("blockbert_gpus_per_node", gpus_per_node, replace=True)


class LauncherRefusal(BaseException):
    """Carries a :class:`ConfigError` out of a Hydra callback: Hydra turns an ``Exception`` raised by a
    callback into a warning and goes on, so the refusal travels as a ``BaseException`` to ``run_task``,
    which reports ``error`` as one line (exit code 2)."""

    def __init__(self, error: ConfigError) -> None:
        super().__init__(str(error))
        self.error = error


class LauncherChecks(Callback):
    """Declared by ``conf/cluster/{slurm,submitit_local}.yaml`` (``hydra.callbacks``): Hydra calls it before it
    runs anything, so a command that would not start as written stops with one line:

    - without ``-m`` Hydra never uses the launcher (it runs the job here): refuse, saying to add ``-m``;
    - the launcher asks for ``trainer.num_nodes`` nodes of ``trainer.devices`` tasks (and GPUs), once for all
      jobs: ``trainer.devices`` must be a count (not -1, "all GPUs", which SLURM cannot be asked for), and
      those keys cannot be swept within one multirun.
    """

    def __init__(self, cluster: str) -> None:
        self.cluster = cluster

    def on_run_start(self, config, **kwargs) -> None:
        raise LauncherRefusal(
            ConfigError(
                f"cluster={self.cluster} submits jobs through Hydra's launcher, which "
                "only multiruns use: add -m (a one-job multirun)"
            )
        )

    def on_multirun_start(self, config, **kwargs) -> None:
        try:
            self.check_resources(config)
        except ConfigError as err:
            raise LauncherRefusal(err) from None

    def check_resources(self, config) -> None:
        """The resources the launcher will ask for, from the multirun's config (ConfigError if unfit)."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        task_overrides = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
        for override in OverridesParser.create().parse_overrides(task_overrides):
            if override.key_or_group in RESOURCE_KEYS and override.is_sweep_override():
                raise ConfigError(
                    f"cluster={self.cluster} asks for the same resources for every job of a multirun: "
                    f"{override.input_line} cannot be swept; run one multirun per value"
                )
        trainer = config.get("trainer")
        if trainer is None:
            return
        devices, nodes = trainer.get("devices"), trainer.get("num_nodes", 1)
        if not is_count(devices):
            what = " (all GPUs of a node, a count SLURM must be given)" if devices == -1 else ""
            raise ConfigError(
                f"cluster={self.cluster} starts trainer.devices tasks per node but "
                f"trainer.devices={devices}{what}: set a number, e.g. trainer.devices=8"
            )
        if self.cluster == "submitit_local" and nodes != 1:
            raise ConfigError(
                f"cluster=submitit_local runs on this machine only: trainer.num_nodes={nodes} "
                "must be 1 (use cluster=slurm for more nodes)"
            )


BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
# the launcher settings a preview always shows, null or not (the others only when set)
PREVIEW_KEYS = ("partition", "nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min")


def launcher_settings(config) -> dict | None:
    """A multirun's launcher settings (``config``: its config, with the ``hydra`` node, as
    :func:`blockbert.formats.compose.compose_multirun` composes it) resolved as the launcher reads them when it
    submits the jobs, after the checks ``cluster=...`` declares (ConfigError as the run would end); None for Hydra's
    basic launcher, which runs the jobs here, one after the other. Nothing is submitted."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import setup_globals

    launcher = config.hydra.launcher
    if launcher.get("_target_") == BASIC_LAUNCHER:
        return None
    for callback in (config.hydra.get("callbacks") or {}).values():
        if callback.get("_target_") == f"{LauncherChecks.__module__}.{LauncherChecks.__qualname__}":
            LauncherChecks(callback.cluster).check_resources(config)
    setup_globals()  # Hydra's resolvers (now, hydra), as a run registers them
    hydra_config = HydraConfig.instance()
    saved = hydra_config.cfg
    hydra_config.set_config(config)  # for ${hydra:...} in the settings, as inside a run
    try:
        settings = OmegaConf.to_container(launcher, resolve=True)
    finally:
        hydra_config.cfg = saved
    settings.pop("_target_", None)
    first = {key: settings.pop(key) for key in PREVIEW_KEYS if key in settings}
    return {**first, **{key: value for key, value in settings.items() if value is not None}}
