"""What a user reads: a default run (W&B offline, progress bar on) prints no misleading notice, counts steps,
and Lightning's own messages (restore, stop reason) reach the run's log file."""

import glob
import os

import pytest

MISLEADING = (
    "Epoch 0/-2",  # the progress bar of a step-bounded run
    "/-2",
    "limit_val_batches",  # Lightning's notice about a value we set to "all"
    "LeafSpec",  # Lightning's deprecation warning under torch 2.13
    "Tip: For seamless",  # Lightning's LitLogger advertisement
    "anonymous setting",  # W&B's warning on the argument Lightning always passes
    "Total FLOPs: 0",  # Lightning's summary without an example input
    "save_last",
    "weights_only",
    "You have overridden `on_before_batch_transfer`",  # Lightning on our token count (no data module has it)
    "to estimate number of stepping batches",  # Lightning reading the loader to count steps: our bar shows them
)


@pytest.fixture(scope="session")
def pretrain(blockbert):
    """`blockbert pretrain` with the default logger (W&B offline): what it prints, stdout and stderr."""

    def run(tmp_path, *args):
        run_dir = f"hydra.run.dir={tmp_path / 'run'}"
        user = {key: value for key, value in os.environ.items() if key != "WANDB_SILENT"}  # the suite's: not a user's
        environ = {**user, "WANDB_MODE": "offline", "BLOCKBERT_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
        done = blockbert(tmp_path, "pretrain", run_dir, *args, environ=environ)
        return done.stdout + done.stderr

    return run


def test_a_default_run_and_its_resume_print_nothing_misleading(pretrain, tmp_path):
    first = pretrain(tmp_path, "trainer.max_steps=4")
    resumed = pretrain(tmp_path, "trainer.max_steps=6")
    for text in (first, resumed):
        shown = [notice for notice in MISLEADING if notice in text]
        assert not shown, shown
        assert "model: BlockBertForMaskedLM, 0.13 M parameters, 2 layers" in text
    assert "optimizer steps" in first and " 4/4 " in first and " 6/6 " in resumed  # the bar counts optimizer steps
    for text in (first, resumed):  # W&B's closing history and summary repeat ours: left out, its sync command kept
        assert "Run history:" not in text and "Run summary:" not in text
        assert f"W&B (offline): wandb sync {tmp_path / 'run' / 'wandb' / 'offline-run-'}" in text
    synced = next(line for line in resumed.splitlines() if line.startswith("W&B (offline): wandb sync "))
    assert len(glob.glob(synced.split()[-1])) == 2  # the resumed run's pieces, both (before: the last one)
    log = (tmp_path / "run" / "pretrain.log").read_text()  # Hydra names it after the job
    assert "Restoring states from the checkpoint path" in log and "`Trainer.fit` stopped: `max_steps=6` reached" in log


def test_lightnings_notes_that_concern_no_user_are_dropped_from_its_log(caplog):
    import logging

    import blockbert.train  # noqa: F401 -- its import installs the filter

    lightning = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger=lightning.name):
        lightning.info("Loading `train_dataloader` to estimate number of stepping batches.")
        lightning.info("`Trainer.fit` stopped: `max_steps=6` reached.")
    assert [record.getMessage() for record in caplog.records] == ["`Trainer.fit` stopped: `max_steps=6` reached."]
