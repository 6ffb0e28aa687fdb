"""blockbert: pre-train, fine-tune, sweep, profile and benchmark BlockBERT from one command line.

This module only parses the command and hands its arguments to the task (``blockbert.app``).
Arguments after the command are Hydra's: overrides such as ``model=blockbert_n3`` or
``trainer.max_steps=10``, and flags such as ``-m`` (multirun), ``--cfg job`` and ``--info``.
"""

from __future__ import annotations

import difflib
import os
import sys

import typer
import typer._completion_shared

# The command never loads models through transformers' Auto classes: `import blockbert` (the help's config groups
# import it) skips registering with them, an import of torch and transformers' model code taking seconds, in this
# process and the ones it starts.
os.environ["BLOCKBERT_CLI"] = "1"

from blockbert.errors import (  # noqa: E402 -- after BLOCKBERT_CLI: the package's import reads it
    SIGINT_EXIT_CODE,
    SIGTERM_EXIT_CODE,
    SigtermRaises,
    Terminated,
    print_error,
    print_interrupted,
)


class Commands(typer.core.TyperGroup):
    """blockbert's commands: an unknown one is refused naming the ones there are (click names none)."""

    def resolve_command(self, ctx, args):
        name = args[0] if args else ""
        if name and not ctx.resilient_parsing and not name.startswith("-") and self.get_command(ctx, name) is None:
            commands = self.list_commands(ctx)
            near = difflib.get_close_matches(name, commands, n=1)
            ctx.fail(f"{name!r} is not a command" + (f" (did you mean {near[0]}?)" if near else "")
                     + f": accepted are {', '.join(commands)}")  # fmt: skip
        return super().resolve_command(ctx, args)


app = typer.Typer(
    cls=Commands,
    help="Pre-train, fine-tune, sweep, profile and benchmark BlockBERT (BERT with blockwise sparse "
    "self-attention). Every command takes Hydra overrides: `blockbert pretrain model=blockbert_n3 "
    "data.max_seq_length=1024`.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},  # -h: the command's help, not Hydra's
)

# bash ends a completed word with a space: not a `key=` (`data.max_se<TAB>` -> `data.max_seq_length=`), whose value
# is typed next. Typer's bash script with that one line added (typer builds the script from this table when it shows
# or installs it). The table is typer's private one: a typer without it keeps its own script (a space after `=`),
# and the command still starts (tests/test_cli_startup.py checks the line with the typer installed).
NO_SPACE_AFTER_EQUALS = "    [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *= ]] && compopt -o nospace\n"
_scripts = getattr(typer._completion_shared, "_completion_scripts", None)
if isinstance(_scripts, dict) and isinstance(getattr(typer._completion_shared, "COMPLETION_SCRIPT_BASH", None), str):
    _scripts["bash"] = typer._completion_shared.COMPLETION_SCRIPT_BASH.replace(
        "    return 0\n", NO_SPACE_AFTER_EQUALS + "    return 0\n", 1
    )

HYDRA_ARGS = {"ignore_unknown_options": True}  # Hydra's flags (-m, --cfg job, ...) reach the overrides as they are
DEBUG = typer.Option(False, "--debug", help="Show the full traceback of an error instead of one line.")
CONFIG_DIR = typer.Option(
    None, "--config-dir", "-cd", help="A directory of your own configs, searched with conf/ (Hydra's --config-dir)."
)
HYDRA_HELP = (
    "**Arguments** are Hydra's: `key=value` overrides, `group=option` to pick a config, `-m` with comma lists for "
    "a multirun (`-m cluster=slurm` submits its jobs to SLURM), `--cfg job` to print the composed config, "
    "`--info` for Hydra's view of it. Tab completion of overrides: `blockbert --install-completion`."
)
SHELL_COMPLETION_FLAGS = ("-sc", "--shell-completion")
SHOWN_HYDRA_FLAGS = ("--multirun", "--cfg", "--info")  # the ones HYDRA_HELP names
OVERRIDE_EXAMPLE = {
    "finetune": "trainer.max_epochs=1",
    "profile": "seq_lengths=[512,1024]",
    "benchmark": "mode=attention",
}


def complete_overrides(ctx: typer.Context, incomplete: str) -> list[str]:
    from blockbert.app.launch import complete_overrides

    return complete_overrides(ctx.command.name, ctx.params, incomplete)


OVERRIDES = typer.Argument(
    None,
    metavar="OVERRIDES",
    help="Hydra overrides and flags (see below).",
    show_default=False,
    autocompletion=complete_overrides,
)


def complete_sweep_name(incomplete: str) -> list[str]:
    from blockbert.experiments.sweep_plan import available

    return [name for name in available() if name.startswith(incomplete)]


def hydra_help(task: str) -> str:
    """The help's epilog: Hydra's arguments, then each config group of the command with its options."""
    from blockbert.formats.compose import config_groups

    lines = [
        f"`{group}`: " + " | ".join(f"**{option}** (default)" if option == default else option for option in options)
        for group, (default, options) in config_groups(task).items()
    ]
    return HYDRA_HELP + "\n\n**Config groups** (`group=option`):\n\n" + "\n\n".join(lines)


class LazyEpilogCommand(typer.core.TyperCommand):
    """A command whose help's epilog is computed only when that help is shown (:meth:`make_epilog`), so that
    `blockbert --help` reads no files."""

    def make_epilog(self) -> str:
        raise NotImplementedError

    @property
    def epilog(self) -> str:
        return self.make_epilog()

    @epilog.setter
    def epilog(self, value) -> None:  # click sets it when the command is built: the property computes it instead
        pass


class HydraCommand(LazyEpilogCommand):
    """A command run by Hydra: the epilog of its help lists its config groups (:func:`hydra_help`, from conf/)."""

    def make_epilog(self) -> str:
        return hydra_help(self.name)


def refuse_unknown_options(ctx: typer.Context, overrides: list[str], hydra_flags: bool) -> None:
    """End the command in one line at a word of its overrides that is an option it does not have (``--max-steps=3``):
    Typer hands unknown options over with the overrides, so that Hydra's flags (``hydra_flags``) reach Hydra."""
    flags = [word.split("=")[0] for word in overrides if word.startswith("-")]
    if not flags:
        return
    task = ctx.command.name
    known = [name for param in ctx.command.params for name in (*param.opts, *param.secondary_opts) if name[0] == "-"]
    known.append("--help")
    # suggested for a typo: these and the Hydra flags the help names, never Hydra's others (--dry-run is close to
    # Hydra's --run, which runs the job)
    suggested = [name for name in known if name.startswith("--")] + (list(SHOWN_HYDRA_FLAGS) if hydra_flags else [])
    if hydra_flags:
        from hydra._internal.utils import get_args_parser

        known += get_args_parser()._option_string_actions  # every spelling of Hydra's flags (-m, --multirun, ...)
    unknown = next((flag for flag in flags if flag not in known), None)
    if unknown is None:
        return
    if unknown.replace("-", "") == "dryrun" and "--dry-run" not in known:
        looks = f"blockbert {task} --cfg job" if hydra_flags else "blockbert pretrain ... --cfg job"
        print_error(
            task,
            f"{unknown} is not an option of blockbert {task}, which has no dry run"
            + (" (it runs nothing but its fit, seconds)" if task == "plan" else "")
            + f": `{looks}` prints the config a run would run"
            + (f", `blockbert plan{'' if task == 'pretrain' else ' --command finetune'}` its memory and time"
               if task in ("pretrain", "finetune") else "")
            + "; `blockbert sweep NAME --dry-run` lists a sweep's jobs",
        )  # fmt: skip
        raise typer.Exit(2)
    near = difflib.get_close_matches(unknown, suggested, n=1)
    print_error(
        task,
        f"{unknown} is not an option of blockbert {task}"
        + (f" (did you mean {near[0]}?)" if near else "")
        + f"; settings are key=value overrides ({OVERRIDE_EXAMPLE.get(task, 'trainer.max_steps=10')}), the options "
        f"are listed by `blockbert {task} --help`",
    )
    raise typer.Exit(2)


class PlanCommand(LazyEpilogCommand):
    """`blockbert plan`: the epilog of its help says what its overrides are and lists pre-training's config groups."""

    def make_epilog(self) -> str:
        groups = hydra_help("pretrain").split("\n\n", 1)[1]
        return (
            "**Arguments** are the planned run's overrides, as `blockbert pretrain` takes them (`key=value`, "
            "`group=option`); with `--command finetune`, as `blockbert finetune` does (its groups: `blockbert finetune "
            "--help`).\n\n" + groups
        )


SWEEP_HELP = (  # not HYDRA_HELP: a sweep is a multirun already, and takes none of Hydra's flags (-m, --cfg, --info)
    "**Arguments** are overrides for every job: `key=value`, `group=option` (`cluster=slurm` submits the jobs to "
    "SLURM); a comma list (`seed=0,1`), `range(...)`, `choice(...)` or `glob(...)` joins the grid, and a single value "
    "of a swept key replaces its values (`model.heads=3:1`). `--dry-run` lists the jobs and each one's command line "
    "(that command with `--cfg job` prints its config). `--dir DIR` continues the sweep in DIR: alone, with the "
    "overrides it was started with; other jobs are refused. Tab completion of overrides: "
    "`blockbert --install-completion`."
)

SWEEP_OVERRIDES = typer.Argument(
    None,
    metavar="OVERRIDES",
    help="Overrides for every job; comma lists join the grid (see below).",
    show_default=False,
    autocompletion=complete_overrides,
)


class SweepCommand(LazyEpilogCommand):
    """`blockbert sweep`: the epilog of its help says what its arguments are (:data:`SWEEP_HELP`) and lists the sweeps
    in sweeps/."""

    def make_epilog(self) -> str:
        from blockbert.experiments.sweep_plan import available

        return SWEEP_HELP + "\n\n**Sweeps** (`sweeps/`): " + " | ".join(available())


def hand_over(ctx: typer.Context, overrides: list[str] | None, debug: bool) -> None:
    task, overrides = ctx.command.name, list(overrides or ())
    refuse_unknown_options(ctx, overrides, hydra_flags=True)
    if any(arg.split("=")[0] in SHELL_COMPLETION_FLAGS for arg in overrides):
        print_error(
            task,
            "Hydra's shell completion does not apply to the blockbert command: "
            "install blockbert's own with `blockbert --install-completion` (it completes overrides too)",
        )
        raise typer.Exit(2)
    from blockbert.app.launch import run_task

    raise typer.Exit(run_task(task, overrides, debug))


@app.command(cls=HydraCommand, context_settings=HYDRA_ARGS)
def pretrain(ctx: typer.Context, overrides: list[str] = OVERRIDES, debug: bool = DEBUG) -> None:
    """Pre-train a model with masked-LM (and next-sentence prediction for google_bert/roberta_2seq).

    With no arguments: a tiny BlockBert on a generated corpus, on the CPU, in about a minute.
    Results (config, checkpoints, logs, metrics.json) go to a run directory printed as the last line.

    Example: `blockbert pretrain experiment=blockbert_n2_1024 data=wiki_book trainer=ddp`
    """
    hand_over(ctx, overrides, debug)


@app.command(cls=HydraCommand, context_settings=HYDRA_ARGS)
def finetune(ctx: typer.Context, overrides: list[str] = OVERRIDES, debug: bool = DEBUG) -> None:
    """Fine-tune a pre-trained checkpoint on extractive question answering (SQuAD, MRQA).

    With no arguments: the tiny model, from scratch, on a generated SQuAD-format set, on the CPU.
    Writes dev (and test) predictions.json, nbest_predictions.json (and null_odds.json for SQuAD 2.0)
    and metrics.json with EM/F1 to the run directory printed as the last line.

    Example: `blockbert finetune experiment=blockbert_n2_512 init_from=runs/pretrain/RUN task=squad11
    task.train_file=train-v1.1.json task.dev_file=dev-v1.1.json`
    """
    hand_over(ctx, overrides, debug)


@app.command(cls=SweepCommand, context_settings=HYDRA_ARGS)
def sweep(
    ctx: typer.Context,
    name: str = typer.Argument(
        ...,
        metavar="NAME",
        help="A sweep from sweeps/ (listed below) or a path to a sweep .yaml file.",
        autocompletion=complete_sweep_name,
    ),
    overrides: list[str] = SWEEP_OVERRIDES,
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="List the jobs, the launcher's resolved settings (cluster=slurm) and each job's command line; "
        "run and submit nothing.",
    ),
    directory: str = typer.Option(
        None,
        "--dir",
        help="Sweep directory; give an earlier one to resume its grid (complete jobs are skipped; given alone, "
        "with the overrides it was started with).",
    ),
    wandb_config: bool = typer.Option(False, "--wandb-config", help="Print the same grid as a W&B sweep file."),
    source: str = typer.Option(
        None, "--from", help="finetune_each: the pre-training sweep directory whose finished jobs are fine-tuned."
    ),
    config_dir: str = CONFIG_DIR,
    debug: bool = DEBUG,
) -> None:
    """Run a sweep from sweeps/ (head assignments, fine-tuning grids, Table 2's rows) as a Hydra
    multirun, then summarise it (summary.csv, a table best first, a plot for head sweeps).

    Extra overrides apply to every job and replace the sweep file's own of the same key; Hydra's sweeps
    (`seed=0,1`, `seed=range(0,3)`, `choice(...)`, `glob(...)`) join the grid; `cluster=slurm`
    submits the jobs to SLURM. Every job's config is checked before the first starts (a bad value stops
    the sweep then); a job that fails as it runs is listed with its error and does not stop the others
    (the sweep exits non-zero after its summary, as a multirun with a failed job does).
    `finetune_each --from DIR` fine-tunes every finished job of the pre-training sweep in DIR.

    Example (laptop scale):
    `blockbert sweep heads_n2 experiment=tiny data=tiny_corpus trainer.max_steps=300 optim.schedule_steps=600`
    """
    refuse_unknown_options(ctx, list(overrides or ()), hydra_flags=False)
    from blockbert.app.commands.sweep import run_sweep

    raise typer.Exit(
        run_sweep(
            name,
            list(overrides or ()),
            dry_run,
            directory,
            wandb_config,
            source,
            debug_jobs=debug,
            config_dir=config_dir,
            debug=debug,
        )
    )


@app.command(cls=HydraCommand, context_settings=HYDRA_ARGS)
def profile(ctx: typer.Context, overrides: list[str] = OVERRIDES, debug: bool = DEBUG) -> None:
    """Break a training step's memory into model, optimizer and activation parts (Table 1).

    Fits activation = O(N) part + O(N²) part with the tokens per device fixed and prints Table 1's
    columns, with profile.json and profile.png in the run directory.

    Example: `blockbert profile attention_impl=eager seq_lengths='[128,256,512,1024]'`
    """
    hand_over(ctx, overrides, debug)


@app.command(cls=HydraCommand, context_settings=HYDRA_ARGS)
def benchmark(ctx: typer.Context, overrides: list[str] = OVERRIDES, debug: bool = DEBUG) -> None:
    """Time inference and training steps of the models side by side and report ratios (Tables 2, 5).

    Models (roberta_1seq, sparsebert, blockbert_n2/n3 and Hugging Face BERT/RoBERTa/BigBird), one attention
    layer (mode=attention), the layouts of padded batches (mode=layout), the data pipeline (mode=data), whole runs
    against the Hugging Face Trainer and a bare loop (mode=pretrain|finetune), or the plan's predictions against
    runs (mode=plan); median, spread and ratios measured in the same run; benchmark.json.

    Example: `blockbert benchmark mode=attention attention_seq_lengths='[1024,2048]'`
    """
    hand_over(ctx, overrides, debug)


@app.command(cls=PlanCommand, context_settings=HYDRA_ARGS)
def plan(
    ctx: typer.Context,
    overrides: list[str] = OVERRIDES,
    command: str = typer.Option(
        None, "--command", help="The command planned: pretrain (default) | finetune; with --sweep, the sweep's."
    ),
    gpus: int = typer.Option(None, "--gpus", help="Devices the run gets (default: the trainer's)."),
    gpu_memory: str = typer.Option(None, "--gpu-memory", help="Memory per device, e.g. 16GiB (default: the device's)."),
    gpu: str = typer.Option(
        None, "--gpu", help="Plan for this GPU kind from its calibration (e.g. H200) instead of measuring here."
    ),
    sweep: str = typer.Option(None, "--sweep", help="Plan every job of this sweep (sweeps/) and total the grid."),
    calibrate: bool = typer.Option(
        False,
        "--calibrate",
        help="Fit and time, on this device, the paper's pre-training rows (or the run the overrides give): a "
        "calibration to plan for this GPU elsewhere (--gpu).",
    ),
    source: str = typer.Option(
        None, "--from", help="With --sweep finetune_each: the pre-training sweep directory whose jobs are planned."
    ),
    out: str = typer.Option(None, "--out", help="Directory for plan.json (default: runs/plan/DATE_TIME)."),
    config_dir: str = CONFIG_DIR,
    debug: bool = DEBUG,
) -> None:
    """Before a run: its memory per device (weights, gradients, AdamW states, O(N) and O(N²) activations), whether
    it fits and the largest per-device batch that does, the batch arithmetic, and seconds per step and device-hours.

    Composes the run's config exactly as `pretrain`/`finetune` would (same overrides). The memory and time
    coefficients are fitted on this device in seconds (the model cut to 1 and 2 layers) and kept for next time;
    `--gpu NAME` uses a calibration measured on that GPU with `--calibrate`. Prints a table; plan.json holds it.

    Example: `blockbert plan experiment=blockbert_n2_1024 trainer=ddp --gpus 32 --gpu-memory 16GiB`
    """
    refuse_unknown_options(ctx, list(overrides or ()), hydra_flags=False)
    from blockbert.app.commands.plan import run_plan

    raise typer.Exit(
        run_plan(
            list(overrides or ()),
            command,
            gpus,
            gpu_memory,
            gpu,
            sweep,
            calibrate,
            out,
            source=source,
            config_dir=config_dir,
            debug=debug,
        )
    )


@app.command()
def evaluate(
    data_file: str = typer.Argument(
        ..., metavar="DATA_FILE", help="Gold data: SQuAD JSON (.json, .json.gz) or MRQA .jsonl/.jsonl.gz."
    ),
    predictions_file: str = typer.Argument(
        ..., metavar="PREDICTIONS_FILE", help="Predictions: JSON {question id: answer text}."
    ),
    na_prob: str = typer.Option(None, "--na-prob", help="SQuAD 2.0: JSON {id: no-answer score} for best_* thresholds."),
    format: str = typer.Option(None, "--format", help="squad1 | squad2 | mrqa (detected from the file if not given)."),
    debug: bool = DEBUG,
) -> None:
    """Score QA predictions exactly as the official SQuAD 1.1/2.0 and MRQA scripts do; print their JSON.

    Example: `blockbert evaluate dev-v2.0.json predictions.json --na-prob null_odds.json`
    """
    from blockbert.app.commands.evaluate import run_evaluate

    raise typer.Exit(run_evaluate(data_file, predictions_file, na_prob, format, debug=debug))


@app.command()
def export(
    run_dir: str = typer.Argument(
        ..., metavar="RUN_DIR", help="A `blockbert pretrain` or `finetune` run directory (or a .ckpt file)."
    ),
    out_dir: str = typer.Argument(
        ..., metavar="OUT_DIR", help="The directory to write: new or empty, unless --overwrite."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into OUT_DIR even if it holds files."),
    debug: bool = DEBUG,
) -> None:
    """Export a run's model: a Hugging Face directory for dense models (loadable by `transformers`),
    a blockbert directory for block and sparse ones (`BlockBertModel.from_pretrained`).

    Example: `blockbert export runs/pretrain/2026-11-29_10-00-00 exported/`
    """
    from blockbert.app.commands.export import run_export

    raise typer.Exit(run_export(run_dir, out_dir, overwrite, debug=debug))


REPORT_DIRECTORIES = typer.Argument(
    ...,
    metavar="DIRECTORY",
    help="A sweep or multirun directory; with --paper one or more run directories (pretrain, finetune, profile, "
    "benchmark) or sweep/multirun directories of them (their finished jobs).",
    show_default=False,
)


@app.command()
def report(
    directories: list[str] = REPORT_DIRECTORIES,
    paper: bool = typer.Option(
        False,
        "--paper",
        help="Set each run beside the paper's numbers (Tables 1-5, blockbert/experiments/paper_numbers.yaml): ours, "
        "the paper's, the ratio and the settings (hardware, scale, corpus); rows with no paper row are listed as "
        "unmatched.",
    ),
    out: str = typer.Option(
        None, "--out", help="--paper: the directory for paper_report.md/.csv/.png (default: the first directory given)."
    ),
    debug: bool = DEBUG,
) -> None:
    """Summarise a sweep or multirun directory: summary.csv, a table best first, and for head sweeps
    a plot like the paper's Figure 4.

    With `--paper`: the paper's number next to ours for every row of the run directories given -- pre-training
    (Table 2), fine-tuning (Tables 3, 4), profile (Table 1), benchmark (Table 5) -- with ours/paper and each
    table's setting difference; paper_report.md, .csv and .png go to `--out` (default: the first directory).

    Example: `blockbert report multirun/sweeps/heads_n2/2026-11-29_10-00-00`, or
    `blockbert report --paper runs/pretrain/RUN runs/finetune/RUN --out paper/`
    """
    from blockbert.app.commands.report import run_paper_report, run_report

    if paper:
        raise typer.Exit(run_paper_report(directories, out, debug=debug))
    raise typer.Exit(run_report(directories, out, debug=debug))


# click's exception for a command line it cannot parse, reached through typer's public BadParameter (recent typers
# carry click as a private module: typer._click in 0.29)
CLICK_EXCEPTION = next(k for k in typer.BadParameter.__mro__ if k.__name__ == "ClickException")


def usage_error(err: Exception) -> int:
    """A command line click refused (an unknown command or option, a missing argument) in the one line every error
    of the command ends with, with the usage; returns the exit code (2). `blockbert` alone shows the help."""
    ctx = getattr(err, "ctx", None) or context_of(sys.argv[1:])  # click gives none for an option's missing value
    if type(err).__name__ == "NoArgsIsHelpError":
        print(err.format_message(), end="", file=sys.stderr)  # the help (with rich, printed as it was formatted)
        return err.exit_code
    message = err.format_message().strip().rstrip(".")
    message = message[:1].lower() + message[1:] if message[1:2].islower() else message
    usage = " ".join(ctx.get_usage().split())  # "Usage: blockbert export [OPTIONS] {RUN_DIR} {OUT_DIR}"
    message += f" ({usage[:1].lower()}{usage[1:]}; the options are listed by `{ctx.command_path} --help`)"
    print_error(ctx.command_path.partition(" ")[2], message)
    return err.exit_code


def context_of(argv: list[str]) -> typer.Context:
    """The context of the command ``argv`` names (``blockbert evaluate ...``), or the command line's own."""
    group = typer.main.get_command(app)
    root = typer.Context(group, info_name="blockbert")
    name = next((word for word in argv if not word.startswith("-")), None)
    command = group.get_command(root, name) if name else None
    return typer.Context(command, info_name=name, parent=root) if command else root


def main() -> None:
    if os.environ.get("BLOCKBERT_DDP_JOB") and "LOCAL_RANK" in os.environ:
        # a DDP rank Lightning started by re-running this command line: run only the job that started it
        from blockbert.app.launch import run_ddp_rank

        code = run_ddp_rank()
        if code is not None:
            sys.exit(code)
    try:  # not standalone: click's own display of a usage error is a box of several lines
        with SigtermRaises():  # a scheduler's SIGTERM ends any command in one line (the long ones say where it stopped)
            code = app(prog_name="blockbert", standalone_mode=False)
    except Terminated:  # before a command's own handling of it (while it starts: imports, composing its config)
        print_interrupted(context_of(sys.argv[1:]).command_path.partition(" ")[2] or "", "stopped by SIGTERM")
        code = SIGTERM_EXIT_CODE
    except CLICK_EXCEPTION as err:
        code = usage_error(err)
    except typer.Abort:  # a typer before 0.13 turns Ctrl-C into Abort (later ones into exit code 130); we never prompt
        print("Aborted!", file=sys.stderr)
        code = SIGINT_EXIT_CODE
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    sys.exit(main())
