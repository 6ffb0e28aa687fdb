"""Scale-out without a cluster: SLURM's requeue signal with fake `scontrol`/`sbatch`, the resources asked
of SLURM, commands refused before they start, DDP jobs in a local multirun and in submitit_local tasks."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from typer.testing import CliRunner

import cli
from blockbert.app import cluster as _resolvers  # noqa: F401 -- registers the resolvers of conf/cluster
from blockbert.errors import ConfigError
from blockbert.paths import config_dir
from blockbert.train import cluster

TINY = [
    "progress_bar=false",
    "data.generated_documents=60",
    "trainer.val_check_interval=4",
    "checkpoint_every_n_steps=4",
    "optim.warmup_steps=2",
]
DDP_CPU = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
SLURM_ENV = {
    "SLURM_JOB_ID": "4242",
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_NNODES": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_JOB_NAME": "pretrain",
    "SLURM_NODELIST": "localhost",
}
runner = CliRunner()


def env(tmp_path, **extra):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))}
    return dict(base, WANDB_MODE="disabled", BLOCKBERT_CACHE=str(tmp_path / "cache"), PYTHONUNBUFFERED="1", **extra)


@pytest.fixture(scope="session")
def run(blockbert):
    """The command without any SLURM or submitit variable of this process (``environ``: another environment)."""
    return lambda tmp_path, *args, environ=None, timeout=600: blockbert(
        tmp_path, *args, environ=environ or env(tmp_path), timeout=timeout, check=False
    )


def fake_commands(tmp_path, **scripts) -> Path:
    """A bin/ directory with shell scripts named after SLURM's commands; each records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\necho "{name} $*" >> "{tmp_path}/calls.txt"\n{body}\n')
        path.chmod(0o755)
    return bin_dir


def step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if ": error: " in line]
    assert len(lines) == 1, output
    return lines[0]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BLOCKBERT_CACHE", str(tmp_path / "cache"))
    return tmp_path


# -- the accelerator check ---------------------------------------------------------------------------------


def test_gpu_trainers_are_refused_on_a_machine_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for trainer in ("ddp", "gpu", "fsdp"):
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name="pretrain", overrides=[f"trainer={trainer}"])
        with pytest.raises(
            ConfigError,
            match="trainer.accelerator=gpu but this machine has no CUDA GPU: use "
            "trainer=cpu, or trainer=ddp trainer.accelerator=cpu",
        ):
            cluster.check_accelerator(cfg.trainer)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cluster.check_accelerator(compose(config_name="pretrain", overrides=DDP_CPU).trainer)
        cluster.check_accelerator(compose(config_name="pretrain").trainer)


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork"])
def test_processes_started_from_inside_the_command_are_refused_with_one_line(in_tmp, strategy):
    """Spawned or forked ranks: what they compute would not come back; trainer=ddp is what the line offers."""
    result = runner.invoke(cli.app, ["finetune", *DDP_CPU, f"trainer.strategy={strategy}"])
    assert result.exit_code == 2
    assert error_line(result.output).endswith(
        f"error: trainer.strategy={strategy} is not supported: Lightning would start its processes from inside this "
        "one, and what they compute would not come back; use trainer=ddp (strategy ddp, each process runs the "
        "command), with trainer.accelerator=cpu for CPU processes"
    )
    assert not (in_tmp / "cache").exists() and not any((in_tmp / "runs" / "finetune").iterdir())  # no run directory


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_ddp_without_a_gpu_fails_at_once_with_one_line(run, tmp_path):
    start = time.time()
    out = run(tmp_path, "pretrain", "trainer=ddp", "logger=none", timeout=120)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "trainer.accelerator=gpu but this machine has no CUDA GPU" in error_line(out.stderr)
    assert "Traceback" not in out.stderr and "sequences" not in out.stderr + out.stdout  # before any data work
    assert not (tmp_path / "cache").exists()
    assert time.time() - start < 60


# -- cluster=slurm / submitit_local: refused unless they start as written ----------------------------------


@pytest.mark.parametrize("name", ["slurm", "submitit_local"])
def test_a_cluster_without_multirun_is_refused_with_one_line(in_tmp, name):
    result = runner.invoke(cli.app, ["pretrain", f"cluster={name}"])
    assert result.exit_code == 2
    assert (
        f"cluster={name} submits jobs through Hydra's launcher, which only multiruns use: add -m (a one-job multirun)"
    ) in error_line(result.output)
    assert not (in_tmp / "runs").exists()  # refused before Hydra made a run directory


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["trainer=ddp"],
            "cluster=slurm starts trainer.devices tasks per node but trainer.devices=-1 (all GPUs of a node",
        ),
        (["trainer=ddp", "trainer.devices=2,4"], "trainer.devices=2,4 cannot be swept; run one multirun per value"),
        (["trainer=ddp,gpu"], "trainer=ddp,gpu cannot be swept"),
        (["trainer.devices=4", "trainer.num_nodes=0"], "trainer.num_nodes=0 is out of range: it must be >= 1"),
    ],
)
def test_slurm_refuses_resources_it_cannot_ask_for(in_tmp, args, message):
    result = runner.invoke(cli.app, ["pretrain", "-m", "cluster=slurm", *args])
    assert result.exit_code == 2, result.output
    assert message in error_line(result.output)
    assert not (in_tmp / "multirun").exists()


def test_slurm_resources_follow_the_trainer():
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        gpus = compose(
            config_name="pretrain",
            return_hydra_config=True,
            overrides=["cluster=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"],
        )
        cpus = compose(config_name="finetune", return_hydra_config=True, overrides=["cluster=slurm", *DDP_CPU])
    launcher = gpus.hydra.launcher
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)
    assert launcher.additional_parameters.signal == "USR1@120"  # Lightning's requeue signal, not submitit's USR2
    launcher = cpus.hydra.launcher
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (2, None, 1)  # no GPU asked for


def test_slurm_resources_through_the_cli(run, tmp_path):
    out = run(
        tmp_path,
        "pretrain",
        "cluster=slurm",
        "trainer=ddp",
        "trainer.devices=4",
        "trainer.num_nodes=2",
        "--cfg",
        "all",
        "--package",
        "hydra.launcher",
        "--resolve",
    )
    assert out.returncode == 0, out.stderr
    lines = [line.strip() for line in out.stdout.splitlines()]
    for line in ("tasks_per_node: 4", "gpus_per_node: 4", "nodes: 2", "signal: USR1@120"):
        assert line in lines


def test_a_slurm_sweeps_dry_run_shows_the_resolved_launcher_and_each_jobs_command(in_tmp, monkeypatch):
    """`blockbert sweep heads_n2 cluster=slurm --dry-run`: what SLURM will be asked for, resolved (gpus_per_node was
    left as ${blockbert_gpus_per_node:...}), and one command line per job; nothing is submitted."""
    slurm = {name: "exit 1" for name in ("sbatch", "srun", "sacct", "squeue", "scontrol")}
    monkeypatch.setenv("PATH", f"{fake_commands(in_tmp, **slurm)}:{os.environ['PATH']}")
    gpus = ["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]
    result = runner.invoke(
        cli.app, ["sweep", "heads_n2", "cluster=slurm", "hydra.launcher.partition=gpu", *gpus, "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "${" not in out
    launcher = out[out.index("launcher: SlurmLauncher") : out.index("job commands")].splitlines()
    for line in ("partition: gpu", "nodes: 2", "tasks_per_node: 4", "gpus_per_node: 4", "timeout_min: 4320"):
        assert line in launcher
    assert "additional_parameters:" in launcher and "  signal: USR1@120" in launcher and "name: pretrain" in launcher
    assert f"submitit_folder: {in_tmp / 'multirun' / 'sweeps' / 'heads_n2'}" in out
    commands = [line.split(": ", 1)[1] for line in out.splitlines() if ": blockbert " in line]
    assert len(commands) == 13
    assert commands[0] == (
        "blockbert pretrain -m experiment=blockbert_n2_512 data=wiki_book trainer.max_steps=1200000 "
        "optim.schedule_steps=2400000 cluster=slurm "
        "hydra.launcher.partition=gpu trainer=ddp trainer.devices=4 trainer.num_nodes=2 model.heads=12:0"
    )
    assert not (in_tmp / "calls.txt").exists() and not (in_tmp / "multirun").exists()  # no SLURM command ran

    cpu = runner.invoke(cli.app, ["sweep", "heads_n2", "cluster=slurm", "--dry-run"])
    assert cpu.exit_code == 0 and {"partition: null", "gpus_per_node: null"} <= set(cpu.output.splitlines())
    local = runner.invoke(cli.app, ["sweep", "heads_n2", "--dry-run"])
    assert (
        local.exit_code == 0 and "launcher:" not in local.output and "0: blockbert pretrain experiment=" in local.output
    )
    refused = runner.invoke(cli.app, ["sweep", "heads_n2", "cluster=slurm", "trainer=ddp", "--dry-run"])
    assert refused.exit_code == 2 and "trainer.devices=-1 (all GPUs of a node" in error_line(refused.output)
    assert not (in_tmp / "calls.txt").exists()


def test_the_sbatch_script_asks_for_the_trainers_resources_and_lightnings_signal(run, tmp_path):
    """Through the real submitit launcher, with fake sbatch (records its script), sacct (the job failed)
    and srun (only looked for)."""
    sacct = 'echo "JobID|State|NodeList"; echo "4242|FAILED|node1"; echo "4242_0|FAILED|node1"'
    bin_dir = fake_commands(
        tmp_path, sbatch=f'cp "$1" "{tmp_path}/job.sh"; echo "Submitted batch job 4242"', sacct=sacct, srun="exit 1"
    )
    out = run(
        tmp_path,
        "pretrain",
        "-m",
        "cluster=slurm",
        "trainer=ddp",
        "trainer.devices=4",
        "trainer.num_nodes=2",
        "hydra.launcher.partition=gpu",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        environ=env(tmp_path, PATH=f"{bin_dir}:{os.environ['PATH']}"),
        timeout=300,
    )
    assert out.returncode == 1 and "4242_0" in error_line(out.stderr)  # the (fake) job ended without a result
    script = (tmp_path / "job.sh").read_text().splitlines()
    for flag in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--signal=USR1@120", "--partition=gpu"):
        assert f"#SBATCH {flag}" in script
    assert not any("USR2" in line for line in script)
    assert any(line.startswith("srun ") and "submitit.core._submit" in line for line in script)


# -- who owns SLURM's requeue signal -----------------------------------------------------------------------


def test_cluster_environment_is_lightnings_slurm_requeue_owner(monkeypatch):
    from lightning_fabric.plugins.environments import SLURMEnvironment

    for key in [k for k in os.environ if k.startswith(("SLURM_", "SUBMITIT_"))] + ["TORCHELASTIC_RUN_ID"]:
        monkeypatch.delenv(key, raising=False)
    assert cluster.cluster_environment(None) is None  # a plain process: Lightning's own choice
    for key, value in SLURM_ENV.items():
        monkeypatch.setenv(key, value)
    environment = cluster.cluster_environment(None)
    assert isinstance(environment, SLURMEnvironment)
    assert environment.auto_requeue and environment.requeue_signal == signal.SIGUSR1
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    with pytest.raises(ConfigError, match="SUBMITIT_PREEMPT_SIGNAL=USR1 puts submitit's requeue handler on SIGUSR1"):
        cluster.cluster_environment(None)
    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL")
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # an salloc shell: not a job step
    assert cluster.cluster_environment(None) is None


def test_submitit_local_tasks_are_the_ranks(monkeypatch):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    for key, value in {
        "SUBMITIT_LOCAL_NTASKS": "2",
        "SUBMITIT_LOCAL_GLOBALID": "1",
        "SUBMITIT_LOCAL_LOCALID": "1",
        "SUBMITIT_LOCAL_NODEID": "0",
        "SUBMITIT_LOCAL_JOB_ID": "31337",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    environment = cluster.cluster_environment(None)
    assert environment.creates_processes_externally
    assert (environment.world_size(), environment.global_rank(), environment.local_rank()) == (2, 1, 1)
    assert environment.main_port == 20000 + 31337 % 20000


def test_slurm_requeue_signal_saves_requeues_and_resumes_in_place(tmp_path):
    """SIGUSR1 (what slurm.yaml asks SLURM to send before the time limit) reaches Lightning, which saves
    hpc_ckpt_1.ckpt in the run directory and runs `scontrol requeue 4242`; the fake scontrol then ends the
    job as SLURM does (SIGTERM). The same command, started again, resumes in that directory."""
    run_dir = tmp_path / "run"
    bin_dir = fake_commands(tmp_path, scontrol='kill -TERM "$PPID"  # slurmctld ends the requeued job')
    slurm = env(tmp_path, PATH=f"{bin_dir}:{os.environ['PATH']}", **SLURM_ENV)
    command = ["blockbert", "pretrain", *TINY, "logger=none", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(
        [*command, "trainer.max_steps=100000"],
        cwd=tmp_path,
        env=slurm,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "last.ckpt").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.5)
    time.sleep(1.0)
    proc.send_signal(signal.SIGUSR1)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]  # stopped by SLURM's SIGTERM, resumable
    assert (tmp_path / "calls.txt").read_text().splitlines() == ["scontrol requeue 4242"]
    hpc = step(run_dir / "hpc_ckpt_1.ckpt")
    assert hpc >= 4
    saved = max(hpc, step(run_dir / "checkpoints" / "interrupted.ckpt"))
    assert stdout.strip().splitlines()[-1] == str(run_dir.resolve())

    again = subprocess.run(
        [*command, f"trainer.max_steps={saved + 2}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=dict(slurm, SLURM_RESTART_COUNT="1"),
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = re.search(r"resuming from (\S+) \(step (\d+)\)", again.stdout + again.stderr)
    assert resumed and Path(resumed.group(1)).parent in (run_dir, run_dir / "checkpoints")
    assert int(resumed.group(2)) == saved >= hpc
    assert "holds no checkpoint" not in again.stderr
    assert step(run_dir / "checkpoints" / "last.ckpt") == saved + 2
    assert (tmp_path / "calls.txt").read_text().splitlines() == ["scontrol requeue 4242"]  # no second requeue


@pytest.mark.slow
def test_a_preempted_submitit_job_leaves_no_result_and_resumes_in_its_sweep_directory(tmp_path):
    """SIGTERM (what SLURM sends when it requeues or preempts a job) stops the task with a checkpoint and
    without a result file, which submitit would take for the job's end. The requeued job re-runs
    submitit's pickle of the launcher, where the `${now:...}` of the default sweep directory is the one
    resolved at submission: it resumes in the same job directory."""
    proc = subprocess.Popen(
        [
            "blockbert",
            "pretrain",
            "-m",
            "cluster=submitit_local",
            *TINY,
            "logger=none",
            "trainer.max_steps=60",
            "trainer.val_check_interval=100",
        ],
        cwd=tmp_path,
        env=env(tmp_path),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 300
    while not list(tmp_path.glob("multirun/pretrain/*/0/checkpoints/last.ckpt")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    sweep = next(tmp_path.glob("multirun/pretrain/*"))  # a ${now:...} directory
    job_id = next(p.name for p in (sweep / ".submitit").iterdir() if p.name != "%j")  # the controller's pid
    task = subprocess.run(["ps", "-o", "pid=", "--ppid", job_id], capture_output=True, text=True).stdout.split()
    assert len(task) == 1
    os.kill(int(task[0]), signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "has not produced any output" in error_line(stderr)  # not "finished"
    assert not list((sweep / ".submitit").glob("*/*_result.pkl"))
    assert "stopped by SIGTERM" in (sweep / ".submitit" / job_id / f"{job_id}_0_log.err").read_text()
    saved = step(sweep / "0" / "checkpoints" / "interrupted.ckpt")
    assert 4 <= saved < 60

    time.sleep(1.1)  # a ${now:...} resolved again would differ now
    requeued = env(
        tmp_path,
        SUBMITIT_EXECUTOR="local",
        SUBMITIT_LOCAL_JOB_ID=job_id,
        SUBMITIT_LOCAL_NTASKS="1",
        SUBMITIT_LOCAL_GLOBALID="0",
        SUBMITIT_LOCAL_LOCALID="0",
        SUBMITIT_LOCAL_NODEID="0",
        SUBMITIT_LOCAL_JOB_NUM_NODES="1",
    )
    again = subprocess.run(
        ["python", "-u", "-m", "submitit.core._submit", str(sweep / ".submitit" / "%j")],
        cwd=tmp_path,
        env=requeued,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = f"resuming from {sweep / '0' / 'checkpoints' / 'interrupted.ckpt'} (step {saved})"
    assert resumed in again.stdout + again.stderr
    assert step(sweep / "0" / "checkpoints" / "last.ckpt") == 60
    assert list((sweep / ".submitit").glob("*/*_result.pkl"))  # this time the job ended
    assert [p.name for p in (tmp_path / "multirun" / "pretrain").iterdir()] == [sweep.name]


# -- DDP jobs in multiruns ---------------------------------------------------------------------------------


def test_a_local_multirun_of_ddp_jobs_runs_each_job_once_on_two_ranks(run, tmp_path):
    """Lightning starts rank 1 by re-running the command line; it must run its own job, not the sweep."""
    sweep = tmp_path / "sweep"
    out = run(
        tmp_path,
        "pretrain",
        "-m",
        *DDP_CPU,
        "model.heads=3:1,2:2",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "logger=csv",
        "progress_bar=false",
        "data.generated_documents=40",
        "checkpoint_every_n_steps=100",
        f"hydra.sweep.dir={sweep}",
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.strip().splitlines()[-1] == str(sweep.resolve())
    assert (out.stdout + out.stderr).count("GLOBAL_RANK: 1, MEMBER: 2/2") == 2  # through Hydra's logging
    for job, heads in (("0", "3:1"), ("1", "2:2")):
        assert step(sweep / job / "checkpoints" / "last.ckpt") == 2
        assert f"heads: '{heads}'" in (sweep / job / ".hydra" / "config.yaml").read_text()
        assert (sweep / job / "train_ddp_process_1.log").is_file()  # rank 1 worked in its job's directory
        assert [p.name for p in (sweep / job / "csv").iterdir()] == ["version_0"]
    assert sorted(p.name for p in sweep.iterdir() if not p.name.startswith(".")) == ["0", "1", "multirun.yaml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "sweep"]  # no stray run or sweep directory


def test_submitit_local_runs_one_task_per_device(run, tmp_path):
    sweep = tmp_path / "sweep"
    out = run(
        tmp_path,
        "pretrain",
        "-m",
        "cluster=submitit_local",
        *DDP_CPU,
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "logger=none",
        "progress_bar=false",
        "data.generated_documents=40",
        "checkpoint_every_n_steps=100",
        f"hydra.sweep.dir={sweep}",
    )
    assert out.returncode == 0, out.stderr[-4000:]
    logs = sorted((sweep / ".submitit").glob("*/*_log.*"))
    assert len(logs) == 4  # out and err of two submitit tasks, no process started by Lightning
    text = "".join(p.read_text() for p in logs)
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in text and "GLOBAL_RANK: 1, MEMBER: 2/2" in text
    assert step(sweep / "0" / "checkpoints" / "last.ckpt") == 2
