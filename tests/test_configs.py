"""Compose every primary config with every model and experiment through Hydra's compose API."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from blockbert import PRESETS, BlockBertModel, ConfigError, preset_config
from blockbert.app import cluster  # noqa: F401 -- registers the resolvers of conf/cluster
from blockbert.model.config import scale_heads
from blockbert.paths import config_dir
from blockbert.train.settings import model_config

CONF = config_dir()
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
PRIMARIES = ["pretrain", "finetune"]
TINY = dict(hidden_size=48, num_layers=1, num_heads=12, intermediate_size=32, vocab_size=64)


def compose_cfg(primary, overrides=()):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=primary, overrides=list(overrides))


def test_the_expected_configs_exist():
    assert set(MODELS) == {
        "google_bert",
        "roberta_2seq",
        "roberta_1seq",
        "sparsebert",
        "blockbert_n2",
        "blockbert_n3",
        "tiny",
    }
    assert len(EXPERIMENTS) == 12  # ten paper rows, the tiny default and longrange (Figure 4 on a laptop)
    for group, options in {
        "trainer": {"cpu", "gpu", "ddp"},
        "logger": {"wandb", "csv", "none"},
        "cluster": {"local", "slurm"},
    }.items():
        assert options <= {p.stem for p in (CONF / group).glob("*.yaml")}


@pytest.mark.parametrize("primary", PRIMARIES)
@pytest.mark.parametrize("model", MODELS)
def test_every_model_composes_and_builds(primary, model):
    cfg = compose_cfg(primary, [f"model={model}"])
    assert cfg.model.name == model
    tiny = dict(TINY, num_heads=cfg.model.num_heads)
    config = model_config(cfg.model, **tiny)
    out = BlockBertModel(config)(torch.randint(0, 64, (1, 24)))
    assert out.shape == (1, 24, 48)


@pytest.mark.parametrize("primary", PRIMARIES)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(primary, experiment):
    if experiment == "longrange" and primary == "finetune":  # a pre-training experiment: it sets the corpus
        with pytest.raises(Exception, match="In 'experiment/longrange': Could not override 'data'"):
            compose_cfg(primary, [f"experiment={experiment}"])
        return
    cfg = compose_cfg(primary, [f"experiment={experiment}"])
    if experiment == "longrange":
        assert cfg.data.name == "longrange" and cfg.model.num_layers == 1 and cfg.model.num_heads == 12
    elif experiment != "tiny":
        model, n = experiment.rsplit("_", 1)
        assert cfg.model.name == model
        assert cfg.data.max_seq_length == cfg.model.max_position_embeddings == int(n)
    config = model_config(cfg.model, **dict(TINY, num_heads=cfg.model.num_heads))
    BlockBertModel(config)(torch.randint(0, 64, (1, 12)))


def test_paper_rows_carry_their_head_configs_and_batches():
    assert compose_cfg("pretrain", ["experiment=blockbert_n2_512"]).model.heads == "10:2"
    assert compose_cfg("pretrain", ["experiment=blockbert_n2_1024"]).model.heads == "9:3"
    row = compose_cfg("pretrain", ["experiment=blockbert_n3_1024"])
    assert row.model.heads == "8:2:2" and row.tokens_per_batch // row.data.max_seq_length == 128
    assert compose_cfg("pretrain", ["experiment=google_bert_512"]).model.next_sentence_prediction


def test_pretrain_defaults_are_appendix_a1():
    cfg = compose_cfg("pretrain", ["experiment=roberta_1seq_512"])
    assert cfg.optim.lr == 2.5e-4 and list(cfg.optim.betas) == [0.9, 0.999] and cfg.optim.eps == 1e-8
    assert cfg.optim.weight_decay == 0.01 and cfg.optim.warmup_steps == 10000
    assert cfg.trainer.max_steps == 2_400_000 and cfg.trainer.gradient_clip_val == 1.0
    assert cfg.tokens_per_batch == 131072 and cfg.model.hidden_dropout == cfg.model.attention_dropout == 0.1
    ft = compose_cfg("finetune", ["experiment=roberta_1seq_512"])
    assert ft.data.doc_stride == 128 and ft.data.max_query_length == 64 and ft.trainer.max_epochs == 4


@pytest.mark.parametrize("model", [m for m in MODELS])
def test_presets_are_the_model_files_as_hydra_composes_them(model):
    cfg = compose_cfg("pretrain", [f"model={model}"])
    assert model_config(cfg.model) == preset_config(model)
    assert cfg.model.next_sentence_prediction == PRESETS[model].next_sentence_prediction


def test_head_config_is_one_override_and_blocks_follow():
    cfg = compose_cfg("pretrain", ["model=blockbert_n2", "model.heads=9:3"])
    assert cfg.model.heads == "9:3"
    assert model_config(cfg.model).num_blocks == 2
    cfg = compose_cfg("pretrain", ["model=blockbert_n2", "model.heads=4:4:4"])
    assert model_config(cfg.model).num_blocks == 3


def test_bad_head_override_is_a_config_error():
    cfg = compose_cfg("pretrain", ["model=blockbert_n2", "model.heads=7:2"])
    with pytest.raises(ConfigError, match="heads='7:2' assigns 9 heads but the model has num_heads=12"):
        model_config(cfg.model)


def test_slurm_cluster_selects_submitit_launcher():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="pretrain",
            overrides=["cluster=slurm", "trainer=ddp", "trainer.devices=8"],
            return_hydra_config=True,
        )
    assert "submitit" in cfg.hydra.launcher._target_.lower()
    assert OmegaConf.select(cfg, "hydra.launcher.gpus_per_node") == 8


def test_conf_is_found_in_checkout():
    assert CONF == Path(__file__).resolve().parents[1] / "conf"


@pytest.mark.parametrize(
    "heads, num_heads, expected",
    [
        ("10:2", 16, "13:3"),
        ("10:2", 6, "5:1"),
        ("8:2:2", 16, "10:3:3"),
        ("12:0", 16, "16:0"),
        ("3:1", 12, "9:3"),
        ("0:12", 16, "0:16"),
    ],
)
def test_a_head_split_scales_to_another_head_count(heads, num_heads, expected):
    assert scale_heads(heads, num_heads) == expected
    assert scale_heads(expected, num_heads) == expected  # one that fits stays


def test_a_head_split_that_cannot_scale_is_one_line():
    with pytest.raises(ConfigError, match="heads='1:1:1:1' cannot be scaled to num_heads=2"):
        scale_heads("1:1:1:1", 2)
