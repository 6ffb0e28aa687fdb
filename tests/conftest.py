import os
import shutil
import subprocess
import tempfile
from pathlib import Path

if "PYTEST_XDIST_WORKER" in os.environ:  # two workers on two cores: one thread each, and in the commands they start
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # (OpenMP threads spinning on a shared core slowed tests up to 8x)

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the memory fits `blockbert plan` and every run's check measure, shared by the tests (and pytest-xdist's workers) as
# a user's runs share them; removed when the session ends (pytest_sessionfinish)
SESSION = os.getppid() if "PYTEST_XDIST_WORKER" in os.environ else os.getpid()  # a worker's parent: the controller
PLAN_DIR = Path(tempfile.gettempdir()) / f"blockbert-plan-{SESSION}"
os.environ.setdefault("BLOCKBERT_PLAN_DIR", str(PLAN_DIR))


import pytest  # noqa: E402
from preloaded import Preloaded  # noqa: E402

# registers with transformers' Auto classes before a test imports cli.py, which sets BLOCKBERT_CLI=1
import blockbert as _blockbert  # noqa: E402, F401

PRELOADED = Preloaded(dict(os.environ))


def run_blockbert(cwd, *args, check=True, env=None, environ=None, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    """``blockbert ARGS`` run in ``cwd`` as a user runs it: the installed command in a process of its own (forked from
    one that has imported the third-party libraries, :mod:`preloaded`; a fresh interpreter when ``kwargs`` are given
    to :func:`subprocess.run`), the cache under ``cwd/cache`` (``BLOCKBERT_CACHE``), unbuffered output, W&B as this
    process has it (disabled unless ``env`` says otherwise). ``env`` adds to that environment; ``environ`` replaces it
    whole. ``check``: the command must exit 0 (else the tail of its stderr is shown)."""
    if environ is None:
        environ = {**os.environ, "BLOCKBERT_CACHE": str(Path(cwd) / "cache"), "PYTHONUNBUFFERED": "1", **(env or {})}
    argv = ["blockbert", *map(str, args)]
    out = None if kwargs else PRELOADED.run(argv, cwd, environ, timeout)
    if out is None:
        out = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=environ, timeout=timeout, **kwargs)
    if check:
        assert out.returncode == 0, out.stderr[-4000:]
    return out


@pytest.fixture(scope="session")
def blockbert():
    """The command line as a user runs it: :func:`run_blockbert`."""
    return run_blockbert


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    import datasets

    from blockbert.data.tokenizer import train_wordpiece

    docs = datasets.Dataset.from_dict({"text": ["the model reads a long sequence of words and learns"] * 20})
    return train_wordpiece(docs, 200, tmp_path_factory.mktemp("tok"))


def pytest_collection_modifyitems(items):
    """The slow end-to-end tests first: spread over the workers (pytest -n 2) they then run beside the many short
    tests instead of ending the run one after another."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_sessionfinish(session, exitstatus):
    if not hasattr(session.config, "workerinput"):  # the controller (or a run without workers), after every worker
        shutil.rmtree(PLAN_DIR, ignore_errors=True)
