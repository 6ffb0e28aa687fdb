"""`blockbert plan`: predicted memory against measured training steps (dense, n=2, n=3; two N; two batches), the
batch arithmetic, the refusal of a run that does not fit (and what it keeps), named GPUs' calibrations, sweeps."""

import json
import re
import subprocess
import sys
import time

import pytest
import torch

from blockbert.errors import ConfigError, Terminated
from blockbert.formats.compose import compose
from blockbert.measure import plan, plan_fit
from blockbert.measure.memory import resident_bytes, step_peaks
from blockbert.measure.timing import OthersLoad, usable_cores

CPU = torch.device("cpu")
SMALL = [  # 4 layers: the fit's 1 and 2 layers are extrapolated
    "model.hidden_size=128",
    "model.num_layers=4",
    "model.num_heads=4",
    "model.intermediate_size=512",
    "model.max_position_embeddings=512",
]
HEADS = {"roberta_1seq": None, "blockbert_n2": "3:1", "blockbert_n3": "2:1:1"}


def target_of(model: str, seq_len: int, per_device: int, accumulate: int = 1, extra=()) -> plan_fit.Target:
    overrides = [
        f"model={model}",
        *SMALL,
        f"data.max_seq_length={seq_len}",
        f"tokens_per_batch={per_device * accumulate * seq_len}",
        f"data.per_device_batch_size={per_device}",
        *([f"model.heads='{HEADS[model]}'"] if HEADS[model] else []),
        *extra,
    ]
    return plan_fit.target_of(compose("pretrain", overrides, finished=True), "pretrain")


def measured_peak(target: plan_fit.Target, per_device: int) -> tuple[int, int]:
    """(the peak of a training step of the whole model, measured; what stays between steps)."""
    model, optimizer = plan_fit.model_and_optimizer(target, target.model.num_layers, target.seq_len, CPU)
    make = plan_fit.batch_maker(target, per_device, target.seq_len, CPU)
    autocast = plan_fit.autocast_of(target, CPU)
    step_peaks(model, make, plan_fit.loss_of, optimizer, autocast)  # the optimizer's states allocated
    peaks = step_peaks(model, make, plan_fit.loss_of, optimizer, autocast)
    phases = ("first", "accumulating", "optimizer") if target.accumulate > 1 else ("first", "optimizer")
    resident = resident_bytes(model, optimizer)
    return resident + max(peaks[phase] for phase in phases), resident


@pytest.mark.parametrize("seq_len", [128, 256])
@pytest.mark.parametrize("model", list(HEADS))
def test_predicted_peak_within_10_percent_of_the_measured_step(model, seq_len):
    target = target_of(model, seq_len, per_device=4)
    fit = plan_fit.measure_fit(target, CPU, timed=False)
    for per_device in (4, 16):  # the run's micro-batch, and four times it (what the largest batch extrapolates to)
        predicted = plan.memory_of(target, fit, per_device)
        measured, resident = measured_peak(target, per_device)
        assert abs(predicted["peak"] / measured - 1) < 0.10, (per_device, predicted["peak"], measured)
        counted = predicted["weights"] + predicted["optimizer_states"]
        assert abs(counted / resident - 1) < 0.01  # weights and AdamW's moments, counted from the parameters


@pytest.mark.parametrize(
    "extra, accumulate",
    [((), 2), (("trainer.precision=bf16-mixed",), 1)],
    ids=["gradient-accumulation", "bf16-mixed"],
)
def test_predicted_peak_with_accumulation_and_mixed_precision(extra, accumulate):
    target = target_of("blockbert_n2", 128, per_device=4, accumulate=accumulate, extra=extra)
    assert target.accumulate == accumulate
    fit = plan_fit.measure_fit(target, CPU, timed=False)
    measured, _ = measured_peak(target, 4)
    assert abs(plan.memory_of(target, fit)["peak"] / measured - 1) < 0.10


def test_largest_batch_is_the_edge_of_the_prediction():
    target = target_of("blockbert_n3", 128, per_device=4)
    fit = plan_fit.measure_fit(target, CPU, timed=False)
    capacity = plan.memory_of(target, fit, 9)["peak"] + 1
    largest = plan.largest_batch(target, fit, capacity)
    assert largest == 9
    assert plan.memory_of(target, fit, largest + 1)["peak"] > capacity
    assert plan.best_setting(target, largest) == (4, 1)  # the run's batch of 4 splits into micro-batches of 4
    assert plan.largest_batch(target, fit, plan.memory_of(target, fit, 1)["peak"] - 1) == 0


def test_the_batch_arithmetic_is_the_runs():
    cfg = compose("pretrain", ["experiment=blockbert_n2_1024", "trainer=ddp"], finished=True)
    target = plan_fit.target_of(cfg, "pretrain", devices=32)
    assert (target.batch, target.per_device, target.accumulate, target.strategy) == (128, 4, 1, "ddp")
    assert target.tokens_per_step == 131072 and target.max_steps == 2_400_000
    assert target.model.heads == "9:3" and target.precision == "bf16-mixed"
    finetune = plan_fit.target_of(compose("finetune", [], finished=True), "finetune")
    assert finetune.head == "qa" and finetune.max_steps == 300


def test_sizes_and_precisions_are_checked():
    assert plan.parse_size("16GB", "x") == 16e9 and plan.parse_size("80GiB", "x") == 80 * 2**30
    with pytest.raises(ConfigError, match=r"device_memory='lots' is not a memory size: give e.g. 16GB"):
        plan.parse_size("lots", "device_memory")
    with pytest.raises(ConfigError, match=r"--gpu-memory='0GiB' is not a memory size"):  # was a plan for 0 bytes
        plan.parse_size("0GiB", "--gpu-memory")
    with pytest.raises(ConfigError, match=r"trainer.precision='64-true' cannot be planned: accepted are 32-true"):
        plan_fit.precision_name("64-true")


def test_plan_with_the_defaults(blockbert, tmp_path):
    env = {"BLOCKBERT_PLAN_DIR": str(tmp_path / "fits")}
    out = blockbert(tmp_path, "plan", env=env)
    assert "peak" in out.stdout and "fits" in out.stdout and "seconds per optimizer step" in out.stdout
    # what is measured now, said before it is (before: nothing, for minutes at a long N on a CPU)
    assert "plan: fitting memory and time on CPU" in out.stderr, out.stderr
    assert "the model cut to 1 and 2 layers, N=64 and 128, micro-batches 4 and 8" in out.stderr
    (result,) = json.loads(next(tmp_path.glob("runs/plan/*/plan.json")).read_text())["jobs"]
    assert result["fits"] and result["run"]["accumulation"] == 2 and result["run"]["per_device_batch"] == 8
    assert result["time"]["step_s"] > 0 and result["time"]["run_hours"] > 0
    assert result["fit"]["source"].startswith("fitted now")
    (stored,) = list((tmp_path / "fits").glob("cpu-*.json"))
    # times measured beside a busy neighbour (the suite's other worker) are not kept: the second plan times again.
    # Read before the second plan, which replaces a busy fit with its own.
    quiet = not any(plan_fit.timed_beside_others(fit) for fit in json.loads(stored.read_text())["fits"].values())
    second = blockbert(tmp_path, "plan", "--out", "again", env=env)  # the fit is kept and reused
    assert ("plan: fitting" not in second.stderr) == quiet
    (again,) = json.loads((tmp_path / "again" / "plan.json").read_text())["jobs"]
    assert again["fit"]["source"].startswith("fitted on" if quiet else "fitted now")
    assert again["memory_gb"] == pytest.approx(result["memory_gb"], rel=0.02)


@pytest.mark.parametrize(("share", "reused"), [(0.05, True), (0.6, False)])
def test_step_times_measured_beside_busy_processes_are_measured_again(tmp_path, monkeypatch, caplog, share, reused):
    """Before: a time measured while other processes took the CPU was stored and reused by every later plan (the
    tester's 4.85 s per step against 0.04 s on the quiet machine)."""
    target = target_of("blockbert_n2", 128, 2)
    measured = []

    def measure(*args):
        measured.append(args)
        return {
            "memory": {},
            "measured": {"name": "CPU", "date": "today"},
            "time": {"micro_batch": 2, "others_cpu_share": share},
        }

    monkeypatch.setattr(plan_fit, "measure_fit", measure)
    monkeypatch.setattr(plan_fit, "timed_micro_batch", lambda *args: 2)
    for _ in range(2):
        plan_fit.fit_for(target, plan_fit.FitStore(tmp_path, "cpu-test"), CPU, timed=True)
    assert len(measured) == (1 if reused else 2)
    assert ("other processes took 60 % of the CPU while the step was timed" in caplog.text) == (not reused)
    plan_fit.fit_for(target, plan_fit.FitStore(tmp_path, "cpu-test"), CPU, timed=False)  # memory: never again
    assert len(measured) == (1 if reused else 2)


def test_a_cpu_time_stored_before_the_busy_check_is_timed_again(tmp_path, monkeypatch):
    """The tester's stored 4.85 s (about 120x too long) came from before the check: it would have been trusted."""
    target = target_of("blockbert_n2", 128, 2)
    old = {
        "memory": {},
        "measured": {"device": "cpu-test", "name": "CPU", "date": "before"},
        "time": {"micro_batch": 2},
    }
    store = plan_fit.FitStore(tmp_path, "cpu-test")
    store.put(target, old, {})
    fresh = {**old, "measured": {**old["measured"], "date": "now"}, "time": {"micro_batch": 2, "others_cpu_share": 0.0}}
    monkeypatch.setattr(plan_fit, "measure_fit", lambda *args: fresh)
    monkeypatch.setattr(plan_fit, "timed_micro_batch", lambda *args: 2)
    entry, source = plan_fit.fit_for(target, plan_fit.FitStore(tmp_path, "cpu-test"), CPU, timed=True)
    assert entry is fresh and source.startswith("fitted now")
    assert plan_fit.fit_for(target, plan_fit.FitStore(tmp_path, "cpu-test"), CPU, timed=True)[1].startswith("fitted on")


@pytest.mark.parametrize(("long_step_s", "repeats"), [(1e9, plan_fit.TIME_REPEATS), (0.0, 1)])
def test_a_long_step_is_timed_once_after_its_warm_up(monkeypatch, long_step_s, repeats):
    """A step as long as LONG_STEP_S (minutes at a long N on a CPU) is timed once, not TIME_REPEATS times."""
    calls = []

    def recorded(phases, device, warmup, times):
        calls.append((warmup, times))
        return {name: 1.0 for name in phases}

    monkeypatch.setattr(plan_fit, "LONG_STEP_S", long_step_s)
    monkeypatch.setattr(plan_fit, "time_in_order", recorded)
    target = target_of("blockbert_n2", 64, per_device=2)
    timed = plan_fit.time_fit(target, CPU, plan_fit.autocast_of(target, CPU), 2)
    assert calls == [(0, 1), (0, repeats)] and timed["forward_backward_s"] == [1.0, 1.0]


def test_the_share_of_busy_processes_is_measured():
    cores = usable_cores()  # the busy loops inherit this process's cores
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in cores]
    try:
        time.sleep(0.5)  # the loops started
        with OthersLoad() as load:
            time.sleep(1.0)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert load.share > 0.5  # each core had a loop of its own


def test_a_run_that_does_not_fit_is_refused_and_what_exists_stays(blockbert, tmp_path):
    blockbert(tmp_path, "plan", "--out", "plan")
    (planned,) = json.loads((tmp_path / "plan" / "plan.json").read_text())["jobs"]
    too_small = f"device_memory={int(planned['memory_gb']['peak'] * 1e9 * 0.6)}B"
    out = blockbert(tmp_path, "pretrain", too_small, check=False)
    assert out.returncode == 2
    error = out.stderr.strip().splitlines()[0]
    needs = r"a micro-batch of 8 sequences of N=128 \(data.per_device_batch_size=8\) needs [0-9.]+ MB per device at its"
    assert re.search(needs, error), error
    assert "fit_check=false to run anyway" in error
    largest = int(re.search(r"the largest per-device batch that fits is (\d+)", error).group(1))
    assert 1 <= largest < 8
    assert not list(tmp_path.glob("runs/pretrain/*"))  # refused before it trained: no trace

    run_dir = tmp_path / "run"
    blockbert(tmp_path, "pretrain", f"hydra.run.dir={run_dir}", too_small, f"data.per_device_batch_size={largest}",
              "trainer.max_steps=2", "logger=none")  # fmt: skip
    metrics = (run_dir / "metrics.json").read_text()
    resumed = blockbert(tmp_path, "pretrain", f"hydra.run.dir={run_dir}", too_small, "trainer.max_steps=4", check=False)
    assert resumed.returncode == 2 and "largest per-device batch" in resumed.stderr
    assert (run_dir / "metrics.json").read_text() == metrics and list(run_dir.glob("checkpoints/*.ckpt"))
    assert not list(run_dir.glob(".hydra/resume-*"))


def test_fit_check_false_runs_what_the_plan_refuses():
    refused = compose("pretrain", ["device_memory=1MB"], finished=True)
    with pytest.raises(ConfigError, match="or fit_check=false to run anyway"):
        plan.check_fit(refused, "pretrain")
    plan.check_fit(compose("pretrain", ["device_memory=1MB", "fit_check=false"], finished=True), "pretrain")


def test_plan_for_a_named_gpu_from_its_calibration(blockbert, tmp_path):
    fits = tmp_path / "fits"
    blockbert(tmp_path, "plan", "--calibrate", "trainer.max_steps=300", env={"BLOCKBERT_PLAN_DIR": str(fits)})
    (measured,) = fits.glob("cpu-*.json")
    calibration = json.loads(measured.read_text())  # as a GPU's calibration is, from another kind
    calibration["device"] = {"kind": "nvidia-test-gpu", "name": "NVIDIA Test GPU", "memory_bytes": 16e9}
    (fits / "nvidia-test-gpu.json").write_text(json.dumps(calibration))
    measured.unlink()
    env = {"BLOCKBERT_PLAN_DIR": str(fits)}
    blockbert(tmp_path, "plan", "--gpu", "Test GPU", "--gpus", "2", "--out", "named", env=env)
    (result,) = json.loads((tmp_path / "named" / "plan.json").read_text())["jobs"]
    assert result["device"]["name"] == "NVIDIA Test GPU" and result["device"]["memory_gb"] == 16
    assert result["run"]["devices"] == 2 and result["time"]["device_hours"] == 2 * result["time"]["run_hours"]
    assert not list(fits.glob("cpu-*.json"))  # nothing measured here
    other = blockbert(tmp_path, "plan", "--gpu", "test-gpu", "data.max_seq_length=64", env=env, check=False)
    assert other.returncode == 2 and "has no fit with times of this model" in other.stderr
    unknown = blockbert(tmp_path, "plan", "--gpu", "A100", env=env, check=False)
    assert unknown.returncode == 2 and "no calibration of that GPU kind" in unknown.stderr
    assert "known: nvidia-test-gpu" in unknown.stderr


def test_plan_of_a_sweep_totals_its_device_hours(blockbert, tmp_path):
    laptop = ["experiment=tiny", "trainer.max_steps=300", "optim.schedule_steps=600"]  # the sweep's laptop form
    out = blockbert(tmp_path, "plan", "--sweep", "heads_n2", *laptop, "model.heads=4:0,3:1", "--out", "sweep")
    summary = json.loads((tmp_path / "sweep" / "plan.json").read_text())
    jobs = summary["jobs"]
    assert len(jobs) == 2 and len({job["run"]["model"] for job in jobs}) == len(jobs)  # one per head assignment
    assert "model.heads=3:1 " in out.stdout and "\\" not in out.stdout  # as given (before: Hydra's escape, 3\:1)
    assert summary["device_hours"] == pytest.approx(sum(job["time"]["device_hours"] for job in jobs))


def test_a_gpu_run_planned_on_a_cpu_needs_the_gpus_memory(blockbert, tmp_path):
    out = blockbert(tmp_path, "plan", "trainer=gpu", check=False)
    assert out.returncode == 2
    assert "the run asks for GPUs and this machine has none: give --gpu-memory (e.g. 16GiB)" in out.stderr


def test_benchmark_mode_plan_sets_predictions_beside_runs(blockbert, tmp_path):
    runs = "plan.runs=[{model: blockbert_n2, seq_len: 64, batch_size: 2, accumulate: 2}]"
    blockbert(tmp_path, "benchmark", "mode=plan", "size=cpu_tiny", runs, "plan.steps=3", "plan.documents=40",
              "plan.rows_per_document=20", "warmup=1", "hydra.run.dir=b")  # fmt: skip
    (record,) = json.loads((tmp_path / "b" / "benchmark.json").read_text())["records"]
    assert record["accumulate"] == 2 and record["measured"]["steps"] == 3
    assert record["time_ratio"] == pytest.approx(record["predicted"]["step_s"] / record["measured"]["median_s"])
    assert "memory_ratio" not in record  # on a CPU the run's peak RSS holds the whole process: not compared


def test_processes_of_one_cpu_machine_share_its_memory(monkeypatch):
    """Before: each of a CPU DDP run's processes was planned (and its run checked) against the machine's whole
    available memory, though every process holds a model of its own in it."""
    monkeypatch.setattr(plan, "free_memory", lambda device: 8 * 10**9)
    cpu = torch.device("cpu")
    two = compose("pretrain", ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"], finished=True)
    assert plan.memory_per_device(cpu, two.trainer) == 4 * 10**9
    two_nodes = compose("pretrain", ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                                     "trainer.num_nodes=2"], finished=True)  # fmt: skip
    assert plan.memory_per_device(cpu, two_nodes.trainer) == 4 * 10**9  # two processes on each machine
    assert plan.memory_per_device(cpu, compose("pretrain", [], finished=True).trainer) == 8 * 10**9


def test_a_gpu_name_matching_several_calibrations_names_them(tmp_path):
    """Before: "no calibration of that GPU kind (several match); known: ..." named no match."""
    for kind in ("nvidia-h100-pcie", "nvidia-h100-sxm"):
        (tmp_path / f"{kind}.json").write_text('{"device": {}, "fits": {}}')
    message = "--gpu 'H100' matches several calibrated GPU kinds: give one of nvidia-h100-pcie, nvidia-h100-sxm"
    with pytest.raises(ConfigError, match=re.escape(message)):
        plan_fit.named_store(tmp_path, "H100")
    assert plan_fit.named_store(tmp_path, "nvidia-h100-sxm").kind == "nvidia-h100-sxm"


@pytest.mark.parametrize(("stop", "said", "code"), [(KeyboardInterrupt, "Ctrl-C", 130), (Terminated, "SIGTERM", 143)])
def test_plan_stopped_by_ctrl_c_while_fitting_says_so(tmp_path, monkeypatch, stop, said, code):
    """Before: exit 130 without a word (SIGTERM: "stopped by SIGTERM" alone, not where)."""
    from typer.testing import CliRunner

    import cli

    def stopped(*args, **kwargs):
        raise stop

    monkeypatch.setenv("BLOCKBERT_PLAN_DIR", str(tmp_path / "fits"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(plan_fit, "measure_fit", stopped)
    result = CliRunner().invoke(cli.app, ["plan"])
    assert result.exit_code == code
    assert f"blockbert plan: interrupted: stopped by {said} while fitting: nothing was stored; a rerun fits again" in (
        result.output
    )
    assert not (tmp_path / "fits").exists()
