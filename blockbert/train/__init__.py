"""Training, on Lightning around the pure-torch model: the modules (pre-training, QA), the optimizer and schedule,
what makes a run safe to stop and resume (``resilience``: the resume lookup, the guard, atomic checkpoints, SIGTERM),
``metrics.json``, the progress bar, the loggers, the cluster environment, the run settings, the run skeleton
(``run``) and the two runs (``pretrain``, ``finetune``). Hydra is not imported here: the command's entry point
(``blockbert.app.commands``) composes the config and hands it over.

Importing this package silences three messages of Lightning that mislead or concern no user: its advertisement for
LitLogger ("Tip: ... litlogger"), its note that it reads the training loader to count the run's steps (our bar shows
the count), and a deprecation warning Lightning 2.6 raises about torch's own pytree
API under torch >= 2.13 (``isinstance(treespec, LeafSpec)``), which no user can act on."""

import logging
import warnings

warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "Tip: For seamless cloud" not in message and "to estimate number of stepping batches" not in message


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NoTips())
