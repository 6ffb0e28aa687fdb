"""The conventions users bring: W&B and Hugging Face environment variables, transformers-style sample limits."""

import json

import pytest
from hydra import compose, initialize_config_dir

from blockbert.data.cache import hub_cache
from blockbert.data.qa_datamodule import load_task
from blockbert.errors import ConfigError
from blockbert.formats.run_dir import RunDir
from blockbert.paths import config_dir
from blockbert.train.loggers import build_logger


def pretrain_cfg(*overrides):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="pretrain", overrides=list(overrides))


def test_wandb_environment_is_honoured_unless_the_config_says_otherwise(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_ENTITY", "team")
    cfg = pretrain_cfg()
    assert (cfg.logger.project, cfg.logger.entity) == ("from-env", "team")
    assert pretrain_cfg("logger.project=given").logger.project == "given"
    monkeypatch.delenv("WANDB_PROJECT")
    monkeypatch.delenv("WANDB_ENTITY")
    assert (pretrain_cfg().logger.project, pretrain_cfg().logger.entity) == ("blockbert", None)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert build_logger(cfg, RunDir(tmp_path / "run")).save_dir == str(tmp_path / "run")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-files"))
    assert build_logger(cfg, RunDir(tmp_path / "run")).save_dir == str(tmp_path / "wandb-files")


def test_hugging_face_cache_variables_are_honoured(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    assert hub_cache(tmp_path) == str(tmp_path / "datasets")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    assert hub_cache(tmp_path) is None  # datasets resolves HF_DATASETS_CACHE / HF_HOME itself


def finetune_cfg(*overrides):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="finetune", overrides=list(overrides))


def test_sample_limits_keep_the_first_questions(tmp_path):
    full = load_task(finetune_cfg("task.generated_questions=40").task, tmp_path)
    kept = load_task(
        finetune_cfg("task.generated_questions=40", "task.max_train_samples=7", "task.max_eval_samples=3").task,
        tmp_path,
    )
    assert [e.qid for e in kept["train"].examples] == [e.qid for e in full["train"].examples[:7]]
    assert list(kept["dev"].gold) == list(full["dev"].gold)[:3]  # EM/F1 are computed over these
    with pytest.raises(ConfigError, match=r"task.max_eval_samples=0 is not accepted"):
        load_task(finetune_cfg("task.max_eval_samples=0").task, tmp_path)


def test_a_quick_fine_tuning_run_scores_the_kept_questions(blockbert, tmp_path):
    run_dir = tmp_path / "run"
    samples = ["task.max_train_samples=24", "task.max_eval_samples=8"]
    out = blockbert(
        tmp_path, "finetune", *samples, "trainer.max_steps=2", "progress_bar=false", f"hydra.run.dir={run_dir}"
    )
    assert len(json.loads((run_dir / "dev" / "predictions.json").read_text())) == 8
    assert "train: 24 questions" in out.stdout + out.stderr
