"""Question + paragraph windows for extractive QA (BERT's sliding windows, section 4.2).

Each window is ``[CLS] question [SEP] paragraph piece [SEP]``; windows start every ``doc_stride``
paragraph tokens. Character offsets come from the fast tokenizer, so a predicted span maps back to
the exact paragraph text (unicode and whitespace runs included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import datasets

from blockbert.data.qa import QAExample
from blockbert.data.tokenizer import encode_texts, encode_with_offsets
from blockbert.errors import ConfigError


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


def build_windows(
    example: QAExample, example_index: int, tokenizer, max_seq_length: int, doc_stride: int, max_query_length: int
) -> list[QAWindow]:
    """The windows of one example (``window_rows`` makes the same ones for a batch of examples)."""
    question = encode_texts(tokenizer, [example.question])[0][:max_query_length]
    (ids,), (char_spans,) = encode_with_offsets(tokenizer, [example.context])
    answer = example.spans[0] if example.spans else None
    return [
        QAWindow(example_index, *window)
        for window in _windows(question, ids, char_spans, answer, tokenizer, max_seq_length, doc_stride)
    ]


# The windows as table rows: the paragraph piece's offsets as a flat [start, end, ...] list and its max-context
# flags; the question part (token type 0, no offsets) follows from where the paragraph starts.
WINDOW_FEATURES = datasets.Features(
    {
        "example_index": datasets.Value("int32"),
        "input_ids": datasets.List(datasets.Value("int32")),
        "paragraph_start": datasets.Value("int32"),
        "offsets": datasets.List(datasets.Value("int32")),
        "max_context": datasets.List(datasets.Value("bool")),
        "start_position": datasets.Value("int32"),
        "end_position": datasets.Value("int32"),
    }
)


def examples_table(examples: list[QAExample], keep) -> datasets.Dataset:
    """The examples ``keep(example)`` selects, as the input of ``window_rows`` (the first verified answer span)."""
    rows = {"example_index": [], "question": [], "context": [], "answer_start": [], "answer_end": []}
    for i, example in enumerate(examples):
        if keep(example):
            begin, end = example.spans[0] if example.spans else (-1, -1)
            for key, value in zip(rows, (i, example.question, example.context, begin, end)):
                rows[key].append(value)
    return datasets.Dataset.from_dict(rows)


def window_rows(batch: dict, tokenizer, max_seq_length: int, doc_stride: int, max_query_length: int) -> dict:
    """``datasets.map`` (batched) from ``examples_table`` rows to window rows: one tokenizer call for the
    questions and one for the batch's distinct paragraphs."""
    questions = encode_texts(tokenizer, batch["question"])
    paragraphs = {context: i for i, context in enumerate(dict.fromkeys(batch["context"]))}
    ids, char_spans = encode_with_offsets(tokenizer, list(paragraphs))
    rows = {name: [] for name in WINDOW_FEATURES}
    for i, example_index in enumerate(batch["example_index"]):
        p, question = paragraphs[batch["context"][i]], questions[i][:max_query_length]
        answer = (batch["answer_start"][i], batch["answer_end"][i]) if batch["answer_start"][i] >= 0 else None
        first = len(question) + 2
        for input_ids, _, offsets, max_context, start, end in _windows(
            question, ids[p], char_spans[p], answer, tokenizer, max_seq_length, doc_stride
        ):
            row = dict(
                example_index=example_index,
                input_ids=input_ids,
                paragraph_start=first,
                offsets=[x for span in offsets[first:-1] for x in span],
                max_context=max_context[first:-1],
                start_position=start,
                end_position=end,
            )
            for name, value in row.items():
                rows[name].append(value)
    return rows


def row_window(row: dict) -> QAWindow:
    """A window row (``window_rows``) as the QAWindow ``build_windows`` makes."""
    ids, first, flat = row["input_ids"], row["paragraph_start"], row["offsets"]
    return QAWindow(
        row["example_index"],
        ids,
        [0] * first + [1] * (len(ids) - first),
        [None] * first + list(zip(flat[0::2], flat[1::2])) + [None],
        [False] * first + row["max_context"] + [False],
        row["start_position"],
        row["end_position"],
    )


class WindowList(Sequence):
    """The windows of a split, read from their (memory-mapped) table: ``windows[i]`` is a QAWindow."""

    def __init__(self, table: datasets.Dataset):
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"window {index} of {len(self)}")
        return row_window(self.table[int(index) % len(self)])

    def __iter__(self):
        for start in range(0, len(self.table), 1000):
            columns = self.table[start : start + 1000]
            for i in range(len(columns["input_ids"])):
                yield row_window({name: values[i] for name, values in columns.items()})


def _windows(
    question: list[int], ids: list[int], char_spans, answer_span, tokenizer, max_seq_length: int, doc_stride: int
):
    """(input_ids, token_type_ids, offsets, max_context, start_position, end_position) of each window."""
    if doc_stride < 1:
        raise ConfigError(f"data.doc_stride={doc_stride} must be a positive number of tokens (the paper uses 128)")
    budget = max_seq_length - len(question) - 3
    if budget < 1:
        raise ConfigError(
            f"data.max_seq_length={max_seq_length} leaves no room for the paragraph after a "
            f"{len(question)}-token question: use a larger max_seq_length or smaller max_query_length"
        )
    spans = window_starts(len(ids), budget, doc_stride)
    answer = _token_span(answer_span, char_spans)
    best = _max_context_windows(spans, len(ids))
    first = len(question) + 2  # index of the first paragraph token in a window
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    windows = []
    for w, (start, length) in enumerate(spans):
        piece = range(start, start + length)
        start_position = end_position = 0
        if answer and start <= answer[0] and answer[1] < start + length:
            start_position, end_position = answer[0] - start + first, answer[1] - start + first
        windows.append(
            (
                [cls_id, *question, sep_id, *ids[start : start + length], sep_id],
                [0] * first + [1] * (length + 1),
                [None] * first + [tuple(char_spans[t]) for t in piece] + [None],
                [False] * first + [best[t] == w for t in piece] + [False],
                start_position,
                end_position,
            )
        )
    return windows


def _token_span(span: tuple[int, int] | None, char_spans) -> tuple[int, int] | None:
    """Token indices (inclusive) covering the (first verified) answer's character span, or None."""
    if span is None:
        return None
    begin, end = span
    tokens = [t for t, (s, e) in enumerate(char_spans) if s < end and e > begin]
    return (tokens[0], tokens[-1]) if tokens else None


def _max_context_windows(spans: list[tuple[int, int]], n_tokens: int) -> list[int]:
    """For each paragraph token, the window that gives it the most context (BERT's rule; the first on ties)."""
    best, best_score = [0] * n_tokens, [-1.0] * n_tokens
    for w, (start, length) in enumerate(spans):
        for token in range(start, start + length):
            score = min(token - start, start + length - 1 - token) + 0.01 * length
            if score > best_score[token]:
                best_score[token], best[token] = score, w
    return best
