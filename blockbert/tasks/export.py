"""`blockbert export`: a run's model as a Hugging Face directory (dense) or a blockbert one (block, sparse)."""

from __future__ import annotations

from blockbert.checkpoints import model_from_run
from blockbert.convert import export
from blockbert.errors import one_line_errors


@one_line_errors("export")
def run_export(run_dir: str, out_dir: str) -> None:
    model, root = model_from_run(run_dir)
    out = export(model, out_dir, root / "tokenizer")
    kind = (
        "Hugging Face" if model.config.attention == "dense" else "blockbert (load with BlockBertModel.from_pretrained)"
    )
    print(f"{type(model).__name__} exported as a {kind} directory:")
    print(out.resolve())
