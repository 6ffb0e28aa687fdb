"""Runs that survive faults, with the logger users get by default (W&B offline).

The fault matrices interrupt one run again and again (SIGTERM and SIGKILL at seeded random moments) and
check that it ends exactly where an uninterrupted run ends: the same step, the same weights (so the
same data order, masks, dropout and optimizer state), at most one checkpoint interval lost to a SIGKILL.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

from blockbert.errors import ConfigError
from blockbert.formats.run_dir import RunDir
from blockbert.train.resilience import AtomicCheckpointIO, resume_checkpoint, run_lock

PRETRAIN = [
    "progress_bar=false",
    "data.generated_documents=60",
    "optim.warmup_steps=2",
    "tokens_per_batch=2048",
    "data.per_device_batch_size=4",
    "trainer.val_check_interval=5",
    "checkpoint_every_n_steps=5",
]
FINETUNE = [
    "progress_bar=false",
    "task.generated_questions=96",
    "optim.batch_size=8",
    "data.per_device_batch_size=4",
    "data.max_seq_length=64",
    "trainer.max_epochs=10",
    "checkpoint_every_n_steps=5",
    "trainer.max_steps=-1",
]
SIGTERM_EXIT = 143


def env_for(tmp_path):
    return dict(
        os.environ,
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        BLOCKBERT_CACHE=str(tmp_path / "cache"),
        PYTHONUNBUFFERED="1",
    )


OFFLINE = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}  # the default logger, as users run it


@pytest.fixture(scope="session")
def run(blockbert):
    """The command with W&B offline."""
    return lambda tmp_path, *args, check=True: blockbert(tmp_path, *args, check=check, env=OFFLINE)


def weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def metrics(run_dir):
    path = run_dir / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def interrupt(tmp_path, command, args, run_dir, sig, rng, after_step):
    """Start the run, wait until it has trained past ``after_step``, then send ``sig`` at a random moment."""
    with open(tmp_path / "stdout", "w+") as stdout, open(tmp_path / "stderr", "w+") as stderr:
        proc = subprocess.Popen(
            ["blockbert", command, *args],
            cwd=tmp_path,
            env=env_for(tmp_path),
            stdout=stdout,
            stderr=stderr,
            text=True,
            # Ctrl-C as a terminal delivers it: a pytest started in the background (`pytest &`) ignores SIGINT, and
            # the run would inherit that and never see the signal (the cause of this test failing in such runs)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.time() + 300
        while metrics(run_dir).get("step", -1) <= after_step and proc.poll() is None:
            assert time.time() < deadline, "the run made no progress"
            time.sleep(0.1)
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(sig)
        proc.wait(timeout=300)
        stdout.seek(0)
        stderr.seek(0)
        return proc.returncode, stdout.read(), stderr.read()


def resumed_step(output: str) -> int:
    return int(re.search(r"resuming from \S+ \(step (\d+)\)", output).group(1))


def fault_matrix(run, tmp_path, command, args, interval):
    reference = tmp_path / "uninterrupted"
    run(tmp_path, command, *args, f"hydra.run.dir={reference}")
    final_step = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    run_dir = tmp_path / "interrupted"
    argv = [*args, f"hydra.run.dir={run_dir}"]
    rng = random.Random(13)
    last_seen, interruptions = -1, 0
    for sig in [signal.SIGTERM, signal.SIGKILL] * 2:  # each launch resumes where the last one stopped
        code, stdout, stderr = interrupt(tmp_path, command, argv, run_dir, sig, rng, last_seen)
        if interruptions:  # a SIGKILL loses at most one checkpoint interval
            assert resumed_step(stdout + stderr) >= last_seen - interval
        if code == 0:  # it finished before the signal came
            break
        interruptions += 1
        last_seen = metrics(run_dir).get("step", -1)  # the progress recorded when it stopped
        if sig == signal.SIGTERM and code == -signal.SIGTERM:
            assert "`Trainer.fit` stopped" in stderr  # after training (final evaluation): nothing to save
        elif sig == signal.SIGTERM:
            assert code == SIGTERM_EXIT, stderr[-3000:]
            assert f"blockbert {command}: interrupted: stopped by SIGTERM" in stderr
            assert stdout.strip().splitlines()[-1] == str(run_dir.resolve())
            assert metrics(run_dir)["status"] == "interrupted"
        else:
            assert code == -signal.SIGKILL
    else:
        out = run(tmp_path, command, *argv)
        assert resumed_step(out.stdout + out.stderr) >= last_seen - interval
    assert interruptions >= 3  # the draws really interrupted the run
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == final_step
    ours, theirs = weights(run_dir), weights(reference)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    assert metrics(run_dir)["status"] == "finished" and metrics(run_dir)["step"] == final_step
    assert not list((run_dir / "checkpoints").glob("*-v[0-9]*.ckpt"))  # no duplicated checkpoints
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    pieces = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(pieces) >= 2 and all(p.name.endswith(run_id) for p in pieces)  # one W&B run, resumed


@pytest.mark.slow
def test_pretrain_fault_matrix_ends_as_an_uninterrupted_run(run, tmp_path):
    fault_matrix(run, tmp_path, "pretrain", [*PRETRAIN, "trainer.max_steps=40"], 5)  # 4 micro-batches a step


@pytest.mark.slow
def test_finetune_fault_matrix_ends_as_an_uninterrupted_run(run, tmp_path):
    fault_matrix(run, tmp_path, "finetune", [*FINETUNE, "trainer.max_epochs=6"], 5)  # 2 micro-batches a step


# The run with one SIGTERM sent to itself at a chosen moment (SIGTERM_AT: a condition on the trainer), which
# random timing hits rarely.
SIGTERM_AT = """
import os, signal, sys
import pytorch_lightning as pl
from blockbert.train import resilience

class SigtermAt(pl.Callback):
    def on_train_batch_end(self, trainer, *args):  # after the last training batch of the first epoch
        if os.environ["SIGTERM_AT"] in ("epoch-end", "twice") and trainer.current_epoch == 0 \\
                and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_validation_batch_start(self, trainer, *args):  # in the validation after training
        if os.environ["SIGTERM_AT"] == "closing-validation" and trainer.state.fn == "validate":
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_start(self, trainer, *args):  # Ctrl-C just after the optimizer's 3rd step, before Lightning counts it
        if os.environ["SIGTERM_AT"] == "ctrl-c-in-step":
            steps = []
            def after_step(optimizer, *_):
                steps.append(1)
                if len(steps) == 3:
                    os.kill(os.getpid(), signal.SIGINT)
            trainer.optimizers[0].register_step_post_hook(after_step)

close = resilience.finish_wandb
def finish_wandb(*args, **kwargs):  # "twice": a second SIGTERM while the stopped run closes W&B
    if os.environ["SIGTERM_AT"] == "twice":
        os.kill(os.getpid(), signal.SIGTERM)
    close(*args, **kwargs)
resilience.finish_wandb = finish_wandb

build = resilience.RunSafety.__init__
def with_sigterm(self, cfg, run_dir):
    build(self, cfg, run_dir)
    self.callbacks.append(SigtermAt())
resilience.RunSafety.__init__ = with_sigterm
from cli import main
main()
"""


def blockbert_with_sigterm(tmp_path, at, command, *args):
    return subprocess.run(
        [sys.executable, "-c", SIGTERM_AT, command, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=dict(env_for(tmp_path), SIGTERM_AT=at),
        timeout=600,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal has it (see interrupt())
    )


@pytest.mark.slow
def test_sigterm_between_epochs_resumes_exactly(run, tmp_path):
    """A state saved between two epochs resumes as the next epoch's start: same weights as an uninterrupted run
    (before the fix the resumed run's first epoch trained one batch and every accumulation after it shifted)."""
    args = [*PRETRAIN, "trainer.max_steps=8"]  # 16 micro-batches (4 steps) an epoch
    reference = tmp_path / "uninterrupted"
    run(tmp_path, "pretrain", *args, f"hydra.run.dir={reference}")
    run_dir = tmp_path / "interrupted"
    argv = [*args, f"hydra.run.dir={run_dir}"]
    out = blockbert_with_sigterm(tmp_path, "epoch-end", "pretrain", *argv)
    assert out.returncode == SIGTERM_EXIT, out.stderr[-3000:]
    out = run(tmp_path, "pretrain", *argv)
    assert resumed_step(out.stdout + out.stderr) > 0
    ours, theirs = weights(run_dir), weights(reference)
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)


def test_ctrl_c_inside_the_optimizer_step_resumes_exactly(run, tmp_path):
    """Ctrl-C between the optimizer's step and Lightning counting it is held until the micro-batch ends (before the
    fix the saved weights were a step ahead of the saved position: the resumed run trained one step off)."""
    args = [*PRETRAIN, "trainer.max_steps=6"]
    reference = tmp_path / "uninterrupted"
    run(tmp_path, "pretrain", *args, f"hydra.run.dir={reference}")
    run_dir = tmp_path / "interrupted"
    argv = [*args, f"hydra.run.dir={run_dir}"]
    out = blockbert_with_sigterm(tmp_path, "ctrl-c-in-step", "pretrain", *argv)
    assert out.returncode == 130, out.stderr[-3000:]
    assert "interrupted: stopped by Ctrl-C at step 3" in out.stderr
    out = run(tmp_path, "pretrain", *argv)
    assert resumed_step(out.stdout + out.stderr) == 3
    ours, theirs = weights(run_dir), weights(reference)
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)


def test_a_second_sigterm_while_the_run_closes_still_ends_in_the_interrupted_line(run, tmp_path):
    run_dir = tmp_path / "run"
    argv = [*PRETRAIN, "trainer.max_steps=8", f"hydra.run.dir={run_dir}"]
    out = blockbert_with_sigterm(tmp_path, "twice", "pretrain", *argv)
    assert out.returncode == SIGTERM_EXIT, out.stderr[-3000:]
    assert "blockbert pretrain: interrupted: stopped by SIGTERM at step 4" in out.stderr
    assert (run_dir / "checkpoints" / "interrupted.ckpt").is_file()


@pytest.mark.slow
def test_a_run_extended_after_stopping_mid_epoch_keeps_its_passes_aligned(run, tmp_path):
    """max_steps=8 ends in the middle of the second pass (3 micro-batches a step, 16 a pass); raised to 20, the run
    goes on with that pass and steps at the same micro-batches as an uninterrupted 20-step run (Lightning marks the
    cut epoch completed: its counters must not be taken for the start of a new one). The weights differ: the
    learning-rate schedule follows max_steps."""
    args = [*PRETRAIN, "tokens_per_batch=1536"]
    run(tmp_path, "pretrain", *args, "trainer.max_steps=20", f"hydra.run.dir={tmp_path / 'uninterrupted'}")
    run_dir = tmp_path / "extended"
    run(tmp_path, "pretrain", *args, "trainer.max_steps=8", f"hydra.run.dir={run_dir}")
    run(tmp_path, "pretrain", *args, "trainer.max_steps=20", f"hydra.run.dir={run_dir}")

    def progress(directory):
        state = torch.load(directory / "checkpoints" / "last.ckpt", weights_only=True)
        loops = state["loops"]["fit_loop"]
        return state["global_step"], loops["epoch_loop.batch_progress"]["total"]  # (Lightning's epoch count differs)

    assert progress(run_dir) == progress(tmp_path / "uninterrupted")


def test_sigterm_in_the_closing_validation_exits_143_and_the_rerun_records_it(run, tmp_path):
    run_dir = tmp_path / "run"
    # step 6: no periodic validation; several validation batches (Lightning stops between two, not after the last)
    argv = [*PRETRAIN, "trainer.max_steps=6", "data.validation_fraction=0.3", f"hydra.run.dir={run_dir}"]
    out = blockbert_with_sigterm(tmp_path, "closing-validation", "pretrain", *argv)
    assert out.returncode == SIGTERM_EXIT, out.stderr[-3000:]
    assert "interrupted: stopped by SIGTERM in the closing validation at step 6" in out.stderr
    assert metrics(run_dir)["status"] == "interrupted"
    run(tmp_path, "pretrain", *argv)  # nothing left to train: it validates the final state
    final = metrics(run_dir)
    assert final["status"] == "finished" and final["step"] == 6 and final["val/best_ppl_step"] == 6
    assert final["val/ppl"] == final["val/best_ppl"] or final["val/best_ppl"] < final["val/ppl"]
    assert "train/loss" in final  # the training metrics of the first run are kept


# The command with AdamW failing as the fit builds it: a failure inside training, before its first step.
FAIL_IN_FIT = """
import torch
def refuse(self, *args, **kwargs):
    raise RuntimeError("injected: AdamW cannot be built")
torch.optim.AdamW.__init__ = refuse
from cli import main
main()
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "command, args, first, more",
    [
        ("pretrain", PRETRAIN, "trainer.max_steps=10", "trainer.max_steps=15"),
        ("finetune", FINETUNE, "trainer.max_epochs=1", "trainer.max_epochs=2"),
    ],
)
def test_failed_resume_replaces_nothing(run, tmp_path, command, args, first, more):
    """A resume that fails before training (here AdamW, made to fail as the fit builds it; the run's own fit of its
    memory is stored already, so the check before the run builds none) reports the real error and leaves the
    checkpoints and metrics.json of the run as they were; the original .hydra/config.yaml is kept."""
    run_dir = tmp_path / "run"
    run(tmp_path, command, *args, first, f"hydra.run.dir={run_dir}")
    files = {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()}
    before = metrics(run_dir)
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    argv = [sys.executable, "-c", FAIL_IN_FIT, command, *args, more, f"hydra.run.dir={run_dir}"]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env_for(tmp_path), timeout=600)
    assert out.returncode == 1, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith(f"blockbert {command}: error:")]
    assert len(errors) == 1 and "injected: AdamW cannot be built" in errors[0], out.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()} == files
    after = metrics(run_dir)
    assert {k: v for k, v in after.items() if k not in ("status", "error")} == {
        k: v for k, v in before.items() if k != "status"
    }
    assert after["status"] == "failed" and "injected: AdamW cannot be built" in after["error"]
    assert (run_dir / ".hydra" / "config.yaml").read_text() == config  # the run's original config
    assert more in (run_dir / ".hydra" / "resume-1" / "overrides.yaml").read_text()
    out = run(tmp_path, command, *args, more, f"hydra.run.dir={run_dir}")  # it still resumes
    assert resumed_step(out.stdout + out.stderr) == before["step"] and metrics(run_dir)["step"] > before["step"]
    assert (run_dir / ".hydra" / "resume-2" / "overrides.yaml").is_file()


def test_ctrl_c_stops_with_130_and_the_run_resumes(run, tmp_path):
    run_dir = tmp_path / "run"
    argv = [*PRETRAIN, "trainer.max_steps=60", f"hydra.run.dir={run_dir}"]
    code, stdout, stderr = interrupt(tmp_path, "pretrain", argv, run_dir, signal.SIGINT, random.Random(1), 0)
    assert code == 130, stderr[-3000:]
    assert "blockbert pretrain: interrupted: stopped by Ctrl-C" in stderr
    assert stdout.strip().splitlines()[-1] == str(run_dir.resolve())
    assert metrics(run_dir)["status"] == "interrupted"
    out = run(tmp_path, "pretrain", *argv)
    assert resumed_step(out.stdout + out.stderr) > 0 and metrics(run_dir)["step"] == 60


def test_non_finite_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(run, tmp_path):
    run_dir = tmp_path / "run"
    out = run(
        tmp_path,
        "pretrain",
        *PRETRAIN,
        "trainer.max_steps=60",
        "trainer.precision=16-true",
        "optim.lr=1e-2",
        f"hydra.run.dir={run_dir}",
        check=False,
    )
    assert out.returncode == 1, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("blockbert pretrain: error:")]
    assert len(errors) == 1 and "16-true" in errors[0] and "not finite at step" in errors[0], errors
    assert metrics(run_dir)["status"] == "failed"
    assert not (run_dir / "checkpoints" / "interrupted.ckpt").exists()
    for path in (run_dir / "checkpoints").glob("*.ckpt"):
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path


def test_a_non_finite_loss_is_read_every_ten_steps_and_named_by_its_step(tmp_path):
    """The non-finite flag stays on the device (reading it every micro-batch would be a host sync a step on a GPU):
    a NaN loss at step 3 stops training at step 10's check, named by step 3, and nothing after it is saved."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from blockbert.errors import NonFiniteLossError
    from blockbert.train.resilience import NON_FINITE_CHECK_EVERY, ExceptionCheckpoint, RunGuard

    class NanAtStepThree(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            loss = self.layer(batch[0]).pow(2).mean()
            return loss * float("nan") if self.global_step == 2 else loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    guard = RunGuard(0, "32-true", run)
    saved = ExceptionCheckpoint(guard, run.checkpoints)
    trainer = pl.Trainer(callbacks=[guard, saved], logger=False, max_steps=30,
                         default_root_dir=tmp_path, enable_progress_bar=False)  # fmt: skip
    data = DataLoader(TensorDataset(torch.randn(80, 2)), batch_size=2)
    with pytest.raises(NonFiniteLossError, match="the training loss is not finite at step 3: training stopped"):
        trainer.fit(NanAtStepThree(), data)
    assert NON_FINITE_CHECK_EVERY == 10 and trainer.global_step == 10
    assert not saved.saved and not list(run.checkpoints.iterdir())


@contextmanager
def held_by_another_process(run_dir):
    """``run_dir``'s lock held by another process while the block runs; yields that process."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nfrom blockbert.formats.run_dir import RunDir\n"
            "from blockbert.train.resilience import run_lock\n"
            f"with run_lock(RunDir({str(run_dir)!r})):\n"
            "    print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_a_second_process_on_the_run_directory_is_refused(tmp_path):
    with held_by_another_process(tmp_path / "run") as holder:
        with pytest.raises(ConfigError, match=rf"in use by another blockbert process \(pid {holder.pid}"):
            with run_lock(RunDir(tmp_path / "run")):
                pass
    with run_lock(RunDir(tmp_path / "run")):  # free again once the holder is gone
        pass


def test_a_resume_with_another_micro_batch_is_refused_and_the_run_stays_as_it_was(run, tmp_path):
    """The data position counts the trained run's micro-batches: a resume reading another number of samples per
    micro-batch across its devices would read on from the wrong place. Refused in one line, nothing changed; the
    same command with the run's own batch then resumes."""
    run_dir = tmp_path / "run"
    run(tmp_path, "pretrain", *PRETRAIN, "trainer.max_steps=4", f"hydra.run.dir={run_dir}")
    kept = [p for p in run_dir.rglob("*") if p.is_file() and p.suffix not in (".log", ".lock")]  # the lock: a pid
    before = {p.relative_to(run_dir): p.read_bytes() for p in kept}
    changed = [*PRETRAIN, "data.per_device_batch_size=8", "trainer.max_steps=8", f"hydra.run.dir={run_dir}"]
    out = run(tmp_path, "pretrain", *changed, check=False)
    assert out.returncode == 2, out.stderr[-3000:]
    assert [line for line in out.stderr.splitlines() if ": error: " in line] == [
        "blockbert pretrain: error: this run cannot resume with micro-batches of 8 samples across its devices: it "
        "trained with 4 (per-device batch x devices), and its data position counts those; resume with the "
        "trainer.devices and per-device batch size it had"
    ]
    kept = [p for p in run_dir.rglob("*") if p.is_file() and p.suffix not in (".log", ".lock")]
    assert {p.relative_to(run_dir): p.read_bytes() for p in kept} == before  # no new W&B run, no resume-K config
    out = run(tmp_path, "pretrain", *PRETRAIN, "trainer.max_steps=8", f"hydra.run.dir={run_dir}")
    assert resumed_step(out.stdout + out.stderr) == 4


def test_a_resume_that_changes_the_run_is_refused_and_the_run_stays_as_it_was(run, blockbert, tmp_path):
    """Before: the checkpoint was loaded into whatever the command line built (other heads: silently; another width:
    a state_dict error), and the run's metrics.json was marked failed. A directory with no checkpoint (a job that
    failed before it trained) has nothing to resume and is not compared."""
    run_dir = tmp_path / "run"
    run(tmp_path, "pretrain", *PRETRAIN, "trainer.max_steps=4", f"hydra.run.dir={run_dir}")
    kept = [p for p in run_dir.rglob("*") if p.is_file() and p.suffix not in (".log", ".lock")]  # the lock: a pid
    before = {p.relative_to(run_dir): p.read_bytes() for p in kept}
    refusals = {
        ("model.heads=2:2", "model.layout=padded", "trainer.max_steps=8"): (
            f"resuming {run_dir} with model.heads='2:2' (the run has '3:1'): a resume continues the run as it was "
            "started; give the run's values, or a new hydra.run.dir for a new run"
        ),
        ("model.hidden_size=32", "seed=1", "data.max_seq_length=64", "trainer.max_steps=8"): (
            f"resuming {run_dir} with data.max_seq_length=64 (the run has 128), model.hidden_size=32 (the run has "
            "64), seed=1 (the run has 0): a resume continues"
        ),
        # before: accepted, and the checkpoint's optimizer state went on at the run's learning rate
        ("optim.lr=1e-4", "optim.weight_decay=0.1", "trainer.max_steps=8"): (
            f"resuming {run_dir} with optim.lr=0.0001 (the run has 0.001), optim.weight_decay=0.1 (the run has 0.01)"
        ),
    }
    imports = {"PYTHONPROFILEIMPORTTIME": "1"}  # Python lists every module it imports on stderr
    for changed, message in refusals.items():
        args = ("pretrain", *PRETRAIN, *changed, f"hydra.run.dir={run_dir}")
        out = blockbert(tmp_path, *args, check=False, env={**OFFLINE, **imports})
        assert out.returncode == 2, out.stderr[-3000:]
        errors = [line for line in out.stderr.splitlines() if ": error: " in line]
        assert len(errors) == 1 and errors[0].startswith(f"blockbert pretrain: error: {message}"), errors
        assert "pytorch_lightning" not in out.stderr  # refused before the training code is imported (seconds)
        kept = [p for p in run_dir.rglob("*") if p.is_file() and p.suffix not in (".log", ".lock")]
        assert {p.relative_to(run_dir): p.read_bytes() for p in kept} == before  # metrics.json still "finished"
    out = run(tmp_path, "pretrain", *PRETRAIN, "trainer.max_steps=6", "model.layout=padded", f"hydra.run.dir={run_dir}")
    assert resumed_step(out.stdout + out.stderr) == 4 and metrics(run_dir)["step"] == 6
    run(tmp_path, "pretrain", *PRETRAIN, "trainer.max_steps=6", f"hydra.run.dir={run_dir}")  # finished: validates again
    assert metrics(run_dir)["step"] == 6 and metrics(run_dir)["status"] == "finished"
    shutil.rmtree(run_dir / "checkpoints")  # nothing to resume: another run may start here
    run(tmp_path, "pretrain", *PRETRAIN, "trainer.max_steps=2", "model.heads=2:2", f"hydra.run.dir={run_dir}")


def test_a_new_run_refused_as_it_starts_leaves_no_run_directory(run, tmp_path):
    """Before: its .hydra, log and lock stayed (and a fine-tuning run's tokenizer and W&B id)."""
    out = run(tmp_path, "pretrain", *PRETRAIN, "data=text_files", "data.files=corpus/*.txt", check=False)
    assert out.returncode == 2 and "data.files: no file matches 'corpus/*.txt'" in out.stderr
    out = run(tmp_path, "finetune", *FINETUNE, "ckpt_path=nope.ckpt", check=False)
    assert out.returncode == 2 and "ckpt_path='nope.ckpt': no such checkpoint file" in out.stderr
    assert not list(tmp_path.glob("runs/*/*"))


def test_a_refused_run_leaves_no_trace_in_the_directory_in_use(run, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 0\n")  # a run that trains there already
    (run_dir / "pretrain.log").write_text("its log\n")
    with held_by_another_process(run_dir) as holder:
        before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
        out = run(tmp_path, "pretrain", *PRETRAIN, f"hydra.run.dir={run_dir}", check=False)
        assert out.returncode == 2 and f"in use by another blockbert process (pid {holder.pid}" in out.stderr
        assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before
        assert (run_dir / "pretrain.log").read_text() == "its log\n"


def test_atomic_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    """A kill in the middle of writing the file (simulated: half the bytes, then an exception) leaves the
    previous checkpoint intact; Lightning's own IO writes over the file in place."""
    from lightning_fabric.plugins.io import torch_io

    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    def killed_mid_write(checkpoint, filepath):
        with open(filepath, "wb") as handle:
            handle.write(before[: len(before) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(torch_io, "_atomic_save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    with pytest.raises(KeyboardInterrupt):  # the same kill with Lightning's IO damages the file
        torch_io.TorchCheckpointIO().save_checkpoint({"global_step": 2}, path)
    assert path.read_bytes() != before


def save(path: Path, step: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {"w": torch.ones(2)}}, path)


def test_resume_picks_the_newest_step_and_skips_a_corrupt_last_checkpoint(tmp_path, caplog):
    run_dir = tmp_path / "run"
    assert resume_checkpoint(None, RunDir(run_dir)) is None
    save(run_dir / "checkpoints" / "step-10.ckpt", 10)
    save(run_dir / "checkpoints" / "interrupted.ckpt", 7)  # older, though written later
    save(run_dir / "hpc_ckpt_1.ckpt", 9)
    assert resume_checkpoint(None, RunDir(run_dir)) == str(run_dir / "checkpoints" / "step-10.ckpt")
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    with caplog.at_level("WARNING"):
        assert resume_checkpoint(None, RunDir(run_dir)) == str(run_dir / "checkpoints" / "step-10.ckpt")
    warning = next(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "last.ckpt" in warning and "step-10.ckpt" in warning


@pytest.mark.slow
def test_a_stop_reaches_the_whole_multirun_and_says_how_to_resume_it(run, tmp_path):
    """SIGTERM in job 0 of `pretrain -m seed=0,1`: job 0 saves its state, job 1 never starts, the command exits 143
    naming the sweep directory to resume in; the same command there resumes job 0 and runs job 1."""
    sweep_dir = tmp_path / "multi"
    argv = ["-m", "seed=0,1", *PRETRAIN, "trainer.max_steps=5", f"hydra.sweep.dir={sweep_dir}"]  # stopped at 4
    out = blockbert_with_sigterm(tmp_path, "epoch-end", "pretrain", *argv)
    assert out.returncode == SIGTERM_EXIT, out.stderr[-3000:]
    line = next(line for line in out.stderr.splitlines() if "interrupted:" in line)
    assert f"run the same command with hydra.sweep.dir={sweep_dir} to resume the multirun" in line
    # the checkpoint's directory is the job's, not the one printed last (before: only checkpoints/interrupted.ckpt)
    assert f"checkpoints/interrupted.ckpt (in the job's directory, {(sweep_dir / '0').resolve()})" in line
    assert out.stdout.strip().splitlines()[-1] == str(sweep_dir.resolve())
    assert (sweep_dir / "0" / "checkpoints" / "interrupted.ckpt").is_file() and not (sweep_dir / "1").exists()
    again = run(tmp_path, "pretrain", *argv)
    assert resumed_step(again.stdout + again.stderr) > 0
    assert all(metrics(sweep_dir / job)["status"] == "finished" for job in ("0", "1"))


@pytest.mark.slow
def test_a_stop_reaches_the_whole_sweep_and_names_the_sweep_to_resume(run, tmp_path):
    spec = tmp_path / "two.yaml"
    spec.write_text(yaml.safe_dump({"command": "pretrain", "metric": "val/ppl", "parameters": {"seed": [0, 1]}}))
    sweep_dir = tmp_path / "sweep"
    argv = [str(spec), *PRETRAIN, "trainer.max_steps=5", "--dir", str(sweep_dir)]
    out = blockbert_with_sigterm(tmp_path, "epoch-end", "sweep", *argv)
    assert out.returncode == SIGTERM_EXIT, out.stderr[-3000:]
    line = next(line for line in out.stderr.splitlines() if "interrupted:" in line)
    assert f"--dir {sweep_dir} to resume the sweep (complete jobs are skipped)" in line and "blockbert sweep" in line
    assert line.startswith("blockbert sweep: interrupted: stopped by SIGTERM")  # was "blockbert pretrain: ..."
    assert not (sweep_dir / "1").exists() and not (sweep_dir / "summary.csv").exists()


def test_ctrl_c_before_a_multirun_job_trains_ends_in_the_interrupted_line(tmp_path, monkeypatch, capsys):
    """Ctrl-C while job 0 of a multirun prepares its data (before training's own handler is set): exit 130 and the
    interrupted line naming the sweep directory to resume in; job 1 never starts."""
    from blockbert.app import launch

    started = []

    def entry_point(task):
        def main(cfg):
            started.append(cfg.seed)
            raise KeyboardInterrupt

        main.__module__ = launch.ENTRY_POINTS[task]
        return main

    monkeypatch.setattr(launch, "_entry_point", entry_point)
    sweep_dir = tmp_path / "multi"
    code = launch.run_task("pretrain", ["-m", "seed=0,1", "logger=none", f"hydra.sweep.dir={sweep_dir}"])
    err = capsys.readouterr().err
    assert code == 130, err[-3000:]
    line = next(line for line in err.splitlines() if "interrupted:" in line)
    assert "stopped by Ctrl-C in job 0 before it trained" in line
    assert f"run the same command with hydra.sweep.dir={sweep_dir} to resume the multirun" in line
    assert started == [0]


def test_a_resume_from_a_checkpoint_file_keeps_its_optimizer_settings(run, blockbert, tmp_path):
    """Before: `ckpt_path=FILE optim.lr=...` in a new directory recorded the new rate in its config and trained at the
    checkpoint's, which its optimizer state restored."""
    run(tmp_path, "pretrain", *PRETRAIN, "trainer.max_steps=4", f"hydra.run.dir={tmp_path / 'run'}")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    args = ("pretrain", *PRETRAIN, "trainer.max_steps=6", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'other'}")
    out = blockbert(tmp_path, *args, "optim.lr=1e-4", check=False, env=OFFLINE)
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.splitlines()[-1] == (
        f"blockbert pretrain: error: ckpt_path={ckpt} continues that checkpoint's optimizer, and the command line "
        "gives optim.lr=0.0001 (the checkpoint has 0.001): its optimizer state would override them; give the "
        "checkpoint's values"
    )
    assert not (tmp_path / "other").exists()
    out = run(tmp_path, *args)  # its own values: it resumes
    assert resumed_step(out.stdout + out.stderr) == 4 and metrics(tmp_path / "other")["step"] == 6


def test_a_run_started_with_relative_paths_resumes_from_another_directory(blockbert, tmp_path):
    """Before: a run started with data.files=corpus.txt was refused from any other directory, with the absolute path
    too ("data.files='/abs/corpus.txt' (the run has 'corpus.txt')"). A path naming the same file is the same data; the
    same name for another file is refused, saying where each is (before: read silently)."""
    first, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    for directory in (first, elsewhere):
        directory.mkdir()
    words = "the river runs past the old mill and the children watch the boats go by".split()
    documents = [" ".join(words[i % 7 :] + words[: i % 7]) * 3 for i in range(60)]
    (first / "corpus.txt").write_text("\n\n".join(documents) + "\n")
    run_dir = tmp_path / "run"
    args = [*PRETRAIN, "data=text_files", "logger=csv", f"hydra.run.dir={run_dir}"]
    blockbert(first, "pretrain", *args, "data.files=corpus.txt", "trainer.max_steps=2")
    out = blockbert(elsewhere, "pretrain", *args, f"data.files={first / 'corpus.txt'}", "trainer.max_steps=4")
    assert resumed_step(out.stdout + out.stderr) == 2 and metrics(run_dir)["step"] == 4
    (elsewhere / "corpus.txt").write_text((first / "corpus.txt").read_text())  # another file, the same text
    out = blockbert(elsewhere, "pretrain", *args, "data.files=corpus.txt", "trainer.max_steps=6", check=False)
    assert out.returncode == 2, out.stderr[-3000:]
    assert f"with data.files='corpus.txt' in {elsewhere} (the run has 'corpus.txt' in {first}): a resume" in out.stderr
    from blockbert.app.run_config import _changed

    assert not _changed("data.files", "corpus.txt", "./corpus.txt", (first, first))  # another spelling, one file
    moved = (tmp_path / "gone", elsewhere)  # the run's first directory moved away: the names compare as written
    assert not _changed("data.files", "corpus.txt", "corpus.txt", moved)
    assert _changed("data.files", "corpus.txt", "other.txt", moved)
    hub = (first, elsewhere)  # a hub model's name, no local path on either side
    assert not _changed("model.init_from", "google-bert/bert-base-uncased", "google-bert/bert-base-uncased", hub)
    (first / "train").mkdir(), (elsewhere / "train").mkdir()  # folders named as data.tokenizer's word
    assert not _changed("data.tokenizer", "train", "train", hub)
