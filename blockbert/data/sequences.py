"""Pre-training sequences as in the paper (section 4.1).

* RoBERTa-1seq style (``pack_documents``): consecutive sentences of one document are packed into
  ``[CLS] ... [SEP]`` sequences of at most N tokens; a sequence never crosses a document boundary.
* Sentence pairs with next-sentence prediction (``sentence_pairs``), as Google BERT and
  RoBERTa-2seq: ``[CLS] A [SEP] B [SEP]`` where B follows A (label 0) or, half of the time, comes
  from another document (label 1).

Both work on token-id lists of sentences, one list of sentences per document.
"""

from __future__ import annotations

import random
import re

from blockbert.data.tokenizer import encode_sentences

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(document: str) -> list[str]:
    """Lines of a document, each further split after ., ! or ?."""
    return [s for line in document.splitlines() for s in SENTENCE_END.split(line.strip()) if s]


def tokenize_documents(texts: list[str], tokenizer) -> list[list[list[int]]]:
    """Each document's sentences (``split_sentences``) as token ids (each sentence tokenised as alone)."""
    return encode_sentences(tokenizer, [split_sentences(text) for text in texts])


def pack_documents(documents: list[list[list[int]]], max_len: int, cls_id: int, sep_id: int) -> list[list[int]]:
    """Greedy packing of whole sentences into sequences of at most ``max_len`` tokens."""
    budget = max_len - 2
    sequences = []
    for sentences in documents:
        chunk = [cls_id]  # the sequence being filled: [CLS] and budget tokens at most
        for sentence in sentences:
            # a sentence longer than the budget is cut into pieces
            for piece in (sentence,) if len(sentence) <= budget else _pieces(sentence, budget):
                if len(chunk) > 1 and len(chunk) - 1 + len(piece) > budget:
                    chunk.append(sep_id)
                    sequences.append(chunk)
                    chunk = [cls_id]
                chunk += piece
        if len(chunk) > 1:
            chunk.append(sep_id)
            sequences.append(chunk)
    return sequences


def _pieces(sentence: list[int], budget: int):
    return (sentence[start : start + budget] for start in range(0, len(sentence), budget))


def sentence_pairs(
    documents: list[list[list[int]]], max_len: int, cls_id: int, sep_id: int, rng: random.Random
) -> list[tuple[list[int], list[int], int]]:
    """BERT's instances: (input_ids, token_type_ids, next_sentence_label) per pair."""
    budget = max_len - 3
    pairs = []
    for d, sentences in enumerate(documents):
        chunk: list[list[int]] = []
        length = 0
        for i, sentence in enumerate(sentences):
            chunk.append(sentence)
            length += len(sentence)
            if i != len(sentences) - 1 and length < budget:
                continue
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            a = [t for s in chunk[:a_end] for t in s]
            random_next = len(documents) > 1 and (len(chunk) == 1 or rng.random() < 0.5)
            if random_next:
                other = rng.choice([j for j in range(len(documents)) if j != d])
                other_sentences = documents[other] or [[]]
                start = rng.randint(0, len(other_sentences) - 1)
                b = [t for s in other_sentences[start:] for t in s]
            else:
                b = [t for s in chunk[a_end:] for t in s]
            a, b = _truncate_pair(a, b, budget)
            if a and b:
                ids = [cls_id, *a, sep_id, *b, sep_id]
                types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
                pairs.append((ids, types, int(random_next)))
            chunk, length = [], 0
    return pairs


def _truncate_pair(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Drop tokens from the end of the longer segment until both fit."""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        (a if len(a) > len(b) else b).pop()
    return a, b
