"""Lightning module for extractive QA: start/end cross-entropy, AdamW, warm-up and linear decay (A.4)."""

from __future__ import annotations

import pytorch_lightning as pl

from blockbert.model.config import BlockBertConfig
from blockbert.model.modeling import BlockBertForQuestionAnswering
from blockbert.train.optim import adamw_with_warmup


class QAModule(pl.LightningModule):
    def __init__(self, model_config: BlockBertConfig | dict, optim: dict):
        super().__init__()
        config = BlockBertConfig.from_values(model_config) if isinstance(model_config, dict) else model_config
        self.save_hyperparameters(dict(model_config=config.to_dict(), optim=optim))  # plain data in the checkpoint
        self.model = BlockBertForQuestionAnswering(config)

    def forward(self, batch):
        inputs = {k: v for k, v in batch.items() if k != "window_index"}
        return self.model(**inputs)

    def training_step(self, batch, batch_idx):
        loss = self(batch).loss
        self.log("train/loss", loss, batch_size=batch["input_ids"].shape[0])  # the bar reads it (StepProgressBar)
        return loss

    def validation_step(self, batch, batch_idx):
        out = self(batch)
        self.log("dev/loss", out.loss, batch_size=batch["input_ids"].shape[0])
        return batch["window_index"], out.start_logits, out.end_logits  # EM/F1: blockbert.train.callbacks.DevEvaluation

    def predict_step(self, batch, batch_idx):
        out = self(batch)
        return batch["window_index"], out.start_logits, out.end_logits, out.loss.detach()  # the loss: split_loss

    def configure_optimizers(self):
        total = self.trainer.estimated_stepping_batches
        return adamw_with_warmup(
            self.model, self.hparams.optim, int(self.hparams.optim["warmup_proportion"] * total), total
        )
