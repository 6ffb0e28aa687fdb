"""`blockbert export`: a run's model as a Hugging Face directory (dense) or a blockbert one (block, sparse)."""

from __future__ import annotations

from blockbert.checkpoints import CheckpointError, load_run
from blockbert.config import BlockBertConfig
from blockbert.convert import export
from blockbert.errors import one_line_errors
from blockbert.model import BlockBertForMaskedLM, BlockBertForPreTraining, BlockBertForQuestionAnswering


def model_from_run(run_dir: str):
    """The model of a `blockbert pretrain` or `finetune` run directory (or checkpoint file), and its root."""
    ckpt, config, weights = load_run(run_dir)
    model_class = (
        BlockBertForQuestionAnswering
        if "qa.weight" in weights
        else BlockBertForPreTraining
        if "nsp.classifier.weight" in weights
        else BlockBertForMaskedLM
    )
    model = model_class(BlockBertConfig(**config))
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:  # torch lists every bad key over many lines: keep the first
        detail = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
        raise CheckpointError(f"{ckpt}: the weights do not fit its model_config ({detail[:200]})") from None
    return model, ckpt.parent.parent


@one_line_errors("export")
def run_export(run_dir: str, out_dir: str) -> None:
    model, root = model_from_run(run_dir)
    out = export(model, out_dir, root / "tokenizer")
    kind = (
        "Hugging Face" if model.config.attention == "dense" else "blockbert (load with BlockBertModel.from_pretrained)"
    )
    print(f"{type(model).__name__} exported as a {kind} directory:")
    print(out.resolve())
