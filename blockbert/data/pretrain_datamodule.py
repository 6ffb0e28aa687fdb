"""Lightning data module for pre-training: corpus -> tokenizer -> sequences -> dynamic masking."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler
from transformers import DataCollatorForLanguageModeling

from blockbert.config import ConfigError

from .corpus import describe_source, load_documents
from .sequences import pack_documents, sentence_pairs, split_sentences
from .tokenizer import load_tokenizer

log = logging.getLogger(__name__)


class ResumableSampler(Sampler[int]):
    """Seeded permutations of the data, one per pass, read from ``position`` and split over ranks.

    ``position`` counts samples of the stream of permutations consumed by all ranks together. One
    iteration runs to the end of the current permutation, so a resumed run first finishes the
    permutation it was interrupted in, then goes on with the next; a tail shorter than one global
    batch is dropped (``drop_last``), as in an uninterrupted run. Each rank takes every
    ``world_size``-th sample of the global order, so Lightning's distributed sampler is not used.
    """

    def __init__(self, size: int, seed: int, global_batch: int, position: int = 0, rank: int = 0,
                 world_size: int = 1):
        self.size, self.seed, self.global_batch = size, seed, global_batch
        self.position, self.rank, self.world_size = position, rank, world_size

    def __iter__(self):
        epoch, offset = divmod(self.position, self.size)
        if self.size - offset < self.global_batch:  # only a dropped tail was left of this permutation
            epoch, offset = epoch + 1, 0
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
        usable = (self.size - offset) // self.global_batch * self.global_batch
        self.position = (epoch + 1) * self.size  # the next iteration starts a new permutation
        yield from order[offset:offset + usable][self.rank::self.world_size].tolist()

    def __len__(self) -> int:  # constant: Lightning sizes its epoch loop once
        return self.size // self.world_size

    def position_after(self, batches: int) -> int:
        """The stream position after ``batches`` global batches: every pass yields size // global_batch."""
        per_pass = self.size // self.global_batch
        return batches // per_pass * self.size + batches % per_pass * self.global_batch


class PretrainDataModule(pl.LightningDataModule):
    def __init__(self, data_cfg, next_sentence_prediction: bool, batch_size: int, seed: int, cache_dir: Path,
                 world_size: int = 1, tokenizer=None):
        super().__init__()
        self.cfg = data_cfg
        self.nsp = next_sentence_prediction
        self.batch_size = batch_size
        self.seed = seed
        self.cache_dir = Path(cache_dir).expanduser()
        self.world_size = world_size
        self.tokenizer = tokenizer  # given (an imported checkpoint's), else loaded or trained in setup()
        self.train_set = self.val_set = None
        self.sampler = None
        self._samples_consumed = 0  # restored from a checkpoint on resume

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        documents = load_documents(self.cfg, self.cache_dir)
        if len(documents) < 2:
            raise ConfigError(f"the corpus {describe_source(self.cfg)} has {len(documents)} non-empty document(s): "
                              "need at least 2 (for training and validation)")
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.cfg.tokenizer, documents, self.cfg.tokenizer_vocab_size,
                                            self.cache_dir)
        n_val = max(1, round(len(documents) * self.cfg.validation_fraction))
        split = documents.train_test_split(test_size=n_val, seed=self.seed, shuffle=True)
        self.train_set = self._sequences(split["train"], "train")
        self.val_set = self._sequences(split["test"], "validation")
        if len(self.train_set) < self.batch_size:
            raise ConfigError(
                f"the corpus {describe_source(self.cfg)} gives {len(self.train_set)} training sequence(s), fewer than "
                f"one batch of {self.batch_size}: use a larger corpus or a smaller data.per_device_batch_size"
            )
        log.info("pre-training data: %d train and %d validation sequences of at most %d tokens",
                 len(self.train_set), len(self.val_set), self.cfg.max_seq_length)

    def _sequences(self, documents, split: str):
        tok, max_len, nsp = self.tokenizer, self.cfg.max_seq_length, self.nsp
        cls_id, sep_id = tok.cls_token_id, tok.sep_token_id
        seed = self.seed

        def build(batch, indices):
            docs = []
            for text in batch["text"]:
                sentences = split_sentences(text)
                docs.append(tok(sentences, add_special_tokens=False)["input_ids"] if sentences else [])
            if not nsp:
                return {"input_ids": pack_documents(docs, max_len, cls_id, sep_id)}
            pairs = sentence_pairs(docs, max_len, cls_id, sep_id, random.Random(seed + indices[0]))
            return {"input_ids": [p[0] for p in pairs], "token_type_ids": [p[1] for p in pairs],
                    "next_sentence_label": [p[2] for p in pairs]}

        return documents.map(build, batched=True, with_indices=True, batch_size=1000,
                             remove_columns=documents.column_names, desc=f"building {split} sequences")

    def _collator(self, seed=None):
        return DataCollatorForLanguageModeling(self.tokenizer, mlm_probability=self.cfg.mlm_probability, seed=seed)

    def train_dataloader(self):
        trainer = self.trainer
        self.sampler = ResumableSampler(len(self.train_set), self.seed, self.batch_size * self.world_size,
                                        self._samples_consumed, trainer.global_rank if trainer else 0,
                                        self.world_size)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=self.sampler,
                          collate_fn=self._collator(), num_workers=self.cfg.num_workers, drop_last=True)

    def val_dataloader(self):
        # The same masks at every validation, so validation perplexities are comparable over time.
        seed = self.seed

        def collate(features):
            return self._collator(seed)(features)

        return DataLoader(self.val_set, batch_size=self.batch_size, collate_fn=collate,
                          num_workers=self.cfg.num_workers)

    def state_dict(self):
        batches = self.trainer.fit_loop.epoch_loop.batch_progress.total.processed  # on each rank, since the start
        return {"samples_consumed": self.sampler.position_after(batches)}

    def load_state_dict(self, state):
        self._samples_consumed = state["samples_consumed"]
