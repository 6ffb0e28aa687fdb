"""Exceptions that end a run and are reported by the CLI as one line (bad configuration values are
:class:`blockbert.config.ConfigError`). Kept free of heavy imports: the error path loads it."""

from __future__ import annotations

SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM, the shell's convention: schedulers must not read it as success


SIGINT_EXIT_CODE = 130  # 128 + SIGINT (Ctrl-C)


class RunInterrupted(Exception):
    """Training stopped on SIGTERM or Ctrl-C; ``run_dir`` is where the run resumes, ``exit_code`` the shell's."""

    def __init__(self, message: str, run_dir, exit_code: int = SIGTERM_EXIT_CODE):
        super().__init__(message)
        self.run_dir, self.exit_code = run_dir, exit_code


class NonFiniteLossError(RuntimeError):
    """The training loss or the weights became NaN or infinite; nothing from that state is saved."""
