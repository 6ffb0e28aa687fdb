"""How errors end a command, in one place: the exceptions every layer raises (:class:`ConfigError` for bad input,
the ones that end a run) and their report as one line (``--debug`` for the traceback). The bottom of the package:
it imports nothing of blockbert and nothing heavy, so every layer (the pure-torch model included) may use it."""

from __future__ import annotations

import functools
import os
import select
import signal
import sys
import threading
from pathlib import Path

SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM, the shell's convention: schedulers must not read it as success


SIGINT_EXIT_CODE = 130  # 128 + SIGINT (Ctrl-C)
SIGPIPE_EXIT_CODE = 141  # 128 + SIGPIPE: what the shell reports for `cat` whose reader closed the pipe


class ConfigError(ValueError):
    """A configuration value or an input is not accepted; the message is a single line naming the bad value and
    what is accepted."""


class RunInterrupted(Exception):
    """A run stopped on SIGTERM or Ctrl-C: ``state`` says where it stopped and what is saved, ``resume`` how to
    resume it (the command that started a multirun or a sweep replaces it with its own unless the run is not
    ``resumable``: a benchmark is measured again), ``run_dir`` is where it resumes (a multirun's: its sweep
    directory), ``exit_code`` the shell's, ``saved`` the checkpoint the stop left in ``run_dir`` (a path relative
    to it), if any."""

    def __init__(
        self,
        state: str,
        resume: str,
        run_dir,
        exit_code: int = SIGTERM_EXIT_CODE,
        resumable: bool = True,
        saved: str | None = None,
    ):
        super().__init__(state)
        self.state, self.resume, self.run_dir, self.exit_code = state, resume, run_dir, exit_code
        self.resumable, self.saved = resumable, saved  # saved: the checkpoint it left, relative to run_dir

    def __str__(self) -> str:
        return f"{self.state}; {self.resume}"


class Terminated(BaseException):
    """SIGTERM (a scheduler's stop or time limit) where a command stops as Ctrl-C stops it (:class:`SigtermRaises`).
    A BaseException, as KeyboardInterrupt is, so that a library's ``except Exception`` does not take it for its own
    error."""


class SigtermRaises:
    """Within ``with SigtermRaises():``, SIGTERM raises :class:`Terminated` in this process, as Ctrl-C raises
    KeyboardInterrupt, so that a command stopped by a scheduler ends in its interrupted line and exit code 143;
    without it the process dies at once, saying nothing. Installed from the main thread only (where Python runs
    signal handlers; elsewhere nothing changes); the handler before it is back after the block, unless another was
    set meanwhile.

    Another handler that takes SIGTERM's place and calls this one as well (Lightning's, while a Trainer runs: it
    stops training at the next micro-batch, with a checkpoint) keeps its own way: this one does nothing while it is
    not the installed handler. A forked worker that inherited it ends as SIGTERM ends it."""

    def __init__(self):
        self.pid, self.previous, self.installed = os.getpid(), None, False

    def __enter__(self) -> SigtermRaises:
        if threading.current_thread() is threading.main_thread():
            self.previous, self.installed = signal.signal(signal.SIGTERM, self), True
        return self

    def __exit__(self, *exc) -> None:
        # a handler set since is left (SIG_IGN: a stopped run's, until its line is printed); None: set outside Python
        if self.installed and signal.getsignal(signal.SIGTERM) is self:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self.previous is None else self.previous)

    def __call__(self, signum, frame) -> None:
        if os.getpid() != self.pid:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        elif signal.getsignal(signal.SIGTERM) is self:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # told to stop: a second SIGTERM must not cut the report
            raise Terminated


STOP_EXIT_CODES = {"Ctrl-C": SIGINT_EXIT_CODE, "SIGTERM": SIGTERM_EXIT_CODE}  # what stopped a command: its exit code


def stop_name(stop: BaseException) -> str:
    """What a stopped command's line says stopped it: Ctrl-C (KeyboardInterrupt) or SIGTERM (:class:`Terminated`,
    Lightning's SIGTERMException)."""
    return "Ctrl-C" if isinstance(stop, KeyboardInterrupt) else "SIGTERM"


class NonFiniteLossError(RuntimeError):
    """The training loss or the weights became NaN or infinite; nothing from that state is saved."""


MAX_ERROR_CHARS = 1000


def report_error(command: str, err: Exception, debug: bool, where: str = "") -> int:
    """Print ``err`` as one line, after ``where`` it happened (a multirun's job), re-raised with ``debug``; for a
    failure that is not bad input a second line offering its traceback; the exit code: 2 for bad input, 143 (130)
    for a run stopped by SIGTERM (Ctrl-C; it prints its run directory), else 1."""
    if isinstance(err, RunInterrupted):  # not an error: the run resumes from its directory
        print_interrupted(command, err)
        print(Path(err.run_dir).resolve())
        return err.exit_code
    if debug:
        raise err
    text = f"{where}: {one_line(err)}" if where else one_line(err)
    if len(text) > MAX_ERROR_CHARS:  # e.g. a cluster job's whole stderr: the start says what went wrong
        text = text[:MAX_ERROR_CHARS] + " ... (--debug shows all)"
    print_error(command, text)
    if not is_user_error(err):  # bad input is said whole in its line; a failure may need its traceback
        print("(run again with --debug for the full traceback)", file=sys.stderr)
    return 2 if is_user_error(err) else 1


JSON_KINDS = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
}


def json_kind(value) -> str:
    """What a value read from JSON is, in JSON's words ("an array", not Python's "list"): errors quote the file's
    terms (an integer told from other numbers: offsets and counts must be integers)."""
    return "null" if value is None else JSON_KINDS.get(type(value), type(value).__name__)


def as_yaml(value) -> str:
    """A value in a message as the user writes it in YAML or an override: null, true, false; else its repr."""
    return "null" if value is None else ("true" if value else "false") if isinstance(value, bool) else repr(value)


def print_error(command: str, text: str) -> None:
    """The one line an error ends a command with, on stderr (``command`` empty: the command line's own)."""
    print(f"{' '.join(('blockbert', command)).rstrip()}: error: {text}", file=sys.stderr)


def print_interrupted(command: str, err: RunInterrupted | str) -> None:
    """The line a stopped run ends with, on stderr (its directory follows on stdout)."""
    print(f"{' '.join(('blockbert', command)).rstrip()}: interrupted: {err}", file=sys.stderr)


# a path given that cannot be used as it is (a missing file, a directory that cannot be written, a file in the way)
PATH_ERRORS = (FileNotFoundError, PermissionError, FileExistsError, NotADirectoryError, IsADirectoryError)


def is_user_error(err: Exception) -> bool:
    """Bad input: a config value, a missing file, or an override Hydra or OmegaConf refused (told by the exception's
    package, so that this module imports neither)."""
    from_config_library = any(c.__module__.split(".")[0] in ("hydra", "omegaconf") for c in type(err).__mro__)
    return isinstance(err, (ConfigError, *PATH_ERRORS)) or from_config_library


def one_line(err: Exception) -> str:
    """Hydra's and OmegaConf's messages span lines; join them, listing available options inline."""
    lines = []
    while err is not None:  # Hydra often wraps the informative error as __cause__
        lines += [line.strip() for line in str(err).splitlines() if line.strip() and line.strip() not in lines]
        if err.__cause__ is None:
            break
        err = err.__cause__
    if not lines:
        return type(err).__name__
    if type(err).__name__ == "OverrideParseException":  # Hydra's grammar's tokens say little to a user
        return not_an_override(err)
    if "Config search path:" in lines:  # Hydra's listing of where it looked: not the error
        lines = lines[: lines.index("Config search path:")]
    for i, line in enumerate(lines):
        if line.startswith("Available options in"):
            return "; ".join(lines[:i]) + f"; {line[:-1] if line.endswith(':') else line}: " + ", ".join(lines[i + 1 :])
    if isinstance(err, OSError) and err.strerror and err.filename and not err.filename2 and lines[-1] == str(err):
        lines[-1] = f"{err.filename}: {err.strerror}"  # not Python's "[Errno 1] Operation not permitted: 'path'"
    text = "; ".join(lines)
    return text if isinstance(err, (ValueError, OSError, LookupError)) else f"{type(err).__name__}: {text}"


def named_line(err: Exception) -> str:
    """:func:`one_line` beginning with the name of the error's kind (that of the error it wraps last, whose kind
    one_line names for some kinds): what a failed job's error.txt starts with."""
    inner = err
    while inner.__cause__ is not None:
        inner = inner.__cause__
    line, kind = one_line(err), type(inner).__name__
    return line if line.startswith(f"{kind}:") else f"{kind}: {line}"


def not_an_override(err: Exception) -> str:
    """Hydra's OverrideParseException (its grammar's words, a caret line, a link) as what an override is, naming the
    override (``err.override``) and where it stops being readable."""
    given = getattr(err, "override", None)
    lexer = "LexerNoViableAltException: "
    details = []
    lines = str(err).splitlines()
    for line, below in zip(lines, [*lines[1:], ""]):
        if line.startswith(lexer) and "^" in below and given:  # the caret marks where reading stopped
            details.append(f"unreadable from {given[max(0, below.index('^') - len(lexer)) :]!r}")
        elif line.strip() and not line.startswith(("See ", "Error parsing override", lexer)) and line.strip() != "^":
            details.append(line.split(" expecting ")[0].strip())
    detail = f" ({'; '.join(details)})" if details else ""
    return (
        f"{repr(given) + ' is not' if given else 'an argument is not'} an override{detail}: give key=value "
        "(model.heads=10:2), group=option (model=blockbert_n3), +key=value to add a key or ~key to remove one, and "
        "a value with brackets, spaces or ; in quotes ('data.files=\"my corpus.txt\"')"
    )


def one_line_errors(command: str):
    """Decorate a command's function so that an error ends it as one line and exit code (:func:`report_error`); the
    function takes ``debug`` as a keyword: with it the error is raised with its traceback."""

    def decorate(function):
        @functools.wraps(function)
        def run(*args, debug: bool = False, **kwargs) -> int:
            try:
                return function(*args, **kwargs) or 0
            except BrokenPipeError as err:
                return quiet_exit_for_closed_stdout() if stdout_closed() else report_error(command, err, debug)
            except Exception as err:  # noqa: BLE001 -- every failure ends in one readable line
                return report_error(command, err, debug)

        return run

    return decorate


def stdout_closed() -> bool:
    """Whether the reader of stdout closed it (`blockbert report DIR | head`): then a command ends quietly with exit
    code 141, as `cat` ends, by Python's recipe (docs.python.org/3/library/signal.html#note-on-sigpipe); before, it
    ended in "[Errno 32] Broken pipe" as an error. A pipe without its reader polls as an error (POLLERR); a broken
    pipe of another file (a worker's) is an error as before. Without poll (Windows), any broken pipe is taken for
    stdout's."""
    if not hasattr(select, "poll"):
        return True
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # io.UnsupportedOperation: no file behind stdout (captured)
        return False
    poll = select.poll()
    poll.register(descriptor, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))


def quiet_exit_for_closed_stdout() -> int:
    """Python's flush at exit made quiet (stdout pointed at /dev/null); the exit code of `cat` whose reader left."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return SIGPIPE_EXIT_CODE
