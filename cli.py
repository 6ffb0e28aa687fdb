"""blockbert: pre-train, fine-tune, sweep, profile and benchmark BlockBERT from one command line.

This module only parses the command and hands its arguments to the task (``blockbert.tasks``).
Arguments after the command are Hydra's: overrides such as ``model=blockbert_n3`` or
``trainer.max_steps=10``, and flags such as ``-m`` (multirun), ``--cfg job`` and ``--info``.
"""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    help="Pre-train, fine-tune, sweep, profile and benchmark BlockBERT (BERT with blockwise sparse "
    "self-attention). Every command takes Hydra overrides: `blockbert pretrain model=blockbert_n3 "
    "data.max_seq_length=1024`.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)

HYDRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}
DEBUG = typer.Option(False, "--debug", help="Show the full traceback of an error instead of one line.")
HYDRA_HELP = (
    "**Arguments** are Hydra's: `key=value` overrides, `group=option` to pick a config "
    "(model, data, trainer, logger, cluster, experiment), `-m` with comma lists for a multirun, "
    "`--cfg job` to print the composed config, `--info` for Hydra's view of it."
)


def hand_over(task: str, ctx: typer.Context, debug: bool) -> None:
    from blockbert.tasks.launch import run_task

    raise typer.Exit(run_task(task, list(ctx.args), debug))


def not_implemented(command: str) -> None:
    typer.echo(f"blockbert {command}: not implemented yet", err=True)
    raise typer.Exit(1)


@app.command(context_settings=HYDRA_ARGS, epilog=HYDRA_HELP)
def pretrain(ctx: typer.Context, debug: bool = DEBUG) -> None:
    """Pre-train a model with masked-LM (and next-sentence prediction for google_bert/roberta_2seq).

    With no arguments: a tiny BlockBert on a generated corpus, on the CPU, in a few minutes.
    Results (config, checkpoints, logs, metrics.json) go to a run directory printed as the last line.

    Example: `blockbert pretrain experiment=blockbert_n2_1024 data=wiki_book trainer=ddp`
    """
    hand_over("pretrain", ctx, debug)


@app.command(context_settings=HYDRA_ARGS, epilog=HYDRA_HELP)
def finetune(ctx: typer.Context, debug: bool = DEBUG) -> None:
    """Fine-tune a pre-trained checkpoint on extractive question answering (SQuAD, MRQA).

    Example: `blockbert finetune experiment=blockbert_n2_512 init_from=runs/pretrain/RUN`
    """
    not_implemented("finetune")


@app.command(context_settings=HYDRA_ARGS, epilog=HYDRA_HELP)
def sweep(ctx: typer.Context, debug: bool = DEBUG) -> None:
    """Run a sweep from sweeps/ (head assignments, fine-tuning grids) as a Hydra multirun.

    Example: `blockbert sweep heads_n2 model=tiny trainer.max_steps=50`
    """
    not_implemented("sweep")


@app.command(context_settings=HYDRA_ARGS, epilog=HYDRA_HELP)
def profile(ctx: typer.Context, debug: bool = DEBUG) -> None:
    """Break a training step's memory into model, optimizer and activation parts (Table 1).

    Example: `blockbert profile model=blockbert_n2`
    """
    not_implemented("profile")


@app.command(context_settings=HYDRA_ARGS, epilog=HYDRA_HELP)
def benchmark(ctx: typer.Context, debug: bool = DEBUG) -> None:
    """Time inference and training steps of the models side by side and report ratios (Tables 2, 5).

    Example: `blockbert benchmark`
    """
    not_implemented("benchmark")


@app.command(context_settings=HYDRA_ARGS, epilog=HYDRA_HELP)
def evaluate(ctx: typer.Context, debug: bool = DEBUG) -> None:
    """Score QA predictions against SQuAD 1.1/2.0 or MRQA gold answers (official-equivalent EM/F1).

    Example: `blockbert evaluate gold=dev-v1.1.json predictions=predictions.json`
    """
    not_implemented("evaluate")


@app.command(context_settings=HYDRA_ARGS, epilog=HYDRA_HELP)
def report(ctx: typer.Context, debug: bool = DEBUG) -> None:
    """Summarise a sweep or run directory into a table, summary.csv and plots.

    Example: `blockbert report multirun/pretrain/2026-11-29_10-00-00`
    """
    not_implemented("report")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
