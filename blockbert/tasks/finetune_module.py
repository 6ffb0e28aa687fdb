"""Lightning module for extractive QA: start/end cross-entropy, AdamW, warm-up and linear decay (A.4)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from transformers import get_linear_schedule_with_warmup

from blockbert.config import BlockBertConfig
from blockbert.model import BlockBertForQuestionAnswering
from blockbert.tasks.pretrain_module import weight_decay_groups


class QAModule(pl.LightningModule):
    def __init__(self, model_config: dict, optim: dict):
        super().__init__()
        self.save_hyperparameters()
        self.model = BlockBertForQuestionAnswering(BlockBertConfig(**model_config))
        self.evaluate_dev = None  # set by the entry point: [(window ids, start, end) per batch] -> metrics
        self._dev_logits = []

    def forward(self, batch):
        inputs = {k: v for k, v in batch.items() if k != "window_index"}
        return self.model(**inputs)

    def training_step(self, batch, batch_idx):
        loss = self(batch).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        out = self(batch)
        self.log("dev/loss", out.loss, batch_size=batch["input_ids"].shape[0])
        self._dev_logits.append((batch["window_index"], out.start_logits, out.end_logits))

    def predict_step(self, batch, batch_idx):
        out = self(batch)
        return batch["window_index"], out.start_logits, out.end_logits

    def on_validation_epoch_end(self):
        outputs, self._dev_logits = self._dev_logits, []
        if self.evaluate_dev is None or self.trainer.sanity_checking:
            return
        metrics = self.evaluate_dev(outputs)
        if metrics is None:  # only part of dev was run (limit_val_batches): no EM/F1
            return
        self.log_dict({f"dev/{k}": float(v) for k, v in metrics.items()}, prog_bar=False)

    def configure_optimizers(self):
        o = self.hparams.optim
        optimizer = torch.optim.AdamW(
            weight_decay_groups(self.model, o["weight_decay"]), lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"]
        )
        total = self.trainer.estimated_stepping_batches
        schedule = get_linear_schedule_with_warmup(optimizer, int(o["warmup_proportion"] * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def gather_logits(batches, count: int) -> tuple[list, list] | None:
    """Window-ordered start and end logits (1-D arrays, each the window's padded length) for ``count``
    windows; None when some window is missing."""
    starts, ends = [None] * count, [None] * count
    for idx, start, end in batches:
        for i, s, e in zip(idx.tolist(), start.float().cpu().numpy(), end.float().cpu().numpy()):
            starts[i], ends[i] = s, e
    if any(s is None for s in starts):
        return None
    return starts, ends
