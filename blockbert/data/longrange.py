"""The long-range corpus (``data=longrange``): generated documents in which some masked tokens can only be
predicted from another block of the sequence, so that the head assignment of a blockwise model matters.

A document is ``segments`` lines (one by default), each of S - 2 words (S: ``segment_tokens``, by default N =
data.max_seq_length), every word one token of the trained WordPiece vocabulary, so that ``[CLS] line [SEP]``
is one sequence of exactly S tokens and word ``w`` sits at position ``w + 1``; a sequence of N >= 2S - 2 tokens
packs two lines, the second from position S - 1. A segment is cut into ``blocks`` equal blocks of L tokens, as
a BlockBert with n = ``blocks`` cuts a sequence of S. The ``filler_words`` words are split into groups,
``topic_words`` per block of the document (block b's group r); a block's topic is one word of each of its
groups, used with the weights 1, 1/2, ..., 1/``topic_words`` (Zipf) in an order of its own. Two kinds of tokens
fill a block:

* **Local words** (most tokens, as in real text): words of the block's own topic. A masked one is predicted
  from the words of its own block (they show the topic and which word is most used); from the other blocks
  at most the set of topic words (the references below), not which one is most used.
* **References** (the long-range targets, one token in ``slot_every``): at fixed places of every block (slot r
  at offset ``slot_every // 2 + r * slot_every``) the block names the topic of another block of the document
  ``d`` blocks away, counted over all segments (``d`` drawn per block with the weights ``distance``,
  ``distance[0]`` for adjacent blocks; a block with no block ``d`` away takes the farthest one on its side,
  e.g. the middle of 3 its neighbours): slot r holds that block's word of group r. With ``cyclic``, as blockwise
  attention counts: slot r of block b names block (b + d_r) mod n, d_r cycling over the distances of weight > 0
  (n=3, distance [1, 1]: slots 0 and 2 name block b + 1, slots 1 and 3 block b + 2), so that each slot's answer
  is seen by the heads of one shift. Its own block says which
  group (by the slot) but not which of the group's words: a model that cannot see the other block guesses
  (chance: one over the group's size, ``filler_words / (segments * blocks * topic_words)``); a head that sees
  it reads the word off its many uses there. A reference whose block lies in another segment, cut into
  another sequence, cannot be predicted at all: how far the answer is matters.

Both kinds of evidence are many tokens and found by what they are, so a tiny model learns them in a few hundred
steps: we tried a name stated once and recalled once in another block, a word-order grammar, and references
in a form of their own, and a model of this size took thousands of steps to learn any of them. Chosen by us:
the paper has no such corpus; the parameters are data.longrange.*.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from blockbert.data.cache import build_file
from blockbert.display import counted
from blockbert.errors import ConfigError

VERSION = 4  # of the generator: part of the cache keys, so that a changed generator never reads old corpora
LANGUAGE_SEED = 20190703  # the words: the same for every corpus, whatever its seed
CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"


@dataclass(frozen=True)
class LongRangeSpec:
    segment_tokens: int  # the sequence length a segment of a document fills (data.max_seq_length by default)
    segments: int  # segments of a document, each one line of segment_tokens - 2 words
    blocks: int  # n: blocks per segment; a block refers to the topic of another block of the document
    slot_every: int  # a reference every slot_every tokens of a block: the share of long-range targets
    distance: tuple[float, ...]  # weights of the block distance 1 .. total_blocks - 1 to the block referred to
    filler_words: int  # words to draw the topics from
    topic_words: int  # words of a block's topic
    cyclic: bool = False  # slot r names block (b + d_r) mod blocks, d_r cycling over the distances with weight > 0

    @classmethod
    def from_config(cls, data_cfg) -> LongRangeSpec:
        cfg = data_cfg.longrange
        segment = cfg.get("segment_tokens") or data_cfg.max_seq_length
        spec = cls(
            segment_tokens=int(segment),
            segments=int(cfg.get("segments", 1)),
            blocks=int(cfg.blocks),
            slot_every=int(cfg.slot_every),
            distance=tuple(float(w) for w in cfg.distance),
            filler_words=int(cfg.filler_words),
            topic_words=int(cfg.topic_words),
            cyclic=bool(cfg.get("cyclic", False)),
        )
        spec.check()
        if data_cfg.max_seq_length < spec.segment_tokens:
            raise ConfigError(
                f"data.max_seq_length={data_cfg.max_seq_length} is shorter than data.longrange.segment_tokens="
                f"{spec.segment_tokens}: a sequence holds one segment or more (set segment_tokens <= N)"
            )
        return spec

    @property
    def block_length(self) -> int:
        return self.segment_tokens // self.blocks

    @property
    def total_blocks(self) -> int:
        return self.segments * self.blocks

    @property
    def slots(self) -> int:
        return self.block_length // self.slot_every

    def check(self) -> None:
        if self.blocks < 2 or self.segment_tokens % self.blocks or self.segments < 1:
            raise ConfigError(
                f"data.longrange.blocks={self.blocks} must be >= 2 and divide the segment's {self.segment_tokens} "
                f"tokens (data.longrange.segment_tokens, else data.max_seq_length), with segments >= 1 "
                f"(data.longrange.segments={self.segments})"
            )
        total = self.total_blocks
        if len(self.distance) != total - 1 or any(w < 0 for w in self.distance) or not sum(self.distance):
            raise ConfigError(
                f"data.longrange.distance={list(self.distance)} must give {counted(total - 1, 'non-negative weight')}, "
                f"one per block distance 1..{total - 1} (segments x blocks = {total} blocks), not all zero"
            )
        if not self.total_blocks * 2 <= self.filler_words <= len(CONSONANTS) ** 2 * len(VOWELS) ** 2:
            raise ConfigError(
                f"data.longrange.filler_words={self.filler_words} is out of range: give "
                f"{self.total_blocks * 2} to {len(CONSONANTS) ** 2 * len(VOWELS) ** 2}"
            )
        if self.topic_words < 2 or self.filler_words // (total * self.topic_words) < 2:
            raise ConfigError(
                f"data.longrange.topic_words={self.topic_words} is out of range: give 2 to "
                f"{max(2, self.filler_words // (2 * total))} (data.longrange.filler_words={self.filler_words} "
                f"split into {total} blocks x topic_words groups of 2 words at least)"
            )
        if not 1 <= self.slots <= self.topic_words or 2 * self.slots > self.block_length // 2:
            raise ConfigError(
                f"data.longrange.slot_every={self.slot_every} is out of range: a block of {self.block_length} "
                f"tokens needs 1 to {min(self.topic_words, self.block_length // 4)} references (at most one per "
                f"topic word, data.longrange.topic_words={self.topic_words}), i.e. slot_every from "
                f"{self.block_length // min(self.topic_words, self.block_length // 4)} to {self.block_length}"
            )

    def key(self) -> list:
        return [VERSION, self.segment_tokens, self.segments, self.blocks, self.slot_every, list(self.distance),
                self.filler_words, self.topic_words, *(["cyclic"] if self.cyclic else [])]  # fmt: skip


def topic_vocabulary(count: int) -> list[str]:
    """``count`` invented words of two syllables ending in n (``tobin``), the same ones for every corpus."""
    words = [c1 + v1 + c2 + v2 + "n" for c1 in CONSONANTS for v1 in VOWELS for c2 in CONSONANTS for v2 in VOWELS]
    return random.Random(LANGUAGE_SEED).sample(words, count)


def word_groups(spec: LongRangeSpec, words: list[str]) -> list[list[list[str]]]:
    """[block][group]: the words block b's topic takes its group-r word from."""
    size = len(words) // (spec.total_blocks * spec.topic_words)
    return [[words[(b * spec.topic_words + r) * size :][:size] for r in range(spec.topic_words)]
            for b in range(spec.total_blocks)]  # fmt: skip


def slot_offsets(spec: LongRangeSpec) -> list[int]:
    return [spec.slot_every // 2 + r * spec.slot_every for r in range(spec.slots)]


def generate_document(spec: LongRangeSpec, rng: random.Random, words: list[str]) -> list[list[str]]:
    """One document: its segments, each the ``segment_tokens - 2`` words of a sequence (word w at position w + 1)."""
    length, block, total = spec.segment_tokens - 2, spec.block_length, spec.total_blocks
    groups = word_groups(spec, words)  # [block][slot]: block b's topic takes one word of each of its groups
    topics = [[rng.choice(group) for group in groups[b]] for b in range(total)]
    segments: list[list[str]] = [[] for _ in range(spec.segments)]
    for b, topic in enumerate(topics):
        weights = [1 / rank for rank in range(1, spec.topic_words + 1)]
        rng.shuffle(weights)  # which of its words a block uses most is its own: the references do not tell
        d = rng.choices(range(1, total), weights=spec.distance)[0]
        partner = b + d if b + d < total and (b - d < 0 or rng.random() < 0.5) else b - d
        if partner < 0:  # no block d away on either side (d > n / 2 from the middle): the farthest one
            partner = total - 1 if b < total / 2 else 0
        if spec.cyclic:  # slot r names block (b + d_r) mod n: a head of shift d_r sees it, as blockwise attention does
            shifts = [k + 1 for k, w in enumerate(spec.distance) if w > 0]
            partners = [(b + shifts[r % len(shifts)]) % total for r in range(spec.slots)]
            references = {o: topics[p][r] for r, (o, p) in enumerate(zip(slot_offsets(spec), partners))}
        else:
            references = dict(zip(slot_offsets(spec), topics[partner]))
        segment, within = divmod(b, spec.blocks)
        for offset in range(block):
            position = within * block + offset
            if 0 < position <= length:
                segments[segment].append(references.get(offset) or rng.choices(topic, weights=weights)[0])
    return segments


def longrange_corpus(cache_dir: Path, spec: LongRangeSpec, documents: int, seed: int = 1234) -> Path:
    """Write (once) ``documents`` documents, blank-line separated, a line per segment; the path."""
    name = "-".join("_".join(map(str, v)) if isinstance(v, list) else str(v) for v in spec.key())  # no glob chars

    def write(tmp: Path) -> None:
        rng, words = random.Random(seed), topic_vocabulary(spec.filler_words)
        lines = ["\n".join(map(" ".join, generate_document(spec, rng, words))) for _ in range(documents)]
        tmp.write_text("\n\n".join(lines) + "\n", encoding="utf-8")

    return build_file(cache_dir / "corpora" / f"longrange-{name}-{documents}-{seed}.txt", write)


def reference_positions(spec: LongRangeSpec, seq_len: int) -> list[int]:
    """The positions of the references (the long-range targets) in a sequence of ``seq_len`` tokens, which holds
    as many whole segments as fit (the sequences pack a document's lines whole: segment k starts after k
    segments' words)."""
    per_sequence = max(1, (seq_len - 2) // (spec.segment_tokens - 2))
    positions = [k * (spec.segment_tokens - 2) + b * spec.block_length + o
                 for k in range(min(per_sequence, spec.segments)) for b in range(spec.blocks)
                 for o in slot_offsets(spec)]  # fmt: skip
    return [p for p in positions if 0 < p < seq_len - 1]


def check_tokenizer(tokenizer, spec: LongRangeSpec) -> None:
    """Every word of the corpus must be one token, or blocks would not line up with the document."""
    words = topic_vocabulary(spec.filler_words)
    split = [w for w, i in zip(words, tokenizer.convert_tokens_to_ids(words)) if i == tokenizer.unk_token_id]
    if split:
        raise ConfigError(
            f"data=longrange: the tokenizer splits {len(split)} of the corpus's words (e.g. {split[0]!r}) into "
            "pieces, so blocks would not line up with the document: use data.tokenizer=train with "
            f"data.tokenizer_vocab_size >= {len(words) + 200}"
        )
