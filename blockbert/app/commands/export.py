"""`blockbert export`: a run's model as a Hugging Face directory (dense) or a blockbert one (block, sparse), with
a model card (README.md, see :mod:`blockbert.formats.model_card`; the run's model.name is checked against the
presets of conf/model) and the run's tokenizer, its ``model_max_length`` the longest sequence the model takes."""

from __future__ import annotations

import sys
from pathlib import Path

from blockbert.errors import ConfigError, one_line_errors
from blockbert.formats.checkpoints import model_from_run
from blockbert.formats.model_card import model_card
from blockbert.formats.presets import PRESETS
from blockbert.formats.run_dir import check_writable


@one_line_errors("export")
def run_export(run_dir: str, out_dir: str, overwrite: bool = False) -> None:
    check_writable(out_dir, "OUT_DIR")
    out_path = Path(out_dir).expanduser()
    held = sorted(entry.name for entry in out_path.iterdir()) if out_path.is_dir() else []
    if held and not overwrite:  # an earlier export, or anything else: not replaced without a word
        shown = ", ".join(held[:3]) + (", ..." if held[3:] else "")
        raise ConfigError(f"OUT_DIR {out_dir} holds files already ({shown}): give a new or empty one, or --overwrite")
    model, run = model_from_run(run_dir)
    out = model.save_pretrained(out_dir, run.tokenizer_dir)
    try:  # the card is a description: nothing missing from the run, nor a fault in it, fails the export
        (out / "README.md").write_text(model_card(model, run.path, PRESETS), encoding="utf-8")
    except Exception as err:  # noqa: BLE001
        print(f"export: no model card written ({type(err).__name__}: {err})", file=sys.stderr)
    name = type(model).__name__
    kind = (
        "Hugging Face"
        if model.config.attention == "dense"
        else f"blockbert (load with {name}.from_pretrained, or with the Auto classes after import blockbert)"
    )
    print(f"{name} exported as a {kind} directory:")
    print(out.resolve())
