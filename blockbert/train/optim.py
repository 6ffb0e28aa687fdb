"""AdamW with BERT's weight-decay groups (our choice: the paper does not say which parameters decay), linear warm-up
then linear decay: pre-training (A.1) and fine-tuning (A.4)."""

from __future__ import annotations

import logging

import torch
from transformers import get_linear_schedule_with_warmup

from blockbert.display import counted

log = logging.getLogger(__name__)


def adamw_with_warmup(model: torch.nn.Module, optim: dict, warmup_steps: int, total_steps: int) -> dict:
    """Lightning's ``configure_optimizers`` value: AdamW (``optim``: lr, betas, eps, weight_decay) stepped with
    a linear warm-up over ``warmup_steps`` and a linear decay to 0 at ``total_steps``."""
    from pytorch_lightning.utilities import rank_zero_only  # here: plan builds AdamW without Lightning

    if 0 < total_steps <= warmup_steps and rank_zero_only.rank == 0:  # once, not per process
        log.warning(
            "the warm-up (%s) is not shorter than the run (%d): the learning rate never reaches its "
            "peak, optim.lr=%g; shorten optim.warmup_steps (pretrain) or optim.warmup_proportion (finetune)",
            counted(warmup_steps, "optimizer step"),
            total_steps,
            optim["lr"],
        )
    groups = weight_decay_groups(model, optim["weight_decay"])
    optimizer = torch.optim.AdamW(groups, lr=optim["lr"], betas=tuple(optim["betas"]), eps=optim["eps"])
    schedule = get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def weight_decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: decay on weights, none on biases and LayerNorm parameters (BERT's convention, our
    choice; A.1 gives only the decay, 0.01)."""
    no_decay_ids = {id(p) for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
    no_decay_ids |= {id(p) for n, p in model.named_parameters() if n.endswith("bias")}
    params = list(model.parameters())
    return [
        {"params": [p for p in params if id(p) not in no_decay_ids], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in no_decay_ids], "weight_decay": 0.0},
    ]
