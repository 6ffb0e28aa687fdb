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
    """An endless stream of seeded permutations, read from ``position`` (samples consumed so far).

    One iteration runs to the end of the current permutation, so a resumed run first finishes the
    permutation it was interrupted in, then goes on with the next: no sample is seen twice or skipped.
    """

    def __init__(self, size: int, seed: int, position: int = 0):
        self.size, self.seed, self.position = size, seed, position

    def __iter__(self):
        epoch, offset = divmod(self.position, self.size)
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
        for index in order[offset:].tolist():
            self.position += 1
            yield index

    def __len__(self) -> int:  # constant: Lightning sizes its epoch loop once
        return self.size


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
        self.sampler = ResumableSampler(len(self.train_set), self.seed, self._samples_consumed)

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
        batches = self.trainer.fit_loop.epoch_loop.batch_progress.total.processed
        return {"samples_consumed": batches * self.batch_size * self.world_size}

    def load_state_dict(self, state):
        self._samples_consumed = state["samples_consumed"]
        if self.sampler is not None:
            self.sampler.position = self._samples_consumed
