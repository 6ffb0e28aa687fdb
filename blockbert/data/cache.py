"""Data built once into the cache directory (``paths.cache_dir``), then read back by every process (DDP ranks, SLURM
tasks, sweep jobs): the one helper every cached artifact is built through.

- :func:`build_once`: a directory (Arrow files, a tokenizer) with ``manifest.json``, which is written last: an
  entry without it is incomplete and is rebuilt.
- :func:`build_file`: a single file (a generated corpus or QA set), written to a temporary file and renamed.

One process builds under a file lock beside the entry; the others wait for the lock and then read what it wrote.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from blockbert.errors import ConfigError

log = logging.getLogger(__name__)

VERSION = 1  # part of every key: bump it when the data code changes what it builds


def fingerprint(*parts) -> str:
    """A short, stable hash of JSON-able parts (configs, file stats, other fingerprints)."""
    text = json.dumps([VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """The tokenizer's vocabulary and pipeline (its ``tokenizer.json``), without the padding and truncation
    state that ``transformers`` switches on and off between calls."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("padding", None)
        spec.pop("truncation", None)
    else:  # a slow tokenizer: its vocabulary and class
        spec = sorted(tokenizer.get_vocab().items())
    return fingerprint(type(tokenizer).__name__, spec)


def file_stats(patterns) -> list:
    """(path, size, mtime) of the files a path, glob or list of them names: changes when a file does."""
    import glob

    patterns = [patterns] if isinstance(patterns, str) else list(patterns or [])
    paths = sorted({p for pattern in patterns for p in glob.glob(str(Path(pattern).expanduser()))})
    return [(str(Path(p).resolve()), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths if os.path.isfile(p)]


@contextmanager
def _building(target: Path):
    """Hold the build lock of ``target`` (``TARGET.lock`` beside it): one process builds, the others wait here."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process to finish building %s", target)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def build_once(directory: Path, build: Callable[[Path], dict]) -> dict:
    """The manifest of ``directory``; unless it is there, ``build(directory)`` writes the files first and
    returns the manifest (JSON-able, file names relative to ``directory``)."""
    manifest = directory / "manifest.json"
    if manifest.is_file():
        return json.loads(manifest.read_text())
    with _building(directory):
        if manifest.is_file():  # the other process finished it
            return json.loads(manifest.read_text())
        directory.mkdir(exist_ok=True)
        for stale in directory.iterdir():  # what an interrupted build left
            if stale.is_file():
                stale.unlink()
        content = build(directory)
        write_atomically(manifest, lambda tmp: tmp.write_text(json.dumps(content, indent=1)))
        return content


def build_file(path: Path, write: Callable[[Path], None]) -> Path:
    """``path``; unless it is there, ``write(tmp)`` writes it first (a temporary file renamed over ``path``, so that
    an interrupted build leaves none half written)."""
    if not path.exists():
        with _building(path):
            if not path.exists():
                write_atomically(path, write)
    return path


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a file beside ``path`` (named after this host and process), then renamed over ``path``:
    readers see the old file or the new one, whole, even with processes of several machines writing."""
    tmp = path.with_name(f"{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def arrow_files(dataset) -> list[str]:
    """The names of the Arrow files a freshly mapped dataset was written to (one per worker process)."""
    return [Path(f["filename"]).name for f in dataset.cache_files]


def load_arrow(directory: Path, files: list[str]):
    """The ``datasets.Dataset`` stored in ``files`` (memory-mapped, concatenated in order)."""
    import datasets  # here: the light users of this module (a generated QA set for `blockbert evaluate`) need none

    parts = [datasets.Dataset.from_file(str(directory / name)) for name in files]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def cache_dir(cfg) -> Path:
    """A composed config's ``paths.cache_dir``, as a path (``~`` expanded)."""
    return Path(cfg.paths.cache_dir).expanduser()


@contextmanager
def from_the_hub(setting: str, advice: str):
    """A hub dataset loaded (``setting``: the key and value naming it): unreachable (no network, HF_HUB_OFFLINE), it is
    bad input in one line with ``advice`` (the local files to give instead), not a failure with a traceback."""
    try:
        yield
    except ConnectionError as err:  # datasets' "Couldn't reach NAME on the Hub (...)", after huggingface_hub's retries
        raise ConfigError(f"{setting}: {err}; {advice}") from None


def hub_cache(cache_dir: Path) -> str | None:
    """The datasets cache for hub and file data: HF_DATASETS_CACHE or HF_HOME's when the user set one (None lets
    datasets resolve it), else ``cache_dir/datasets``."""
    if os.environ.get("HF_DATASETS_CACHE") or os.environ.get("HF_HOME"):
        return None
    return str(Path(cache_dir) / "datasets")
