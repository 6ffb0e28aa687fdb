"""Pre-training preprocessing against its floor, at several corpus sizes (``blockbert benchmark mode=data``).

*Ours* is ``PretrainDataModule.prepare_data()`` on a raw text file: the documents (``datasets``' text
loader, empty ones dropped), the train/validation split, sentence splitting, tokenisation and packing,
written to the cache. The *floor* is the least any such pipeline does: ``datasets.load_dataset("text")``
of the same file and one plain ``datasets.map`` of the same fast tokenizer over it. The corpus comes from
the project's generator (``generated_corpus``, in chunks of different seeds). Every measurement runs in
a fresh process with an empty cache, so neither memory nor caches carry over; the time and CPU time are
those of the work alone (not the imports), the peak RSS is the process's high-water mark (VmHWM). Both
pipelines read memory-mapped Arrow files, whose pages count in RSS while resident (clean page cache the
kernel takes back when it needs it), so the peak of the anonymous part (RssAnon, sampled every 20 ms) is
reported too: that is the memory the pipeline itself holds.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from blockbert.display import MiB

CHUNK_DOCUMENTS = 20000  # documents per generated chunk, about 9.4 MiB
KINDS = ("ours", "floor")
TARGET_RATIO = 1.3  # issue 13's target: preparing a corpus takes at most 1.3x the floor's time


def make_corpus(size_mb: float, directory: Path) -> Path:
    """A text corpus of about ``size_mb`` MiB (whole documents, blank-line separated), built once into the cache."""
    from blockbert.data.cache import build_file
    from blockbert.data.corpus import generated_text

    def write(tmp: Path) -> None:
        budget, seed = int(size_mb * MiB), 0
        with open(tmp, "wb") as out:
            while budget > 0:
                chunk = generated_text(CHUNK_DOCUMENTS, seed).encode().rstrip(b"\n")
                if len(chunk) + 2 > budget:  # the last chunk: as many whole documents as fit
                    chunk = chunk[: max(chunk.rfind(b"\n\n", 0, budget - 1), 0)]
                    budget = 0
                if chunk:
                    out.write(chunk + b"\n\n")
                budget -= len(chunk) + 2
                seed += 1

    return build_file(directory / f"corpus-{size_mb:g}MB.txt", write)


def benchmark_tokenizer(corpus: Path, vocab_size: int) -> Path:
    """A WordPiece tokenizer trained on (the first 10 MiB of) ``corpus``, the same one for ours and the floor."""
    import datasets

    from blockbert.data.cache import build_once
    from blockbert.data.tokenizer import train_wordpiece

    def build(directory: Path) -> dict:
        with open(corpus, encoding="utf-8") as text:
            documents = datasets.Dataset.from_dict({"text": text.read(10 * MiB).split("\n\n")})
        train_wordpiece(documents, vocab_size, corpus.parent / "cache").save_pretrained(str(directory))
        return {"vocab_size": vocab_size}

    target = corpus.parent / f"tokenizer-{vocab_size}-{corpus.stem}"
    build_once(target, build)
    return target


def measure(kind: str, corpus: Path, tokenizer: Path, settings: dict, parallelism: bool, workdir: Path) -> dict:
    """One measurement in a fresh Python process, with a fresh cache directory under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=workdir))
    env = dict(os.environ, TOKENIZERS_PARALLELISM="true" if parallelism else "false", HF_DATASETS_OFFLINE="1")
    try:
        out = subprocess.run(
            [sys.executable, "-m", __name__, kind, str(corpus), str(tokenizer), str(cache), json.dumps(settings)],
            capture_output=True,
            text=True,
            env=env,
        )
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if out.returncode != 0:
        raise RuntimeError(f"the {kind} measurement of {corpus.name} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(
    sizes_mb,
    directory: Path,
    settings: dict,
    repeats: int = 1,
    parallelism: bool = False,
    vocab_size: int = 30522,
    log=print,
) -> Iterator[dict]:
    """One record per corpus size, as each is measured: the medians over ``repeats`` of ours and the floor, measured
    in turns."""
    tokenizer = benchmark_tokenizer(make_corpus(min(sizes_mb), directory), vocab_size)
    for size in sizes_mb:
        corpus = make_corpus(size, directory)
        corpus_mb = corpus.stat().st_size / MiB
        runs = {kind: [] for kind in KINDS}
        for r in range(repeats):
            for kind in KINDS if r % 2 == 0 else KINDS[::-1]:
                runs[kind].append(measure(kind, corpus, tokenizer, settings, parallelism, directory / "work"))
                log(f"{size:g} MiB {kind}: {runs[kind][-1]['seconds']:.1f} s")
        record = {"size_mb": size, "corpus_mb": corpus_mb}
        for kind in KINDS:
            seconds = statistics.median(m["seconds"] for m in runs[kind])
            record.update(
                {
                    f"{kind}_s": seconds,
                    f"{kind}_mb_per_s": corpus_mb / seconds,
                    f"{kind}_cpu_s": statistics.median(m["cpu_seconds"] for m in runs[kind]),
                    f"{kind}_peak_rss_mb": max(m["peak_rss_mb"] for m in runs[kind]),
                    f"{kind}_peak_anon_mb": max(m["peak_anon_mb"] for m in runs[kind]),
                    f"{kind}_start_rss_mb": max(m["start_rss_mb"] for m in runs[kind]),
                    f"{kind}_rows": runs[kind][0]["rows"],
                    f"{kind}_runs": runs[kind],
                }
            )
        record["ratio"] = record["ours_s"] / record["floor_s"]
        record["ratio_cpu"] = record["ours_cpu_s"] / record["floor_cpu_s"]
        yield record


def summary(records: list[dict]) -> dict:
    """Whether time grows linearly with the corpus (seconds per MiB, largest size / smallest) and peak RSS stays
    flat (its growth from the smallest to the largest corpus), for ours and the floor."""
    first, last = min(records, key=lambda r: r["corpus_mb"]), max(records, key=lambda r: r["corpus_mb"])
    out = {"worst_ratio": max(r["ratio"] for r in records), "worst_ratio_cpu": max(r["ratio_cpu"] for r in records)}
    for kind in KINDS:
        per_mb = [r[f"{kind}_s"] / r["corpus_mb"] for r in (first, last)]
        out[f"{kind}_time_per_mb_growth"] = per_mb[1] / per_mb[0]
        out[f"{kind}_peak_rss_growth_mb"] = last[f"{kind}_peak_rss_mb"] - first[f"{kind}_peak_rss_mb"]
        out[f"{kind}_peak_anon_growth_mb"] = last[f"{kind}_peak_anon_mb"] - first[f"{kind}_peak_anon_mb"]
    return out


def print_table(results: dict) -> None:
    from rich.table import Table

    from blockbert.display import console

    s = results["settings"]
    table = Table(
        title=f"blockbert benchmark (data): {results['machine']}, N={s['max_seq_length']}, "
        f"{'NSP pairs' if s['nsp'] else 'packed'}, num_proc={s['num_proc'] or 1}, tokenizer threads "
        f"{'all' if results['tokenizers_parallelism'] else 1}, {results['date']}"
    )
    for column in (
        "corpus MiB",
        "ours MiB/s",
        "floor MiB/s",
        "ours/floor time",
        "ours/floor CPU time",
        "ours peak RSS (anon) MiB",
        "floor peak RSS (anon) MiB",
    ):
        table.add_column(column, justify="right")
    for r in results["records"]:
        table.add_row(
            f"{r['corpus_mb']:.0f}",
            f"{r['ours_mb_per_s']:.2f}",
            f"{r['floor_mb_per_s']:.2f}",
            f"{r['ratio']:.2f}",
            f"{r['ratio_cpu']:.2f}",
            *(f"{r[f'{kind}_peak_rss_mb']:.0f} ({r[f'{kind}_peak_anon_mb']:.0f})" for kind in KINDS),
        )
    console().print(table)
    sm = results["summary"]
    if len(results["records"]) > 1:
        print(
            f"time per MiB, largest / smallest corpus: ours {sm['ours_time_per_mb_growth']:.2f}, floor "
            f"{sm['floor_time_per_mb_growth']:.2f} (1.00 = linear); peak RSS (anon) growth: ours "
            f"{sm['ours_peak_rss_growth_mb']:+.0f} ({sm['ours_peak_anon_growth_mb']:+.0f}) MiB, floor "
            f"{sm['floor_peak_rss_growth_mb']:+.0f} ({sm['floor_peak_anon_growth_mb']:+.0f}) MiB"
        )
    met = "met" if sm["worst_ratio"] <= TARGET_RATIO else "missed"
    print(
        f"worst ours/floor time: {sm['worst_ratio']:.2f} (wall), {sm['worst_ratio_cpu']:.2f} (CPU); target "
        f"<= {TARGET_RATIO} (wall): {met}"
    )


def _rss_mb(field: str) -> float:
    """VmHWM (peak), VmRSS (now) or RssAnon (now) of this process, MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()  # no /proc: the peak


def peak_rss_mb() -> float:
    """This process's peak RSS, MiB (Linux's ru_maxrss is in KiB). Kept here, where nothing imports torch, so that
    this module's child processes measure without it; the whole runs' children (run_benchmark) read it too."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _AnonPeak(threading.Thread):
    """Samples RssAnon every 20 ms; ``peak`` is the largest value seen."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.running = _rss_mb("RssAnon"), True

    def run(self):
        while self.running:
            self.peak = max(self.peak, _rss_mb("RssAnon"))
            time.sleep(0.02)

    def stop(self) -> float:
        self.running = False
        self.join()
        return max(self.peak, _rss_mb("RssAnon"))


def _child(kind: str, corpus: str, tokenizer: str, cache: str, settings: dict) -> dict:
    import datasets

    datasets.disable_progress_bars()
    if kind == "ours":
        from blockbert.data.pretrain_datamodule import PretrainDataModule
        from blockbert.formats.compose import compose

        cfg = compose(None, ["+data=tiny_corpus"]).data
        cfg.merge_with(
            dict(source="files", files=corpus, tokenizer=tokenizer, num_proc=settings["num_proc"],
                 max_seq_length=settings["max_seq_length"])
        )  # fmt: skip
        data = PretrainDataModule(cfg, settings["nsp"], 1, 0, Path(cache))
        work = data.prepare_data
    else:
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(tokenizer)

        def work():
            ds = datasets.load_dataset(
                "text",
                data_files=[corpus],
                sample_by="paragraph",
                split="train",
                cache_dir=str(Path(cache) / "datasets"),
            )
            return ds.map(
                lambda b: {"input_ids": tok(b["text"], add_special_tokens=False)["input_ids"]},
                batched=True,
                batch_size=1000,
                remove_columns=["text"],
                num_proc=settings["num_proc"],
            )

    start_rss, anon = _rss_mb("VmRSS"), _AnonPeak()
    anon.start()
    wall, cpu = time.perf_counter(), _cpu_seconds()
    out = work()
    result = {
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": _cpu_seconds() - cpu,
        "peak_rss_mb": _rss_mb("VmHWM"),
        "peak_anon_mb": anon.stop(),
        "start_rss_mb": start_rss,
    }
    if out is None:  # ours: count what the cache holds
        data.setup()
        out = data.train_set, data.val_set
    result["rows"] = len(out) if kind == "floor" else sum(len(part) for part in out)
    return result


def _cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its finished children (num_proc workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    print(json.dumps(_child(*sys.argv[1:5], json.loads(sys.argv[5]))))
