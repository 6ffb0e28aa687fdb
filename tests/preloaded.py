"""Runs the tests' ``blockbert`` commands in processes forked from one that has already imported the third-party
libraries (torch, datasets, transformers, Hydra...): each command still runs in a process of its own, through the
installed entry point, in its own directory and environment, but skips the ~5 s those imports take (most of a tiny
command's time; the suite starts ~160 commands). blockbert itself (``cli``, ``blockbert.*``) and Lightning are imported
afresh in each command, as a user's process imports them.

A command whose environment differs from this process's in anything a library may read as it imports (anything but
:data:`RUNTIME_ONLY`) runs in a fresh interpreter instead, as does every command with ``BLOCKBERT_TESTS_FRESH=1``.
What a fork cannot give as a fresh interpreter does: every command has the server's string hash seed (a dependence on
set order shows in no test that compares two commands; ``random``, numpy's and datasets' fingerprint generators are
reseeded), stdin is /dev/null, and an uncaught error's traceback starts with this module's and runpy's frames.

As a script: the server. It reads one JSON request a line on fd 0 (argv, env, cwd, the files for stdout and stderr)
and answers on fd 1 the child's pid, then its exit code (as :class:`subprocess.Popen` gives it: -N for a signal)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path

# read as a command runs, never while a library imports; a library that sets one as it imports: its value is the same
RUNTIME_ONLY = ("BLOCKBERT_", "WANDB_", "HYDRA_", "PL_", "PYTEST_", "PYTHONUNBUFFERED", "PYTORCH_NVML_BASED_CUDA_CHECK")
# Lightning is left to each command (it imports in 0.1 s after these): as it imports, it gives its loggers a handler of
# their own unless the root logger has one, so whether its lines reach a run's log file depends on when the command
# imports it. W&B too: it is imported only by runs that log to it.
LIBRARIES = (
    "torch",
    "torch._dynamo",
    "torchmetrics",
    "datasets",
    "transformers",
    "tokenizers",
    "safetensors",
    "huggingface_hub",
    "hydra",
    "omegaconf",
    "typer",
    "rich",
)


class Preloaded:
    """The client: one server per test process, started at its first command."""

    def __init__(self, environ: dict[str, str]):
        self.environ = environ  # the server's: the test process's as it starts, before a test changes its own
        self.server: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.usable = os.environ.get("BLOCKBERT_TESTS_FRESH") != "1"

    def run(self, argv: list[str], cwd, environ: dict[str, str], timeout: float) -> subprocess.CompletedProcess | None:
        """``argv`` run as :func:`subprocess.run` runs it with ``capture_output=True, text=True``; None when it must
        run in a fresh interpreter instead (another environment, a command already running here, no server)."""
        script = Path(sysconfig.get_path("scripts")) / argv[0]  # the entry point pip wrote for this interpreter
        if _import_time_settings(environ) != _import_time_settings(self.environ) or not script.is_file():
            return None
        if not self.usable or not self.lock.acquire(blocking=False):
            return None
        try:
            if self.server is None:
                self._start()
            return self._run([str(script), *argv[1:]], cwd, environ, timeout) if self.usable else None
        finally:
            self.lock.release()

    def _start(self) -> None:
        """The server, once it says it is ready (within a minute): it is not used if its imports printed anything (a
        fresh process would show that to the test), nor if it is gone."""
        self.server = subprocess.Popen(  # unbuffered: a read takes no more than the line it asks for
            [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self.environ, bufsize=0
        )
        ready = select.select([self.server.stdout], [], [], 60)[0] and self.server.stdout.readline() == b"ready\n"
        self.usable = bool(ready)
        if not ready:
            self.server.kill()

    def _run(self, argv, cwd, environ, timeout) -> subprocess.CompletedProcess | None:
        out = Path(tempfile.mkdtemp(prefix="blockbert-preloaded-"))  # not in cwd, which tests list
        streams = {name: out / name for name in ("stdout", "stderr")}
        request = {"argv": argv, "env": environ, "cwd": str(cwd), **{k: str(v) for k, v in streams.items()}}
        try:
            try:
                self.server.stdin.write(json.dumps(request).encode() + b"\n")
                pid = int(self.server.stdout.readline())
            except (OSError, ValueError):  # the server is gone before it forked: a fresh interpreter runs the command
                self.usable = False
                return None
            if not select.select([self.server.stdout], [], [], timeout)[0]:
                with contextlib.suppress(ProcessLookupError):  # it ended as the time ran out
                    os.kill(pid, signal.SIGKILL)
                self.server.stdout.readline()
                raise subprocess.TimeoutExpired(argv, timeout, *(_text(path) for path in streams.values()))
            returncode = int(self.server.stdout.readline())
            return subprocess.CompletedProcess(argv, returncode, *(_text(path) for path in streams.values()))
        finally:
            shutil.rmtree(out)


def _import_time_settings(environ: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in environ.items() if not key.startswith(RUNTIME_ONLY)}


def _text(path: Path) -> str:
    """As ``subprocess.run(text=True)`` decodes a stream: the preferred encoding (UTF-8 mode included), universal
    newlines."""
    return path.read_text()


def _serve() -> dict:
    """Imports the libraries, says "ready" (unless they printed anything), then forks a child per request and answers
    its pid and exit code; returns the request in the child, which then runs it as the rest of this program."""
    import importlib

    requests, answers = os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb")
    printed = tempfile.TemporaryFile()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(printed.fileno(), 1)
    os.dup2(printed.fileno(), 2)
    for name in LIBRARIES:
        importlib.import_module(name)
    if os.fstat(printed.fileno()).st_size:
        sys.exit(1)
    answers.write(b"ready\n")
    answers.flush()
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            requests.close()
            answers.close()
            printed.close()
            return request
        answers.write(f"{pid}\n".encode())
        answers.flush()
        _, status = os.waitpid(pid, 0)
        answers.write(f"{os.waitstatus_to_exitcode(status)}\n".encode())
        answers.flush()
    sys.exit(0)


def _become(request: dict) -> None:
    """The child: the process ``request`` names, as a fresh interpreter would start it (streams, buffering,
    environment, directory, argv and sys.path[0] of the entry point script)."""
    import io
    import random

    import numpy

    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    for fd, name in ((1, "stdout"), (2, "stderr")):
        target = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))

    def stream(fd: int, like: io.TextIOWrapper, line_buffering: bool) -> io.TextIOWrapper:
        raw = io.FileIO(fd, "w", closefd=False)
        return io.TextIOWrapper(
            raw if unbuffered else io.BufferedWriter(raw),
            encoding=like.encoding,
            errors=like.errors,
            line_buffering=line_buffering,
            write_through=unbuffered,
        )

    sys.stdout = sys.__stdout__ = stream(1, sys.__stdout__, False)
    sys.stderr = sys.__stderr__ = stream(2, sys.__stderr__, True)
    random.seed()
    numpy.random.seed()
    sys.modules["datasets"].fingerprint.fingerprint_rng.seed()  # what a fresh process draws new fingerprints from
    sys.argv = request["argv"]
    sys.path[0] = os.path.dirname(sys.argv[0])


if __name__ == "__main__":
    import runpy

    child = _serve()
    _become(child)
    runpy.run_path(sys.argv[0], run_name="__main__")
