"""Lightning data module for QA fine-tuning: files -> examples -> windows -> padded batches."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from functools import partial
from pathlib import Path

import datasets
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from blockbert.data.cache import arrow_files, build_once, fingerprint, load_arrow, tokenizer_fingerprint
from blockbert.data.qa import (
    GENERATED_PEOPLE,
    QADataset,
    read_hub_split,
    read_qa_file,
    split_dev_test,
    task_files,
    write_generated_squad,
)
from blockbert.data.qa_windows import WINDOW_FEATURES, WindowList, examples_table, window_rows
from blockbert.data.sampler import ResumableData, ResumableSampler
from blockbert.data.tokenizer import train_wordpiece
from blockbert.display import counted
from blockbert.errors import ConfigError

log = logging.getLogger(__name__)


def generated_people(task_cfg) -> tuple[int, int]:
    """task.generated_people as (fewest, most) persons a generated paragraph is about (two values, checked by the
    schema; in either order)."""
    fewest, most = sorted(task_cfg.get("generated_people") or GENERATED_PEOPLE)
    return fewest, most


def load_task(task_cfg, cache_dir: Path) -> dict[str, QADataset]:
    """{"train", "dev"[, "test"]} datasets of the configured task."""
    if task_cfg.name == "generated":
        people = generated_people(task_cfg)
        spread = "" if people == GENERATED_PEOPLE else f"-people{people[0]}-{people[1]}"
        folder = cache_dir / "qa" / f"generated-v{task_cfg.version}-{task_cfg.generated_questions}{spread}"
        files = {
            split: write_generated_squad(folder / f"{split}.json", n, task_cfg.version, seed, people)
            for split, n, seed in (
                ("train", task_cfg.generated_questions, 0),
                ("dev", task_cfg.generated_questions // 4, 1),
            )
        }
    else:
        files = task_files(task_cfg)
    if files is None:  # a hub dataset
        data = {
            split: read_hub_split(
                task_cfg.hub_name,
                task_cfg.get("hub_config"),
                hub_split,
                task_cfg.format,
                cache_dir,
                task_cfg.get("hub_subset"),
            )
            for split, hub_split in (("train", task_cfg.hub_train_split), ("dev", task_cfg.hub_dev_split))
        }
        return _finish(task_cfg, data)
    read = {split: read_qa_file(path, task_cfg.format, unique_ids=split != "train") for split, path in files.items()}
    return _finish(task_cfg, read)


def _finish(task_cfg, data: dict[str, QADataset]) -> dict[str, QADataset]:
    """The splits as a run reads them: the dev set split in two (task.split_dev), the questions kept
    (task.max_*_samples); refused in one line before anything trains when a split would hold no question to score
    or the training set none to train on (before: the whole run trained, then ended in a TypeError or a
    ZeroDivisionError)."""
    if task_cfg.get("split_dev") and "test" not in data:
        data["dev"], data["test"] = split_dev_test(data["dev"])
        if not (data["dev"].examples and data["test"].examples):
            paragraphs = len({e.context for e in data["dev"].examples + data["test"].examples})
            raise ConfigError(
                f"{data['dev'].path.removesuffix('#dev')}: {counted(paragraphs, 'paragraph')} cannot be split into a "
                "dev and a test half by paragraph (task.split_dev=true, MRQA's way): give a dev file with more "
                "paragraphs, or task.split_dev=false"
            )
    for key, splits in (("max_train_samples", ("train",)), ("max_eval_samples", ("dev", "test"))):
        count = task_cfg.get(key)
        if count is None:
            continue
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"task.{key}={count!r} is not accepted: give null (every question) or an integer >= 1")
        for split in (s for s in splits if s in data):  # the first questions: the scores are over the kept ones
            data[split] = dataclasses.replace(data[split], examples=data[split].examples[:count])
    if not any(map(_trainable, data["train"].examples)):
        raise ConfigError(
            f"{data['train'].path}: none of its {counted(len(data['train'].examples), 'question')} can be trained "
            "on: every answer's text differs from its paragraph at its answer_start (check the offsets: they count "
            "characters of the context, from 0)"
        )
    for split, d in data.items():
        log.info(
            "%s: %s from %s (answers not matching their offsets: %d)",
            split,
            counted(len(d.examples), "question"),
            d.path,
            d.mismatched_answers,
        )
    return data


def qa_tokenizer(data: dict[str, QADataset], vocab_size: int, cache_dir: Path):
    """A WordPiece vocabulary trained on the task's own text (for a model fine-tuned from scratch)."""
    seen, texts = set(), []
    for example in data["train"].examples:
        if example.context not in seen:
            seen.add(example.context)
            texts.append(example.context)
        texts.append(example.question)
    return train_wordpiece(datasets.Dataset.from_dict({"text": texts}), vocab_size, cache_dir)


class QADataModule(ResumableData, pl.LightningDataModule):
    """Windows built with a batched ``datasets.map`` and cached under ``cache_dir/qa_windows/KEY``, KEY following
    the tokenizer, the questions and paragraphs, and the window settings; a second run reads them back.
    ``windows[split]`` is a list-like view of the cached table whose items are QAWindows.

    Over ``world_size`` processes each takes every world_size-th training window of the pass's order, and a pass
    drops its last windows that fill no batch on every process (a different few each pass): ranks whose last
    batches differed would wait for each other. Dev and test are read whole by every process (the scores need them
    all)."""

    def __init__(
        self,
        data: dict[str, QADataset],
        tokenizer,
        data_cfg,
        batch_size: int,
        seed: int = 0,
        *,
        cache_dir: Path,
        world_size: int = 1,
    ):
        super().__init__()
        self.data, self.tokenizer, self.cfg = data, tokenizer, data_cfg
        self.batch_size, self.seed, self.world_size = batch_size, seed, world_size
        self.cache_dir = Path(cache_dir).expanduser()  # paths.cache_dir
        self.windows: dict[str, WindowList] = {}

    def prepare_data(self) -> None:
        for split in self.data if not self.windows else ():  # after setup() the cache is read already
            self._window_table(split)

    def setup(self, stage: str | None = None) -> None:
        if self.windows:
            return
        for split in self.data:
            self.windows[split] = WindowList(self._window_table(split))
            log.info("%s: %d windows of at most %d tokens", split, len(self.windows[split]), self.cfg.max_seq_length)

    def _window_table(self, split: str) -> datasets.Dataset:
        cfg, dataset = self.cfg, self.data[split]
        if cfg.doc_stride < 1:
            raise ConfigError(
                f"data.doc_stride={cfg.doc_stride} must be a positive number of tokens (the paper uses 128)"
            )
        train = split == "train"  # answers that did not match their offsets teach nothing: left out (_trainable)
        key = fingerprint(
            tokenizer_fingerprint(self.tokenizer),
            _examples_fingerprint(dataset),
            cfg.max_seq_length,
            cfg.doc_stride,
            cfg.max_query_length,
            train,
        )
        directory = self.cache_dir / "qa_windows" / key

        def build(directory: Path) -> dict:
            table = examples_table(dataset.examples, _trainable if train else (lambda example: True))
            if not len(table):
                return {"windows": []}
            windows = table.map(
                partial(
                    window_rows,
                    tokenizer=self.tokenizer,
                    max_seq_length=cfg.max_seq_length,
                    doc_stride=cfg.doc_stride,
                    max_query_length=cfg.max_query_length,
                ),
                batched=True,
                batch_size=1000,
                remove_columns=table.column_names,
                features=WINDOW_FEATURES,
                num_proc=cfg.get("num_proc"),
                cache_file_name=str(directory / "windows.arrow"),
                load_from_cache_file=False,
                new_fingerprint=f"{key}-windows",
                desc=f"building {split} windows",
            )
            return {"split": split, "source": dataset.path, "windows": arrow_files(windows)}

        files = build_once(directory, build)["windows"]
        return (
            load_arrow(directory, files)
            if files
            else datasets.Dataset.from_dict({name: [] for name in WINDOW_FEATURES}, features=WINDOW_FEATURES)
        )

    def _loader(self, split: str, sampler: ResumableSampler | None = None):
        return DataLoader(
            list(range(len(self.windows[split]))),
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=WindowBatch(self.windows[split], self.tokenizer.pad_token_id),
            **self.loader_options(self.cfg.get("num_workers")),
        )

    def train_dataloader(self):
        # one pass per epoch, read on from the restored position on resume (ResumableData)
        trainer, size = self.trainer, len(self.windows["train"])
        if self.world_size > 1 and size < self.batch_size * self.world_size:
            raise ConfigError(
                f"{size} training windows fill no batch of {self.batch_size} on each of {self.world_size} devices: "
                "use fewer devices (trainer.devices) or a smaller optim.batch_size"
            )
        sampler = self.training_sampler(size, trainer.global_rank if trainer else 0, drop_last=self.world_size > 1)
        return self._loader("train", sampler)

    def val_dataloader(self):
        return self._loader("dev")

    def eval_dataloader(self, split: str):
        return self._loader(split)


class WindowBatch:
    """Window indices -> a batch padded to its longest window (a class, not a closure, so that worker processes can
    be spawned with it)."""

    def __init__(self, windows, pad: int):
        self.windows, self.pad = windows, pad

    def __call__(self, indices: list[int]) -> dict:
        batch = [self.windows[i] for i in indices]
        n = max(len(w.input_ids) for w in batch)
        ids = torch.full((len(batch), n), self.pad, dtype=torch.long)
        types = torch.zeros((len(batch), n), dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for row, w in enumerate(batch):
            ids[row, : len(w.input_ids)] = torch.tensor(w.input_ids)
            types[row, : len(w.input_ids)] = torch.tensor(w.token_type_ids)
            mask[row, : len(w.input_ids)] = 1
        return dict(
            input_ids=ids,
            token_type_ids=types,
            attention_mask=mask,
            start_positions=torch.tensor([w.start_position for w in batch]),
            end_positions=torch.tensor([w.end_position for w in batch]),
            window_index=torch.tensor(indices),
        )


def _trainable(example) -> bool:
    """False for an example with answers none of which matched its paragraph at their offsets."""
    return not (example.answers and not example.spans)


def _examples_fingerprint(dataset: QADataset) -> str:
    """What the windows depend on: each example's question, paragraph, first verified span, whether it has answers."""
    digest = hashlib.sha1()
    for e in dataset.examples:
        digest.update(json.dumps([e.question, e.context, e.spans[:1], bool(e.answers)]).encode())
    return digest.hexdigest()
