"""`blockbert export`: a run's model as a Hugging Face directory (dense) or a blockbert one (block, sparse)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from blockbert.config import BlockBertConfig, ConfigError
from blockbert.convert import export
from blockbert.model import BlockBertForMaskedLM, BlockBertForPreTraining, BlockBertForQuestionAnswering


def model_from_run(run_dir: str):
    """The model of a `blockbert pretrain` or `finetune` run directory (or checkpoint file)."""
    path = Path(run_dir).expanduser()
    ckpt = path / "checkpoints" / "last.ckpt" if path.is_dir() else path
    if not ckpt.is_file():
        raise FileNotFoundError(f"{run_dir}: no checkpoints/last.ckpt (expected a blockbert run directory)")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    config = state.get("hyper_parameters", {}).get("model_config")
    if config is None:
        raise ConfigError(f"{ckpt} is not a blockbert checkpoint (no model_config in its hyper-parameters)")
    weights = {k[len("model."):]: v for k, v in state["state_dict"].items() if k.startswith("model.")}
    model_class = (BlockBertForQuestionAnswering if "qa.weight" in weights else
                   BlockBertForPreTraining if "nsp.classifier.weight" in weights else BlockBertForMaskedLM)
    model = model_class(BlockBertConfig(**config))
    model.load_state_dict(weights)
    return model, ckpt.parent.parent


def run_export(run_dir: str, out_dir: str, debug: bool) -> int:
    try:
        model, root = model_from_run(run_dir)
        out = export(model, out_dir, root / "tokenizer")
    except (OSError, ValueError) as err:
        if debug:
            raise
        print(f"blockbert export: error: {err}", file=sys.stderr)
        return 2
    kind = "Hugging Face" if model.config.attention == "dense" else "blockbert (load with BlockBertModel.from_pretrained)"
    print(f"{type(model).__name__} exported as a {kind} directory:")
    print(out.resolve())
    return 0
