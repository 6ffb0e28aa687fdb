"""Question + paragraph windows for extractive QA (BERT's sliding windows, section 4.2).

Each window is ``[CLS] question [SEP] paragraph piece [SEP]``; windows start every ``doc_stride``
paragraph tokens. Character offsets come from the fast tokenizer, so a predicted span maps back to
the exact paragraph text (unicode and whitespace runs included).
"""

from __future__ import annotations

from dataclasses import dataclass

from blockbert.config import ConfigError

from .qa import QAExample


@dataclass
class QAWindow:
    example_index: int
    input_ids: list[int]
    token_type_ids: list[int]
    offsets: list[tuple[int, int] | None]  # paragraph char span of each token; None outside the paragraph
    max_context: list[bool]  # True where this window gives the token its most context (BERT's rule)
    start_position: int = 0  # training label; 0 ([CLS]) when the answer is not inside this window
    end_position: int = 0


def window_starts(n_tokens: int, max_len: int, stride: int) -> list[tuple[int, int]]:
    """(start, length) of each window over ``n_tokens`` paragraph tokens."""
    spans, start = [], 0
    while True:
        length = min(n_tokens - start, max_len)
        spans.append((start, length))
        if start + length >= n_tokens:
            return spans
        start += min(length, stride)


def build_windows(example: QAExample, example_index: int, tokenizer, max_seq_length: int, doc_stride: int,
                  max_query_length: int) -> list[QAWindow]:
    question = tokenizer(example.question, add_special_tokens=False)["input_ids"][:max_query_length]
    paragraph = tokenizer(example.context, add_special_tokens=False, return_offsets_mapping=True)
    ids, char_spans = paragraph["input_ids"], paragraph["offset_mapping"]
    if doc_stride < 1:
        raise ConfigError(f"data.doc_stride={doc_stride} must be a positive number of tokens (the paper uses 128)")
    budget = max_seq_length - len(question) - 3
    if budget < 1:
        raise ConfigError(f"data.max_seq_length={max_seq_length} leaves no room for the paragraph after a "
                          f"{len(question)}-token question: use a larger max_seq_length or smaller max_query_length")
    spans = window_starts(len(ids), budget, doc_stride)
    answer = _token_span(example, char_spans)
    windows = []
    first = len(question) + 2  # index of the first paragraph token in a window
    for w, (start, length) in enumerate(spans):
        piece = range(start, start + length)
        window = QAWindow(
            example_index,
            [tokenizer.cls_token_id, *question, tokenizer.sep_token_id, *ids[start:start + length], tokenizer.sep_token_id],
            [0] * first + [1] * (length + 1),
            [None] * first + [tuple(char_spans[t]) for t in piece] + [None],
            [False] * first + [_is_max_context(spans, w, t) for t in piece] + [False],
        )
        if answer and start <= answer[0] and answer[1] < start + length:
            window.start_position = answer[0] - start + first
            window.end_position = answer[1] - start + first
        windows.append(window)
    return windows


def _token_span(example: QAExample, char_spans) -> tuple[int, int] | None:
    """Token indices (inclusive) covering the first verified answer span, or None."""
    if not example.spans:
        return None
    begin, end = example.spans[0]
    tokens = [t for t, (s, e) in enumerate(char_spans) if s < end and e > begin]
    return (tokens[0], tokens[-1]) if tokens else None


def _is_max_context(spans: list[tuple[int, int]], current: int, token: int) -> bool:
    best_score, best = None, None
    for w, (start, length) in enumerate(spans):
        if not start <= token < start + length:
            continue
        score = min(token - start, start + length - 1 - token) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best = score, w
    return best == current
