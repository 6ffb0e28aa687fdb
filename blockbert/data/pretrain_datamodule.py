"""Lightning data module for pre-training: corpus -> tokenizer -> sequences -> dynamic masking."""

from __future__ import annotations

import logging
import random
from functools import partial
from pathlib import Path

import datasets
import pyarrow.compute
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast

from blockbert.data.cache import arrow_files, build_once, file_stats, fingerprint, load_arrow, tokenizer_fingerprint
from blockbert.data.corpus import (
    PARAGRAPH_SEPARATOR,
    check_corpus,
    describe_source,
    file_format,
    load_documents,
    rows_per_document,
)
from blockbert.data.longrange import LongRangeSpec, check_tokenizer, reference_positions
from blockbert.data.sampler import ResumableData, StreamDataset, stream_seed
from blockbert.data.sequences import pack_documents, sentence_pairs, tokenize_documents
from blockbert.data.tokenizer import WORDPIECE_VERSION, load_tokenizer
from blockbert.display import counted
from blockbert.errors import ConfigError

log = logging.getLogger(__name__)
DOCUMENTS_PER_BATCH = 1000


def _documents_hint(data_cfg) -> str:
    """What to try when a corpus of files gives fewer than 2 documents: another data.documents."""
    if data_cfg.source != "files":
        return ""
    if data_cfg.documents == "paragraph":
        return (
            ": data.documents=paragraph splits the text at blank lines; give data.documents=line for one document "
            "per line"
        )
    if data_cfg.documents == "file":
        return ": data.documents=file makes each file one document; give data.documents=paragraph or line"
    return ""


def build_sequences(batch, documents, tokenizer, max_len: int, nsp: bool, seed: int) -> dict:
    """The sequences of the documents [start, start + DOCUMENTS_PER_BATCH) (``batch["start"]``: one start)."""
    (start,) = batch["start"]
    docs = tokenize_documents(documents[start : start + DOCUMENTS_PER_BATCH]["text"], tokenizer)
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if not nsp:
        return {"input_ids": pack_documents(docs, max_len, cls_id, sep_id)}
    pairs = sentence_pairs(docs, max_len, cls_id, sep_id, random.Random(seed + start))
    return {
        "input_ids": [p[0] for p in pairs],
        "token_type_ids": [p[1] for p in pairs],
        "next_sentence_label": [p[2] for p in pairs],
    }


class PretrainDataModule(ResumableData, pl.LightningDataModule):
    """Corpus -> tokenizer -> sequences, built once into the cache by ``prepare_data`` and loaded by ``setup``.

    ``prepare_data`` (Lightning calls it on local rank 0 while the other ranks wait; an entry point can call
    it before the Trainer exists) loads the documents, trains or loads the tokenizer and writes the train and
    validation sequences under ``cache_dir/pretrain/KEY``, KEY following the corpus files, the tokenizer and
    the settings that change the sequences. ``setup`` only reads that back; called first, or where nothing
    was prepared, it builds the cache itself, and processes that start together wait for the one building it.
    """

    def __init__(
        self,
        data_cfg,
        next_sentence_prediction: bool,
        batch_size: int,
        seed: int,
        cache_dir: Path,
        world_size: int = 1,
        tokenizer=None,
        accumulate: int = 1,
    ):
        super().__init__()
        check_corpus(data_cfg)
        self.cfg = data_cfg
        self.nsp = next_sentence_prediction
        self.batch_size = batch_size
        self.seed = seed
        self.cache_dir = Path(cache_dir).expanduser()
        self.world_size, self.accumulate = world_size, accumulate
        self.tokenizer = tokenizer  # given (an imported checkpoint's), else loaded or trained in prepare_data()
        self.train_set = self.val_set = None
        self.fill: float | None = None  # mean tokens per training sequence / N
        self.longrange_positions: list[int] | None = None  # data=longrange: where the long-range targets are

    def prepare_data(self) -> None:
        if self.train_set is None:  # else setup() has read the cache already
            build_once(self._cache_entry(), self._build)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        directory = self._cache_entry()
        manifest = build_once(directory, self._build)  # read back when prepare_data() built it
        if self.tokenizer is None:
            self.tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory / manifest["tokenizer"]))
        self.train_set = load_arrow(directory, manifest["train"])
        self.val_set = load_arrow(directory, manifest["validation"])
        self.fill = mean_fill(self.train_set, self.cfg.max_seq_length)  # from the Arrow lengths: any cache entry
        if self.cfg.source == "longrange":
            spec = LongRangeSpec.from_config(self.cfg)
            check_tokenizer(self.tokenizer, spec)
            self.longrange_positions = reference_positions(spec, self.cfg.max_seq_length)
        step = self.batch_size * self.world_size * self.accumulate  # sequences per optimizer step
        if len(self.train_set) < step:  # a step would see sequences twice (a pass holds whole steps: the sampler)
            raise ConfigError(
                f"the corpus {describe_source(self.cfg)} gives {counted(len(self.train_set), 'training sequence')}, "
                f"fewer than one optimizer step's batch of {step} (tokens_per_batch / data.max_seq_length): use a "
                "larger corpus or a smaller tokens_per_batch"
            )
        log.info(
            "pre-training data: %d train and %d validation sequences of at most N=%d tokens, filled to %s of N "
            "on average",
            len(self.train_set),
            len(self.val_set),
            self.cfg.max_seq_length,
            f"{self.fill:.1%}",
        )

    def _cache_entry(self) -> Path:
        """cache_dir/pretrain/KEY: KEY changes with the corpus (its files' sizes and times), the tokenizer and
        every setting that changes the sequences (not num_proc: the sequences do not depend on it)."""
        cfg = self.cfg
        if cfg.source == "files":
            stats = file_stats(cfg.files)
            corpus = ["files", stats, cfg.text_field, cfg.documents]
            if cfg.documents == "paragraph" and any(file_format(s[0]) == "text" for s in stats):
                corpus.append(PARAGRAPH_SEPARATOR)  # earlier keys: split on empty lines only
        elif cfg.source == "hub":
            corpus = ["hub", str(cfg.hub_name), str(cfg.hub_config), cfg.hub_split, cfg.text_field]
        else:
            corpus = [cfg.source, cfg.get("generated_documents"), cfg.documents]
            if cfg.source == "longrange":
                corpus.append(LongRangeSpec.from_config(cfg).key())
        grouping = rows_per_document(cfg)
        if any(rows != 1 for rows in grouping):  # one row, one document: the keys of earlier caches stay valid
            corpus.append(grouping)
        if self.tokenizer is not None:
            tokenizer = ["given", tokenizer_fingerprint(self.tokenizer)]
        elif cfg.tokenizer == "train":  # with the learner's version: sequences of a retired learner's vocabulary retire
            tokenizer = ["train", cfg.tokenizer_vocab_size, WORDPIECE_VERSION]
        else:
            tokenizer = [cfg.tokenizer, file_stats([cfg.tokenizer, f"{cfg.tokenizer}/*"])]
        key = fingerprint(corpus, tokenizer, cfg.max_seq_length, cfg.validation_fraction, self.nsp, self.seed)
        return self.cache_dir / "pretrain" / key

    def _build(self, directory: Path) -> dict:
        documents = load_documents(self.cfg, self.cache_dir)
        if len(documents) < 2:
            raise ConfigError(
                f"the corpus {describe_source(self.cfg)} has {counted(len(documents), 'non-empty document')}: "
                f"need at least 2 (for training and validation){_documents_hint(self.cfg)}"
            )
        n_val = max(1, round(len(documents) * self.cfg.validation_fraction))
        if n_val >= len(documents):
            raise ConfigError(
                f"data.validation_fraction={self.cfg.validation_fraction} holds out {n_val} of the "
                f"{len(documents)} documents of {describe_source(self.cfg)}: none would be left for "
                "training; use a smaller fraction or a larger corpus"
            )
        tokenizer = self.tokenizer
        if tokenizer is None:
            tokenizer = load_tokenizer(self.cfg.tokenizer, documents, self.cfg.tokenizer_vocab_size, self.cache_dir)
            tokenizer.save_pretrained(str(directory / "tokenizer"))
        split = documents.train_test_split(test_size=n_val, seed=self.seed, shuffle=True)
        manifest = {"tokenizer": "tokenizer", "documents": {"train": len(split["train"]), "validation": n_val}}
        for name, part in (("train", split["train"]), ("validation", split["test"])):
            manifest[name] = arrow_files(self._sequences(part, name, tokenizer, directory))
        return manifest

    def _sequences(self, documents, split: str, tokenizer, directory: Path):
        """One ``datasets.map`` over batches of documents (``data.num_proc`` processes). A batch, not a document,
        is the unit of work, as the sentence pairs draw their random next segments from other documents of the
        same batch: with batches fixed by their first document the sequences do not depend on num_proc."""
        starts = datasets.Dataset.from_dict({"start": list(range(0, len(documents), DOCUMENTS_PER_BATCH))})
        features = {"input_ids": datasets.List(datasets.Value("int32"))}
        if self.nsp:
            features.update(
                token_type_ids=datasets.List(datasets.Value("int8")), next_sentence_label=datasets.Value("int8")
            )
        build = partial(
            build_sequences,
            documents=documents,
            tokenizer=tokenizer,
            max_len=self.cfg.max_seq_length,
            nsp=self.nsp,
            seed=self.seed,
        )
        return starts.map(
            build,
            batched=True,
            batch_size=1,
            remove_columns=["start"],
            features=datasets.Features(features),
            num_proc=self.cfg.get("num_proc"),
            cache_file_name=str(directory / f"{split}.arrow"),
            load_from_cache_file=False,
            new_fingerprint=f"{directory.name}-{split}",
            desc=f"building {split} sequences",
        )

    def _collator(self):
        """Masks drawn from the global RNG, which :class:`KeyedMasking` and :class:`FixedMasking` seed (the
        collator's own ``seed`` refuses any process but the main one or a loader worker: a ddp_spawn rank)."""
        return DataCollatorForLanguageModeling(self.tokenizer, mlm_probability=self.cfg.mlm_probability)

    def train_dataloader(self):
        trainer = self.trainer
        sampler = self.training_sampler(len(self.train_set), trainer.global_rank if trainer else 0, stream_keys=True)
        return DataLoader(
            StreamDataset(self.train_set),
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=KeyedMasking(self._collator(), self.seed),
            drop_last=True,
            **self.loader_options(self.cfg.get("num_workers")),
        )

    def val_dataloader(self):
        return DataLoader(
            self.val_set,
            batch_size=self.batch_size,
            collate_fn=FixedMasking(self._collator(), self.seed),
            **self.loader_options(self.cfg.get("num_workers")),
        )


def mean_fill(sequences: datasets.Dataset, max_len: int) -> float:
    """Tokens per sequence over N, on average (read from the Arrow list lengths, without decoding rows)."""
    if not len(sequences):
        return 0.0
    lengths = pyarrow.compute.list_value_length(sequences.data.column("input_ids"))
    return pyarrow.compute.sum(lengths).as_py() / (len(sequences) * max_len)


class FixedMasking:
    """The same masks at every validation, so validation perplexities are comparable over time: each batch masked
    with the RNG seeded afresh (a class, not a closure, so that worker processes can be spawned with it)."""

    def __init__(self, collator, seed: int):
        self.collator, self.seed = collator, seed

    def __call__(self, features: list[dict]) -> dict:
        with torch.random.fork_rng(devices=[]):  # the CPU generator, which the collator draws from, restored after
            torch.default_generator.manual_seed(self.seed)
            return self.collator(features)


class KeyedMasking:
    """Dynamic masking whose draws depend only on the batch's stream keys, not on the global RNG: a
    resumed run masks each batch as an uninterrupted run does (with any number of loader workers)."""

    def __init__(self, collator, seed: int):
        self.collator, self.seed = collator, seed

    def __call__(self, rows: list[dict]) -> dict:
        key = min(row.pop("stream_key") for row in rows)
        with torch.random.fork_rng(devices=[]):  # the CPU generator, which the collator draws from, restored after
            torch.default_generator.manual_seed(stream_seed(self.seed, key))
            return self.collator(rows)
