"""Tokenizers: a local path or hub name, or a WordPiece vocabulary trained on the corpus and cached."""

from __future__ import annotations

import hashlib
import json
import logging
import weakref
from pathlib import Path

import datasets
from tokenizers import AddedToken, BertWordPieceTokenizer, Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from blockbert.data.cache import build_once
from blockbert.data.wordpiece import learn_vocabulary

log = logging.getLogger(__name__)

WORDPIECE_VERSION = "deterministic-1"  # in the cache key: tokenizers trained before it (by tokenizers' trainer) retire
SPECIAL_TOKENS = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """``tokenizer(texts, add_special_tokens=False)["input_ids"]``, the same ids, straight from a fast tokenizer's
    Rust backend: no character offsets and no Python dict per text, which is most of the cost of short texts."""
    backend = _plain_backend(tokenizer)
    if backend is None:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast: tokenizers >= 0.20
    return [e.ids for e in encode(texts, add_special_tokens=False)]


def encode_with_offsets(tokenizer, texts: list[str]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    """(ids, character offsets) per text, as ``tokenizer(texts, add_special_tokens=False,
    return_offsets_mapping=True)`` gives them (a fast tokenizer is needed for offsets)."""
    backend = _plain_backend(tokenizer)
    if backend is None:
        out = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return out["input_ids"], out["offset_mapping"]
    encodings = backend.encode_batch(texts, add_special_tokens=False)
    return [e.ids for e in encodings], [e.offsets for e in encodings]


# Ends every sentence in encode_sentences: a special token added to a copy of the tokenizer.
SENTENCE_MARK = "\x00blockbert:end-of-sentence\x00"
_MARKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (copy, mark id, pieces) or None


def encode_sentences(tokenizer, documents: list[list[str]]) -> list[list[list[int]]]:
    """For each document, the token ids of each of its sentences: ``encode_texts`` of every sentence, the same
    ids, at about the cost of one text per document. The sentences go in joined, each ended by a special token
    added to a copy of the tokenizer (``SENTENCE_MARK``); special tokens are split off before anything else, so
    every sentence is normalised, pre-tokenised and tokenised on its own, as alone; the ids are cut at the
    marks. A Metaspace pre-tokenizer (SentencePiece) marks only the start of a text with its prefix, so there
    each sentence goes in as a piece of a pre-tokenised text (each piece is encoded as a text of its own). The
    first documents are checked against ``encode_texts``; a mismatch, a text holding the mark, or a
    tokenizer that is not fast take ``encode_texts`` per sentence.
    """
    marked = _marked(tokenizer, documents)
    if marked is None or any(SENTENCE_MARK in s for doc in documents for s in doc):
        return _regroup(documents, encode_texts(tokenizer, [s for doc in documents for s in doc]))
    return _encode_marked(documents, *marked)


def _encode_marked(documents, backend, mark_id: int, pieces: bool) -> list[list[list[int]]]:
    if pieces:
        encodings = backend.encode_batch_fast(
            [[s + SENTENCE_MARK for s in doc] for doc in documents], is_pretokenized=True, add_special_tokens=False
        )
    else:
        texts = [SENTENCE_MARK.join(doc) + SENTENCE_MARK if doc else "" for doc in documents]
        encodings = backend.encode_batch_fast(texts, add_special_tokens=False)
    out = []
    for doc, encoding in zip(documents, encodings):
        ids, sentences, start = encoding.ids, [], 0
        for _ in doc:
            end = ids.index(mark_id, start)
            sentences.append(ids[start:end])
            start = end + 1
        out.append(sentences)
    return out


def _regroup(documents: list[list[str]], flat: list) -> list[list]:
    out, start = [], 0
    for doc in documents:
        out.append(flat[start : start + len(doc)])
        start += len(doc)
    return out


def _marked(tokenizer, documents: list[list[str]]):
    """(copy of the backend with the mark, the mark's id, pieces?) for ``tokenizer``, or None: made and checked
    against ``encode_texts`` on the first documents it is used for, once per tokenizer object."""
    backend = _plain_backend(tokenizer)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return None
    try:
        if tokenizer in _MARKED:
            return _MARKED[tokenizer]
    except TypeError:  # not weak-referenceable
        return None
    spec = backend.to_str()
    copy = Tokenizer.from_str(spec)
    copy.add_special_tokens([AddedToken(SENTENCE_MARK, special=True, normalized=False)])
    marked = copy, copy.token_to_id(SENTENCE_MARK), "Metaspace" in json.dumps(json.loads(spec).get("pre_tokenizer"))
    sample = [doc for doc in documents[:64] if not any(SENTENCE_MARK in s for s in doc)]
    if _encode_marked(sample, *marked) != _regroup(sample, encode_texts(tokenizer, [s for doc in sample for s in doc])):
        log.warning(
            "this tokenizer splits text joined by a special token differently: sentences are tokenised "
            "one by one (slower, same ids)"
        )
        marked = None
    _MARKED[tokenizer] = marked
    return marked


def _plain_backend(tokenizer):
    """The Rust tokenizer when calling it directly is what ``transformers`` would do for a plain call: no
    padding or truncation left switched on, special tokens not split; else None (take the ordinary call,
    which switches those off for the next time)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.padding is not None or backend.truncation is not None:
        return None
    if backend.encode_special_tokens != bool(getattr(tokenizer, "split_special_tokens", False)):
        return None
    return backend


def load_tokenizer(spec: str, documents: datasets.Dataset, vocab_size: int, cache_dir: Path):
    """``spec``: ``train``, a tokenizer directory, a ``vocab.txt``/``tokenizer.json`` file, or a hub name."""
    if spec == "train":
        return train_wordpiece(documents, vocab_size, cache_dir)
    path = Path(spec).expanduser()
    if path.is_file() and path.name.endswith(".txt"):
        return PreTrainedTokenizerFast(
            tokenizer_object=BertWordPieceTokenizer(str(path), lowercase=True)._tokenizer, **SPECIAL_TOKENS
        )
    if path.is_file() and path.suffix == ".json":
        return PreTrainedTokenizerFast(tokenizer_file=str(path), **SPECIAL_TOKENS)
    # a hub name is `name` or `org/name`: a path, a deeper one, or a file name is looked for here only (not retried
    # on the hub for most of a minute)
    local = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or path.suffix in (".txt", ".json")
    if not path.exists() and local:
        raise FileNotFoundError(
            f"data.tokenizer={spec!r}: no such file or directory (accepted: train, a vocab.txt or tokenizer.json "
            "file, a tokenizer directory, or a hub name such as bert-base-uncased)"
        )
    try:
        return AutoTokenizer.from_pretrained(str(path) if path.exists() else spec)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"data.tokenizer={spec!r} is not a local tokenizer file or directory, and the hub "
            f"could not provide it ({type(err).__name__})"
        ) from None


def train_wordpiece(documents: datasets.Dataset, vocab_size: int, cache_dir: Path):
    """Train an uncased WordPiece tokenizer on the corpus, deterministically (:mod:`blockbert.data.wordpiece`: the
    same corpus and size give the same files on any machine); cached by corpus fingerprint and size."""
    key = hashlib.sha1(f"{documents._fingerprint}-{vocab_size}-{WORDPIECE_VERSION}".encode()).hexdigest()[:16]

    def build(directory: Path) -> dict:
        batches = (documents[i : i + 1000]["text"] for i in range(0, len(documents), 1000))
        vocabulary = learn_vocabulary(batches, vocab_size, list(SPECIAL_TOKENS.values()))
        wordpiece = BertWordPieceTokenizer({token: i for i, token in enumerate(vocabulary)}, lowercase=True)
        PreTrainedTokenizerFast(tokenizer_object=wordpiece._tokenizer, **SPECIAL_TOKENS).save_pretrained(str(directory))
        return {"vocab_size": vocab_size}

    target = cache_dir / "tokenizers" / key
    build_once(target, build)
    return PreTrainedTokenizerFast.from_pretrained(str(target))
