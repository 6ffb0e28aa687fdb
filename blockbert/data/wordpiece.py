"""A WordPiece vocabulary learned deterministically: the same corpus and size give the same vocabulary, byte for
byte, on any machine and in any process.

Hugging Face ``tokenizers``' trainer (``BertWordPieceTokenizer.train``) breaks ties between equally frequent pairs
by the order of its hash maps, which is seeded afresh in every process: two fresh caches then hold different
vocabularies and a run's perplexity depends on the machine. This module learns the vocabulary the same way (BERT's
normalisation and pre-tokenisation, taken from ``tokenizers``; an alphabet of the most frequent characters; merges
of the most frequent adjacent pieces, ``##`` marking a piece that continues a word, until the vocabulary is full)
with every tie broken by the pieces' text. The vocabulary is then handed to ``tokenizers``' own WordPiece model,
which encodes as before.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable

from tokenizers import BertWordPieceTokenizer

PREFIX = "##"  # a piece that continues a word
LIMIT_ALPHABET = 1000  # characters kept (the most frequent), as tokenizers' BertWordPieceTokenizer.train
MIN_FREQUENCY = 2  # a merge needs a pair seen at least this often, as tokenizers' default


def learn_vocabulary(batches: Iterable[list[str]], vocab_size: int, special_tokens: list[str]) -> list[str]:
    """The vocabulary (tokens in id order: the special tokens, the alphabet, then the merges) of ``batches`` of
    texts, at most ``vocab_size`` tokens."""
    words = count_words(batches)
    alphabet = _alphabet(words)
    vocabulary = list(dict.fromkeys([*special_tokens, *alphabet]))
    kept = set(alphabet)
    pieces = [[_piece(c, i) for i, c in enumerate(word) if c in kept] for word in words]
    counts = list(words.values())
    known = set(vocabulary)
    for first, second in _merges(pieces, counts):
        if len(vocabulary) >= vocab_size:
            break
        merged = first + second.removeprefix(PREFIX)
        if merged not in known:
            vocabulary.append(merged)
            known.add(merged)
    return vocabulary[:vocab_size]


def count_words(batches: Iterable[list[str]]) -> Counter:
    """{word: count} after BERT's uncased normalisation and pre-tokenisation (``tokenizers``' own)."""
    backend = BertWordPieceTokenizer(lowercase=True)._tokenizer
    normalizer, pre_tokenizer = backend.normalizer, backend.pre_tokenizer
    words: Counter = Counter()
    for batch in batches:
        for text in batch:
            words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    return words


def _alphabet(words: Counter) -> list[str]:
    """The most frequent characters (at most LIMIT_ALPHABET), each also as a word's continuation (``##c``), most
    frequent first, ties by the character."""
    chars: Counter = Counter()
    for word, count in words.items():
        for c in word:
            chars[c] += count
    kept = sorted(chars, key=lambda c: (-chars[c], c))[:LIMIT_ALPHABET]
    continued = {c for word in words for c in word[1:]} & set(kept)
    return sorted(kept) + [PREFIX + c for c in sorted(continued, key=lambda c: (-chars[c], c))]


def _piece(char: str, position: int) -> str:
    return char if position == 0 else PREFIX + char


def _merges(pieces: list[list[str]], counts: list[int]):
    """The merges, most frequent pair first (ties: the pair's text), each applied to every word before the next is
    chosen; pairs seen fewer than MIN_FREQUENCY times are never merged."""
    pair_counts: defaultdict = defaultdict(int)
    where: defaultdict = defaultdict(set)  # pair -> the words holding it
    for index, word in enumerate(pieces):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += counts[index]
            where[pair].add(index)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    while heap:
        negative, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -negative:  # a stale entry: the pair's count changed since it was pushed
            continue
        if -negative < MIN_FREQUENCY:
            return
        yield pair
        changed = set()
        for index in where.pop(pair, ()):  # the order does not matter: counts are sums
            changed |= _merge_in_word(pieces, counts, index, pair, pair_counts, where)
        pair_counts.pop(pair, None)
        for other in changed - {pair}:  # the heap orders them: (count, text) is a total order
            if pair_counts.get(other, 0) > 0:
                heapq.heappush(heap, (-pair_counts[other], other))


def _merge_in_word(pieces, counts, index: int, pair: tuple[str, str], pair_counts, where) -> set:
    """Merge ``pair`` everywhere in word ``index``, keeping the pair counts and index up to date; the pairs whose
    counts changed."""
    word, count = pieces[index], counts[index]
    first, second = pair
    merged_piece = first + second.removeprefix(PREFIX)
    for old in zip(word, word[1:]):
        pair_counts[old] -= count
    merged, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
            merged.append(merged_piece)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    pieces[index] = merged
    changed = {old for old in zip(word, word[1:])}
    for new in zip(merged, merged[1:]):
        pair_counts[new] += count
        where[new].add(index)
        changed.add(new)
    for old in changed:
        if pair_counts.get(old, 0) <= 0:
            pair_counts.pop(old, None)
    return changed
