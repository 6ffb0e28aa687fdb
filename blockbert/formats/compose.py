"""The one place a config is composed from ``conf/``: Hydra's own config loader, the one a ``blockbert`` command runs
its job with, so that what is composed here (a preset's model node, a benchmark's run config, a config composed again
inside a job, a sweep's head count, an experiment's paper row) is what the command would run.

The loader is used directly, not through ``hydra.compose``: it keeps no global state, so it composes the same inside
a running Hydra job (which holds Hydra's global state) and outside one. It is an internal class of hydra-core, which
pyproject.toml pins to 1.3.x (as it pins the hand-over in :mod:`blockbert.app.launch`). Hydra is imported only when
a config is composed: the command line's help reads :func:`config_groups`, which needs none of it.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

import yaml

from blockbert.paths import config_dir


@functools.cache
def config_loader(config_dirs: tuple[str, ...] = ()):
    """Hydra's config loader over conf/ and ``config_dirs`` (what ``--config-dir`` adds, as Hydra's runner adds it)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path

    search_path = create_config_search_path(str(config_dir()))
    for directory in config_dirs:
        search_path.append("command-line", f"file://{directory}")
    return ConfigLoaderImpl(config_search_path=search_path)


@contextmanager
def _version_base():
    """Compose as the commands do (Hydra's version base 1.3), and leave Hydra's global setting as it was: a user's
    own Hydra app may run in this process."""
    from hydra import version

    base = version.VersionBase.instance()
    saved = base.getbase()
    version.setbase("1.3")
    try:
        yield
    finally:
        base.version_base = saved


def compose(config_name: str | None, overrides=(), config_dirs=()):
    """``conf/<config_name>.yaml`` (None: nothing but the groups the overrides add, ``+model=tiny``) composed with
    ``overrides`` as the command composes it, the ``hydra`` node left out; ``config_dirs``: a job's ``--config-dir``."""
    from hydra.types import RunMode
    from omegaconf import open_dict

    with _version_base():
        cfg = config_loader(tuple(config_dirs)).load_configuration(config_name, list(overrides), RunMode.RUN)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def override_key(override: str) -> str:
    """The key an override sets: ``model.heads`` of ``model.heads=10:2``, ``+x=1``, ``~experiment``."""
    return override.split("=", 1)[0].lstrip("+~")


def config_groups(command: str) -> dict[str, tuple[str | None, list[str]]]:
    """{group: (default option, options)} of the groups in ``conf/<command>.yaml``'s own defaults list (the option
    files of each group directory). Read from the files, without Hydra, for the command line's help."""
    conf = config_dir()
    defaults = (yaml.safe_load((conf / f"{command}.yaml").read_text()) or {}).get("defaults", [])
    groups = {}
    for entry in defaults:
        if not isinstance(entry, dict):  # `_self_`, `hydra/default`
            continue
        ((key, default),) = entry.items()
        group = key.removeprefix("override ").strip()
        options = sorted(path.stem for path in (conf / group).glob("*.yaml"))
        if options:
            groups[group] = (default, options)
    return groups
