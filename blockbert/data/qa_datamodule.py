"""Lightning data module for QA fine-tuning: files -> examples -> windows -> padded batches."""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from blockbert.config import ConfigError

from .qa import QADataset, read_hub_split, read_qa_file, split_dev_test, write_generated_squad
from .qa_windows import QAWindow, build_windows
from .tokenizer import train_wordpiece

log = logging.getLogger(__name__)


def load_task(task_cfg, cache_dir: Path) -> dict[str, QADataset]:
    """{"train", "dev"[, "test"]} datasets of the configured task."""
    if task_cfg.name == "generated":
        folder = cache_dir / "qa" / f"generated-v{task_cfg.version}-{task_cfg.generated_questions}"
        files = {split: write_generated_squad(folder / f"{split}.json", n, task_cfg.version, seed)
                 for split, n, seed in (("train", task_cfg.generated_questions, 0),
                                        ("dev", task_cfg.generated_questions // 4, 1))}
    elif task_cfg.get("train_file") or task_cfg.get("dev_file"):
        if not (task_cfg.get("train_file") and task_cfg.get("dev_file")):
            raise ConfigError(f"task {task_cfg.name}: give both task.train_file and task.dev_file "
                              f"(got train_file={task_cfg.get('train_file')!r}, dev_file={task_cfg.get('dev_file')!r})")
        files = {"train": task_cfg.train_file, "dev": task_cfg.dev_file}
        if task_cfg.get("test_file"):
            files["test"] = task_cfg.test_file
    else:
        if not task_cfg.get("hub_name"):
            raise ConfigError(f"task {task_cfg.name}: set task.train_file and task.dev_file (local files) "
                              "or task.hub_name (a hub dataset)")
        data = {split: read_hub_split(task_cfg.hub_name, task_cfg.get("hub_config"), hub_split, task_cfg.format,
                                      cache_dir, task_cfg.get("hub_subset"))
                for split, hub_split in (("train", task_cfg.hub_train_split), ("dev", task_cfg.hub_dev_split))}
        return _finish(task_cfg, data)
    return _finish(task_cfg, {split: read_qa_file(path, task_cfg.format) for split, path in files.items()})


def _finish(task_cfg, data: dict[str, QADataset]) -> dict[str, QADataset]:
    if task_cfg.get("split_dev") and "test" not in data:
        data["dev"], data["test"] = split_dev_test(data["dev"])
    for split, d in data.items():
        log.info("%s: %d questions from %s (%d answers not matching their offsets)", split, len(d.examples), d.path,
                 d.mismatched_answers)
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


class QADataModule(pl.LightningDataModule):
    def __init__(self, data: dict[str, QADataset], tokenizer, data_cfg, batch_size: int, num_workers: int = 0):
        super().__init__()
        self.data, self.tokenizer, self.cfg = data, tokenizer, data_cfg
        self.batch_size, self.num_workers = batch_size, num_workers
        self.windows: dict[str, list[QAWindow]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.windows:
            return
        for split, dataset in self.data.items():
            windows = []
            for i, example in enumerate(dataset.examples):
                windows += build_windows(example, i, self.tokenizer, self.cfg.max_seq_length, self.cfg.doc_stride,
                                         self.cfg.max_query_length)
            if split == "train":  # answers that did not match their offsets teach nothing: leave them out
                windows = [w for w in windows if not (dataset.examples[w.example_index].answers
                                                      and not dataset.examples[w.example_index].spans)]
            self.windows[split] = windows
            log.info("%s: %d windows of at most %d tokens", split, len(windows), self.cfg.max_seq_length)

    def _loader(self, split: str, shuffle: bool):
        windows = self.windows[split]
        pad = self.tokenizer.pad_token_id

        def collate(indices):
            batch = [windows[i] for i in indices]
            n = max(len(w.input_ids) for w in batch)
            ids = torch.full((len(batch), n), pad, dtype=torch.long)
            types = torch.zeros((len(batch), n), dtype=torch.long)
            mask = torch.zeros((len(batch), n), dtype=torch.long)
            for row, w in enumerate(batch):
                ids[row, :len(w.input_ids)] = torch.tensor(w.input_ids)
                types[row, :len(w.input_ids)] = torch.tensor(w.token_type_ids)
                mask[row, :len(w.input_ids)] = 1
            return dict(input_ids=ids, token_type_ids=types, attention_mask=mask,
                        start_positions=torch.tensor([w.start_position for w in batch]),
                        end_positions=torch.tensor([w.end_position for w in batch]),
                        window_index=torch.tensor(indices))

        return DataLoader(list(range(len(windows))), batch_size=self.batch_size, shuffle=shuffle, collate_fn=collate,
                          num_workers=self.num_workers)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("dev", shuffle=False)

    def eval_dataloader(self, split: str):
        return self._loader(split, shuffle=False)
