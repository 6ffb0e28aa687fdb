"""Where blockbert's configuration lives: ``conf/`` inside the installed package (wheel) or at the root of a
source checkout. Light on purpose (the CLI's help reads it)."""

from pathlib import Path


def config_dir() -> Path:
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "pretrain.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"blockbert's conf/ directory was not found next to {package}")
