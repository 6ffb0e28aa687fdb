"""The app: the one place Hydra runs (``launch``: the CLI's arguments handed to Hydra, DDP ranks, completion), the
config a training job runs with (``run_config``), the cluster launcher's settings and checks (``cluster``), and one
entry point per command (``commands``). Kept light (no torch, Lightning or Hydra): ``cli.py`` imports it to start a
command."""

ENTRY_POINTS = {  # the commands Hydra runs: their task function is the module's `main`
    "pretrain": "blockbert.app.commands.pretrain",
    "finetune": "blockbert.app.commands.finetune",
    "profile": "blockbert.app.commands.profile",
    "benchmark": "blockbert.app.commands.benchmark",
}
