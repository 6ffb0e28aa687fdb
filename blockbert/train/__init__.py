"""The Lightning layer around the pure-torch model: modules (pre-training, QA), the optimizer and schedule, the
callbacks that make runs safe to stop and resume, metrics.json, the progress bar and the loggers. Hydra is not
imported here: the task entry points (``blockbert.app``) compose the config and hand it over.

Importing this package silences two messages of Lightning that mislead our users: its advertisement for
LitLogger ("Tip: ... litlogger"), and a deprecation warning Lightning 2.6 raises about torch's own pytree
API under torch >= 2.13 (``isinstance(treespec, LeafSpec)``), which no user can act on."""

import logging
import warnings

warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless cloud" not in record.getMessage()


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NoTips())
