"""Task entry points, one module per command, and the hand-over from the CLI to Hydra (``launch``).

Kept light (no torch, Lightning or Hydra): the CLI reads :func:`config_dir` to list config groups in its help."""

from blockbert.paths import config_dir

ENTRY_POINTS = {
    "pretrain": "blockbert.tasks.pretrain",
    "finetune": "blockbert.tasks.finetune",
    "profile": "blockbert.tasks.profile",
    "benchmark": "blockbert.tasks.benchmark",
}


def config_groups(task: str) -> dict[str, tuple[str | None, list[str]]]:
    """{group: (default option, options)} of the groups in ``conf/<task>.yaml``'s defaults list (of
    :func:`blockbert.paths.config_dir`)."""
    import re

    conf = config_dir()
    groups = {}
    for group, default in re.findall(
        r"^\s*-\s*(?:override\s+)?(\w+):\s*(\w+)", (conf / f"{task}.yaml").read_text(), re.M
    ):
        options = sorted(path.stem for path in (conf / group).glob("*.yaml"))
        if options:
            groups[group] = (None if default == "null" else default, options)
    return groups
