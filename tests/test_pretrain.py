"""Pre-training end to end on the CPU at tiny scale: metrics, checkpoints, resume, interruption."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from hydra import compose, initialize_config_dir

from blockbert.data.pretrain_datamodule import PretrainDataModule
from blockbert.paths import config_dir

TINY = [
    "progress_bar=false",
    "data.generated_documents=60",
    "trainer.val_check_interval=4",
    "checkpoint_every_n_steps=4",
    "optim.warmup_steps=2",
]


@pytest.fixture(scope="session")
def run(blockbert):
    """`blockbert pretrain` with the tiny settings and a CSV logger (``logger``)."""

    def pretrain(tmp_path, *args, logger="csv", **kwargs):
        return blockbert(tmp_path, "pretrain", *TINY, f"logger={logger}", *args, **kwargs)

    return pretrain


def test_pretrain_writes_metrics_checkpoints_and_resumes(run, tmp_path):
    run_dir = tmp_path / "run"
    odd = "data.generated_documents=40"  # 42 sequences: 5 micro-batches a pass, half a step left at its end
    out = run(tmp_path, odd, "trainer.max_steps=8", "checkpoint_keep=-1", f"hydra.run.dir={run_dir}")
    assert out.stdout.strip().splitlines()[-1] == str(run_dir.resolve())
    assert "smaller than the logging interval" not in out.stderr  # Lightning's advice: it logs across epochs anyway
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 8 and metrics["status"] == "finished"
    assert (
        metrics["val/ppl"] > 1
        and abs(metrics["val/ppl"] - torch.tensor(metrics["val/loss"]).exp()) < 1e-3 * metrics["val/ppl"]
    )
    assert metrics["train/tokens_per_s"] > 0
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "checkpoints" / "step-8.ckpt").is_file()
    assert (run_dir / "csv").is_dir() and (run_dir / "tokenizer" / "tokenizer.json").is_file()
    first = torch.load(run_dir / "checkpoints" / "step-4.ckpt", weights_only=False)
    periodic_bytes = (run_dir / "checkpoints" / "step-4.ckpt").read_bytes()

    assert "matrix products at precision" not in out.stdout + out.stderr  # PyTorch's default, unchanged
    out = run(
        tmp_path, odd, "trainer.max_steps=12", "checkpoint_keep=-1", f"hydra.run.dir={run_dir}", "matmul_precision=high"
    )
    assert "resuming from" in out.stderr + out.stdout
    assert "float32 matrix products at precision 'high' (matmul_precision)" in out.stdout + out.stderr
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 12
    assert last["lr_schedulers"][0]["last_epoch"] == 12  # scheduler and optimizer continued, not restarted
    assert all(state["step"] == 12 for state in last["optimizer_states"][0]["state"].values())
    # micro-batches of 8, 2 per optimizer step; each pass over the S sequences uses S // 16 whole steps
    size = int(re.search(r"pre-training data: (\d+) train", out.stdout + out.stderr).group(1))

    def position(steps):
        return steps // (size // 16) * size + steps % (size // 16) * 16

    assert first["PretrainDataModule"]["samples_consumed"] == position(4)
    assert last["PretrainDataModule"]["samples_consumed"] == position(12)
    assert (run_dir / "checkpoints" / "step-4.ckpt").read_bytes() == periodic_bytes  # nothing overwritten
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == 12
    # validations every 4 optimizer steps, logged at the steps taken (Lightning's own step is one less); before, a
    # pass of an odd number of micro-batches ended in a step of half a batch, and validation drifted off the steps
    assert size // 8 % 2 == 1, "the corpus must leave half a step at the end of a pass for this check"
    logged = [row for f in sorted((run_dir / "csv").glob("version_*/metrics.csv")) for row in csv.DictReader(f.open())]
    validations = [row for row in logged if row.get("val/ppl")]
    assert [int(row["step"]) for row in validations] == [4, 8, 12]
    assert [int(float(row["epoch"])) for row in validations] == [(step - 1) // (size // 16) for step in (4, 8, 12)]


def test_periodic_checkpoints_are_named_by_their_own_step(run, tmp_path):
    """Validation logs ``step`` (the loggers' x-axis) and Lightning names a checkpoint by a logged ``step`` if there is
    one: the step-9 checkpoint, saved mid-pass after the step-6 validation, was written as step-6-v1.ckpt."""
    run_dir = tmp_path / "run"
    overrides = ["data.generated_documents=40", "trainer.max_steps=9", "trainer.val_check_interval=3"]  # 2 steps a pass
    run(tmp_path, *overrides, "checkpoint_every_n_steps=3", "checkpoint_keep=-1", f"hydra.run.dir={run_dir}")
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*.ckpt"))
    assert names == ["step-3.ckpt", "step-6.ckpt", "step-9.ckpt"]
    for name in names:
        assert torch.load(run_dir / "checkpoints" / name, weights_only=True)["global_step"] == int(name[5:-5])


def test_the_first_run_and_a_rerun_from_the_cache_train_the_same_weights(blockbert, tmp_path):
    """The defaults' first run builds the corpus, tokenizer and sequences, its rerun reads them from the cache (before
    the fix the two started from different weights: validation perplexity 262.30 and 262.49 at step 0)."""
    for name in ("first", "again"):
        blockbert(tmp_path, "pretrain", "trainer.max_steps=2", f"hydra.run.dir={name}")
    first, again = (torch.load(tmp_path / d / "checkpoints/last.ckpt", weights_only=True) for d in ("first", "again"))
    assert all(torch.equal(first["state_dict"][k], again["state_dict"][k]) for k in first["state_dict"])


def test_sigterm_keeps_a_checkpoint_that_resumes(run, tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, WANDB_MODE="disabled", BLOCKBERT_CACHE=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        ["blockbert", "pretrain", *TINY, "logger=none", "trainer.max_steps=100000", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "last.ckpt").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.5)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    interrupted = run_dir / "checkpoints" / "interrupted.ckpt"
    assert interrupted.is_file()
    step = torch.load(interrupted, weights_only=False)["global_step"]
    assert step >= 4
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
    run(tmp_path, f"trainer.max_steps={step + 2}", f"hydra.run.dir={run_dir}", logger="none")
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == step + 2


BEFORE_TRAINING = (
    "stopped by SIGTERM before training: nothing was saved; run the same command with hydra.run.dir={run_dir} to "
    "start it again"
)
# the command with SIGTERM sent to itself as STOP_IN (module:attribute) is called: a scheduler's stop at that moment
SIGTERM_IN = """
import importlib, os, signal
where, _, path = os.environ["STOP_IN"].partition(":")
owner_path, _, name = path.rpartition(".")
owner = importlib.import_module(where)
for part in filter(None, owner_path.split(".")):
    owner = getattr(owner, part)
original = getattr(owner, name)
def stop_here(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return original(*args, **kwargs)
setattr(owner, name, stop_here)
from cli import main
main()
"""


@pytest.mark.parametrize(
    ("stop_in", "said"),
    [
        ("blockbert.app.launch:run_task", "blockbert pretrain: interrupted: stopped by SIGTERM"),
        ("blockbert.app.run_config:check_data", BEFORE_TRAINING),
        ("blockbert.data.pretrain_datamodule:PretrainDataModule.setup", BEFORE_TRAINING),
        ("blockbert.train.pretrain_module:PretrainModule.configure_optimizers", "stopped by SIGTERM at step 0: no "
         "optimizer step since it started, so nothing new was saved; run the same command with "
         "hydra.run.dir={run_dir} to resume"),  # in Lightning's fit, before its own handler is there
    ],
    ids=["starting", "checking-the-data", "building-the-data", "setting-up-the-fit"],
)  # fmt: skip
def test_sigterm_before_training_ends_in_the_interrupted_line(run, tmp_path, stop_in, said):
    """Before: a SIGTERM in the first seconds of a run (its start, its checks, the data built: minutes on a large
    corpus, when a scheduler's SIGTERM may well come) killed it silently, before Lightning's handler was there. Now
    exit 143 and the interrupted line; the same command in the same directory then runs (tested once)."""
    run_dir = tmp_path / "run"
    env = dict(os.environ, WANDB_MODE="disabled", BLOCKBERT_CACHE=str(tmp_path / "cache"), BLOCKBERT_CLI="1")
    args = ["pretrain", *TINY, "logger=none", "trainer.max_steps=2", f"hydra.run.dir={run_dir}"]
    out = subprocess.run(
        [sys.executable, "-c", SIGTERM_IN, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**env, "STOP_IN": stop_in},
    )  # fmt: skip
    assert out.returncode == 143, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("blockbert pretrain:")]
    assert lines == [said.format(run_dir=run_dir) if said.startswith("blockbert") else
                     f"blockbert pretrain: interrupted: {said.format(run_dir=run_dir)}"]  # fmt: skip
    if run_dir.exists():
        assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())
    if stop_in.endswith("check_data"):  # once: the line's command, rerun, runs
        run(tmp_path, "trainer.max_steps=2", f"hydra.run.dir={run_dir}", logger="none")
        assert json.loads((run_dir / "metrics.json").read_text())["status"] == "finished"


def test_sentence_pairs_model_trains_with_nsp_and_wandb_offline(run, tmp_path):
    run_dir = tmp_path / "run"
    run(
        tmp_path,
        "trainer.max_steps=2",
        "model.next_sentence_prediction=true",
        f"hydra.run.dir={run_dir}",
        logger="wandb",
        env={"WANDB_MODE": "offline"},
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "train/nsp_loss" in metrics and "train/mlm_loss" in metrics
    assert list((run_dir / "wandb").glob("offline-run-*"))
    # step 2 is no multiple of checkpoint_every_n_steps=4: the final state is saved all the same
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2


def data_cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="pretrain", overrides=[f"paths.cache_dir={tmp_path / 'cache'}", *overrides])
    return cfg.data


def test_local_jsonl_and_text_corpora_and_cache_reuse(tmp_path):
    lines = [json.dumps({"body": f"Document {i} says hello. It has two sentences."}) for i in range(30)]
    (tmp_path / "corpus.jsonl").write_text("\n".join(lines))
    cfg = data_cfg(
        tmp_path,
        "data=text_files",
        f"data.files={tmp_path}/corpus.jsonl",
        "data.text_field=body",
        "data.max_seq_length=32",
        "data.tokenizer_vocab_size=120",
    )
    dm = PretrainDataModule(cfg, False, 4, 0, tmp_path / "cache")
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 30  # one short document -> one sequence
    again = PretrainDataModule(cfg, False, 4, 0, tmp_path / "cache")
    again.setup()
    assert again.train_set.cache_files == dm.train_set.cache_files  # tokenised once, then read from the cache

    (tmp_path / "a.txt").write_text("First doc line one.\nLine two.\n\nSecond doc here.\n\nThird doc.\n")
    cfg = data_cfg(
        tmp_path,
        "data=text_files",
        f"data.files={tmp_path}/a.txt",
        "data.max_seq_length=32",
        "data.tokenizer_vocab_size=120",
        "data.validation_fraction=0.34",
    )
    dm = PretrainDataModule(cfg, False, 2, 0, tmp_path / "cache")
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 3
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) >= {"input_ids", "attention_mask", "labels"}


def test_two_process_ddp_on_cpu_through_the_cli(run, tmp_path):
    """Lightning re-launches `blockbert pretrain ...` for rank 1: the hand-over must survive that."""
    run_dir = tmp_path / "ddp"
    out = run(
        tmp_path,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "trainer.max_steps=4",
        "trainer.log_every_n_steps=1",
        "checkpoint_every_n_steps=100",
        f"hydra.run.dir={run_dir}",
    )
    assert out.stdout.strip().splitlines()[-1] == str(run_dir.resolve())
    assert "GLOBAL_RANK: 1" in out.stdout + out.stderr  # Lightning's messages go through Hydra's logging
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    assert [p.name for p in (run_dir / "csv").iterdir()] == ["version_0"]
    rows = (run_dir / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    loss_steps = [r.split(",") for r in rows[1:]]
    header = rows[0].split(",")
    steps = [r[header.index("step")] for r in loss_steps if r[header.index("train/loss")]]
    assert len(steps) == len(set(steps)) == 4  # each step logged once, by rank 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 4 and metrics["val/ppl"] > 1  # validation reduced over both processes
    assert "sync_dist" not in out.stderr and "deprecated" not in out.stderr  # no advice the run does not need
    assert not list(tmp_path.glob("runs"))  # rank 1 made no run directory of its own
