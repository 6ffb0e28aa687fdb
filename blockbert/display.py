"""Output helpers every command shares: sizes in MiB, a rich console readable in logs, pyplot without a display, and
the closing lines that name the run directory."""

import errno
import logging
import sys
from pathlib import Path

from rich.console import Console

MiB = 2**20


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def counted(count: int, noun: str) -> str:
    """``count`` and ``noun``, plural unless one: "1 device", "2 devices"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def print_results(contents: str, directory: Path, what: str = "results") -> None:
    """A command's closing lines: what its run directory holds (``what (contents) are in:``), then the directory
    itself, the last line printed."""
    print(f"{what} ({contents}) {'are' if what.endswith('s') else 'is'} in:")
    print(Path(directory).resolve())


class ConsoleLogHandler(logging.StreamHandler):
    """The console handler of a command's log (conf/hydra/default.yaml: Hydra's, which writes to stdout), quiet when
    stdout's reader has left (`| head`): the command then ends as `cat` ends (errors.one_line_errors), not in a
    "--- Logging error ---" traceback per line logged."""

    def handleError(self, record: logging.LogRecord) -> None:
        if not isinstance(sys.exc_info()[1], BrokenPipeError):
            super().handleError(record)


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """A closed stdout (`| head`) ends the command as errors.one_line_errors ends it (exit code 141, as `cat`
        ends); rich's own ends the process with exit code 1."""
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, "stdout was closed")


def console() -> Console:
    """A rich console; wide when the output is not a terminal, so tables stay readable in logs."""
    return _Console(width=None if sys.stdout.isatty() else 160)
