"""Tokenizers: a local path or hub name, or a WordPiece vocabulary trained on the corpus and cached."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import datasets
from tokenizers import BertWordPieceTokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

SPECIAL_TOKENS = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def load_tokenizer(spec: str, documents: datasets.Dataset, vocab_size: int, cache_dir: Path):
    """``spec``: ``train``, a tokenizer directory, a ``vocab.txt``/``tokenizer.json`` file, or a hub name."""
    if spec == "train":
        return train_wordpiece(documents, vocab_size, cache_dir)
    path = Path(spec).expanduser()
    if path.is_file() and path.name.endswith(".txt"):
        return PreTrainedTokenizerFast(tokenizer_object=BertWordPieceTokenizer(str(path), lowercase=True)._tokenizer,
                                       **SPECIAL_TOKENS)
    if path.is_file() and path.suffix == ".json":
        return PreTrainedTokenizerFast(tokenizer_file=str(path), **SPECIAL_TOKENS)
    if not path.exists() and ("/" in spec and spec.startswith((".", "/", "~"))):
        raise FileNotFoundError(f"data.tokenizer={spec!r}: no such file or directory")
    try:
        return AutoTokenizer.from_pretrained(str(path) if path.exists() else spec)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"data.tokenizer={spec!r} is not a local tokenizer file or directory, and the hub "
                                f"could not provide it ({type(err).__name__})") from None


def train_wordpiece(documents: datasets.Dataset, vocab_size: int, cache_dir: Path):
    """Train an uncased WordPiece tokenizer on the corpus; cached by corpus fingerprint and size."""
    key = hashlib.sha1(f"{documents._fingerprint}-{vocab_size}".encode()).hexdigest()[:16]
    target = cache_dir / "tokenizers" / key
    if not (target / "tokenizer.json").exists():
        wordpiece = BertWordPieceTokenizer(lowercase=True)
        batches = (documents[i:i + 1000]["text"] for i in range(0, len(documents), 1000))
        wordpiece.train_from_iterator(batches, vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()))
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=wordpiece._tokenizer, **SPECIAL_TOKENS)
        tmp = target.with_name(f"{key}.tmp-{os.getpid()}")  # concurrent jobs (SLURM tasks) each train their own
        tokenizer.save_pretrained(str(tmp))
        try:
            tmp.replace(target)
        except OSError:  # another process finished first: same corpus, same tokenizer
            shutil.rmtree(tmp, ignore_errors=True)
    return PreTrainedTokenizerFast.from_pretrained(str(target))
