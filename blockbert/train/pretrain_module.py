"""Lightning module for pre-training: masked-LM (+ NSP), AdamW and warm-up/linear decay (A.1)."""

from __future__ import annotations

import math
import time

import pytorch_lightning as pl
import torch

from blockbert.model.config import BlockBertConfig
from blockbert.model.modeling import BlockBertForMaskedLM, BlockBertForPreTraining
from blockbert.train.optim import adamw_with_warmup

RATE_WINDOW_S = 1.0  # our choice: train/tokens_per_s is the rate over windows of this many seconds


class PretrainModule(pl.LightningModule):
    def __init__(
        self, model_config: BlockBertConfig | dict, next_sentence_prediction: bool, optim: dict, max_steps: int
    ):
        super().__init__()
        config = BlockBertConfig.from_values(model_config) if isinstance(model_config, dict) else model_config
        # plain data only in the checkpoint (it is read with weights_only=True), under the names load_from_checkpoint
        # passes back: the config as a dict
        self.save_hyperparameters(
            dict(model_config=config.to_dict(), next_sentence_prediction=next_sentence_prediction, optim=optim,
                 max_steps=max_steps)
        )  # fmt: skip
        model_class = BlockBertForPreTraining if next_sentence_prediction else BlockBertForMaskedLM
        self.model = model_class(config)
        self._val_loss_sum = self._val_tokens = 0.0
        self._val_hits = torch.zeros(3, 2)  # rows: all, long-range, local targets; columns: correct, counted
        self._mask_id = self._longrange_at = None
        self.real_tokens = 0  # real (non-padding) tokens of the training batches this process has taken
        self._rate_window: tuple[float, int] | None = None  # (its start, real_tokens then): train/tokens_per_s
        self._rate: float | None = None
        self.validation_history: list[tuple[int, float]] = []  # (step, perplexity)

    def forward(self, batch):
        return self.model(**batch, masked_only=True)  # vocabulary logits only where a token is masked

    def on_before_batch_transfer(self, batch, dataloader_idx):
        """Real tokens are counted here, on the host before the batch moves: counted on a GPU they would cost a host
        sync every step (the CPU could not queue the next step while the GPU runs this one)."""
        if self._trainer is not None and self.trainer.training:
            self.real_tokens += int(batch["attention_mask"].sum())
        return batch

    def training_step(self, batch, batch_idx):
        out = self(batch)
        size = batch["input_ids"].shape[0]
        self.log("train/loss", out.loss, batch_size=size)  # not prog_bar: Lightning reads those every batch (a sync)
        if self.hparams.next_sentence_prediction:
            self.log_dict({"train/mlm_loss": out.mlm_loss, "train/nsp_loss": out.nsp_loss}, batch_size=size)
        rate = self._tokens_per_s()
        if rate is not None:  # on the host (a float would be copied to the GPU, a sync a step); never sync_dist: the
            # rate counts every process already, and a host tensor cannot take part in NCCL's all-reduce
            self.log("train/tokens_per_s", torch.tensor(rate), batch_size=size)
        return out.loss

    def _tokens_per_s(self) -> float | None:
        """Real tokens per second, this process's count times the number of processes, over windows of at least
        RATE_WINDOW_S seconds of wall time (the previous window's rate until the next has passed), which smooths
        step-to-step spread; the first rate, a step after the run (or its resumption) starts, is over that step, so
        that a run shorter than a window has one."""
        now = time.perf_counter()
        if self._rate_window is None:
            self._rate_window = (now, self.real_tokens)
        start, tokens = self._rate_window
        if now - start >= RATE_WINDOW_S or (self._rate is None and self.real_tokens > tokens and now > start):
            self._rate = (self.real_tokens - tokens) * self.trainer.world_size / (now - start)
            self._rate_window = (now, self.real_tokens)
        return self._rate

    def on_validation_epoch_start(self):
        self._rate_window = None  # validation time is not training throughput
        self._val_loss_sum = self._val_tokens = 0.0
        self._val_hits = torch.zeros(3, 2, device=self.device)
        data = self.trainer.datamodule if self._trainer else None
        tokenizer = getattr(data, "tokenizer", None)
        self._mask_id = tokenizer.mask_token_id if tokenizer is not None else None
        positions = getattr(data, "longrange_positions", None)
        self._longrange_at = torch.tensor(positions, device=self.device) if positions else None

    def validation_step(self, batch, batch_idx):
        out = self(batch)
        loss = out.mlm_loss if self.hparams.next_sentence_prediction else out.loss
        selected = batch["labels"] != -100  # [B, N]
        masked = selected.sum().item()
        if masked:
            self._val_loss_sum += loss.item() * masked
            self._val_tokens += masked
            if self._mask_id is not None:
                far = torch.zeros_like(selected)  # [B, N]
                if self._longrange_at is not None:
                    far[:, self._longrange_at] = True
                self._count_hits(out.logits, batch["labels"][selected], batch["input_ids"][selected], far[selected])

    def _count_hits(self, logits, labels, inputs, far):
        """Accuracy counts over the targets replaced by [MASK] (80 % of them): the ones kept or replaced by a
        random token are left out, as there the input may show the answer. With data=longrange, also split into
        long-range targets (``far``: at the corpus's reference positions) and local ones."""
        hidden = inputs == self._mask_id  # [M]
        correct = (logits.argmax(-1) == labels) & hidden  # [M]
        groups = [hidden] + ([hidden & far, hidden & ~far] if self._longrange_at is not None else [])
        for row, group in enumerate(groups):
            self._val_hits[row, 0] += (correct & group).sum()
            self._val_hits[row, 1] += group.sum()

    def on_validation_epoch_end(self):
        sums = torch.tensor([self._val_loss_sum, self._val_tokens], device=self.device)
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum")  # every rank joins, even one with nothing masked
        if not sums[1]:
            return
        loss = (sums[0] / sums[1]).item()
        ppl = math.exp(min(loss, 50.0))
        self.log_dict({"val/loss": loss, "val/ppl": ppl}, prog_bar=True, sync_dist=False)
        # the loggers' step: the optimizer steps taken (Lightning's would be one less, as it counts the step whose
        # end runs this validation only afterwards); Lightning adds the epoch only to rows it steps itself
        self.log_dict({"step": float(self.global_step), "epoch": float(self.current_epoch)}, sync_dist=False)
        hits = self.trainer.strategy.reduce(self._val_hits, reduce_op="sum")
        names = ["val/acc", "val/acc_longrange", "val/acc_local"]
        accuracies = {name: (h[0] / h[1]).item() for name, h in zip(names, hits) if h[1]}
        self.log_dict(accuracies, sync_dist=False)
        full = not self.trainer.sanity_checking or self.trainer.num_sanity_val_steps == float("inf")
        if full and (not self.validation_history or self.validation_history[-1][0] != self.global_step):
            self.validation_history.append((self.global_step, ppl))  # a full sanity check counts (step 0, a resume)
        if self.validation_history:  # Figure 4's metric: the best perplexity reached, and when
            best_step, best = min(self.validation_history, key=lambda entry: entry[1])
            self.log_dict({"val/best_ppl": best, "val/best_ppl_step": float(best_step)}, sync_dist=False)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["validation_history"] = [list(entry) for entry in self.validation_history]
        self._rate_window = None  # the checkpoint's writing, which follows, is not training throughput

    def on_load_checkpoint(self, checkpoint):  # a resumed run keeps the perplexities reached before
        self.validation_history = [(int(step), float(ppl)) for step, ppl in checkpoint.get("validation_history", [])]

    def configure_optimizers(self):
        """AdamW, warmed up over optim.warmup_steps, decayed linearly to 0 at optim.schedule_steps (null: the run's
        max_steps; set apart, a run stops on a longer schedule, as Figure 4's 1.2M steps of A.1's 2.4M)."""
        optim = self.hparams.optim
        total = optim.get("schedule_steps") or self.hparams.max_steps
        return adamw_with_warmup(self.model, optim, optim["warmup_steps"], total)
