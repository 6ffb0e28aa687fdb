"""Where blockbert's files are: ``conf/`` and ``sweeps/`` inside the installed package (wheel) or at the root of a
source checkout. Light on purpose (the command line's help reads it)."""

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def _beside_package(name: str, marker: str) -> Path:
    for candidate in (PACKAGE / name, PACKAGE.parent / name):
        if (candidate / marker).exists():
            return candidate
    raise FileNotFoundError(f"blockbert's {name}/ directory was not found next to {PACKAGE}")


def config_dir() -> Path:
    return _beside_package("conf", "pretrain.yaml")


def sweeps_dir() -> Path:
    return _beside_package("sweeps", "heads_n2.yaml")
