"""`blockbert export`: a run's model as a Hugging Face directory (dense) or a blockbert one (block, sparse), with
a model card (README.md, see :mod:`blockbert.formats.model_card`; the run's model.name is checked against the
presets of conf/model) and the run's tokenizer, its ``model_max_length`` the longest sequence the model takes.

A run directory exports the checkpoint a resume would continue from (the readable one with the most steps: an
interrupted run's interrupted.ckpt, not its older last.ckpt); a checkpoint file exports itself. The output names
the file and step exported, and the card describes that step."""

from __future__ import annotations

import sys
from pathlib import Path

from blockbert.errors import ConfigError, one_line_errors
from blockbert.formats.checkpoints import model_and_checkpoint
from blockbert.formats.model_card import model_card
from blockbert.formats.presets import PRESETS
from blockbert.formats.run_dir import RunDir, check_writable


@one_line_errors("export")
def run_export(run_dir: str, out_dir: str, overwrite: bool = False) -> None:
    check_writable(out_dir, "OUT_DIR")
    out_path = Path(out_dir).expanduser()
    held = sorted(entry.name for entry in out_path.iterdir()) if out_path.is_dir() else []
    if held and not overwrite:  # an earlier export, or anything else: not replaced without a word
        shown = ", ".join(held[:3]) + (", ..." if held[3:] else "")
        raise ConfigError(f"OUT_DIR {out_dir} holds files already ({shown}): give a new or empty one, or --overwrite")
    model, run, ckpt, step = model_and_checkpoint(run_dir)
    warn_if_training(run)
    out = model.save_pretrained(out_dir, run.tokenizer_dir)
    try:  # the card is a description: nothing missing from the run, nor a fault in it, fails the export
        (out / "README.md").write_text(model_card(model, run.path, PRESETS, ckpt, step), encoding="utf-8")
    except Exception as err:  # noqa: BLE001
        print(f"export: no model card written ({type(err).__name__}: {err})", file=sys.stderr)
    name = type(model).__name__
    kind = (
        "Hugging Face"
        if model.config.attention == "dense"
        else f"blockbert (load with {name}.from_pretrained, or with the Auto classes after import blockbert)"
    )
    print(f"weights: {ckpt} (step {step})")
    print(f"{name} exported as a {kind} directory:")
    print(out.resolve())


def warn_if_training(run: RunDir) -> None:
    """A run still training will have other weights and metrics: the export goes on (a snapshot may be wanted), and
    says so on stderr as its card does."""
    metrics = run.metrics()
    if metrics.get("status") == "running":
        print(
            f"export: warning: {run.path} is still training (metrics.json: status running, step "
            f"{metrics.get('step')}; or it was killed): these weights are not its final ones, and the model card "
            "says so",
            file=sys.stderr,
        )
