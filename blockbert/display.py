"""Output helpers the tools share: sizes in MiB, a rich console readable in logs, pyplot without a display."""

import sys

from rich.console import Console

MB = 2**20


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def console() -> Console:
    """A rich console; wide when the output is not a terminal, so tables stay readable in logs."""
    return Console(width=None if sys.stdout.isatty() else 160)
