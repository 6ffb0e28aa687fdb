"""The same command gives the same numbers on any machine: what a run builds in its cache (the WordPiece
vocabulary above all, whose Hugging Face trainer breaks ties by per-process hash order) is the same from a fresh
cache, and so are the run's metrics."""

import hashlib
import json
import subprocess
import sys

import pytest

from blockbert.data.wordpiece import learn_vocabulary

TRAIN = """
import sys
from pathlib import Path
import datasets
from blockbert.data.corpus import generated_text
from blockbert.data.tokenizer import train_wordpiece
docs = datasets.Dataset.from_dict({"text": generated_text(300).split("\\n\\n")})
train_wordpiece(docs, 300, Path(sys.argv[1]))
"""


def tokenizer_files(cache) -> dict:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(cache.glob("tokenizers/*/*")) if p.is_file()
    }


def test_two_processes_train_the_same_tokenizer_byte_for_byte(tmp_path):
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", TRAIN, str(tmp_path / name)], check=True, capture_output=True)
    first, second = tokenizer_files(tmp_path / "a"), tokenizer_files(tmp_path / "b")
    assert "tokenizer.json" in first and first == second


def test_the_vocabulary_is_learned_as_wordpiece_learns_it():
    texts = ["low lower lowest", "low low newer newest", "wider widest low"] * 5
    vocabulary = learn_vocabulary([texts], 60, ["[PAD]", "[UNK]"])
    assert vocabulary[:2] == ["[PAD]", "[UNK]"]
    assert {"d", "e", "l", "n", "o", "r", "s", "t", "w"} <= set(vocabulary) and "##e" in vocabulary
    assert "low" in vocabulary and "##est" in vocabulary  # the most frequent pieces are merged first
    assert learn_vocabulary([texts], 60, ["[PAD]", "[UNK]"]) == vocabulary
    assert len(learn_vocabulary([texts], 20, ["[PAD]", "[UNK]"])) == 20


@pytest.mark.slow
def test_the_default_run_from_two_fresh_caches_gives_the_same_metrics(blockbert, tmp_path):
    args = ["trainer.max_steps=4", "trainer.val_check_interval=2", "logger=none", "progress_bar=false"]
    results = []
    for name in ("first", "second"):
        cache = tmp_path / name / "cache"
        blockbert(
            tmp_path, "pretrain", *args, f"hydra.run.dir={tmp_path / name / 'run'}", env={"BLOCKBERT_CACHE": str(cache)}
        )
        results.append(json.loads((tmp_path / name / "run" / "metrics.json").read_text()))
        assert tokenizer_files(cache)
    assert tokenizer_files(tmp_path / "first" / "cache") == tokenizer_files(tmp_path / "second" / "cache")
    assert results[0]["val/ppl"] == results[1]["val/ppl"] and results[0]["train/loss"] == results[1]["train/loss"]
