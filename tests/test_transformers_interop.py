"""transformers interoperability: save_pretrained, the Auto classes after `import blockbert`, the model card."""

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
import yaml

import blockbert
from blockbert import (
    BlockBertConfig,
    BlockBertForMaskedLM,
    BlockBertForPreTraining,
    BlockBertForQuestionAnswering,
    BlockBertModel,
)
from blockbert.formats.hf_auto import BlockBertHFConfig, BlockBertHFForMaskedLM, register_auto_classes
from blockbert.formats.model_card import model_card

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(
    vocab_size=100,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)
KINDS = {
    "dense": {},
    "block": {"attention": "block", "heads": "3:1"},
    "sparse": {"attention": "sparse", "sparse_stride": 8, "sparse_expressivity": 2},
}
CLASSES = [BlockBertModel, BlockBertForMaskedLM, BlockBertForPreTraining, BlockBertForQuestionAnswering]
AUTO = {
    BlockBertModel: transformers.AutoModel,
    BlockBertForMaskedLM: transformers.AutoModelForMaskedLM,
    BlockBertForPreTraining: transformers.AutoModelForPreTraining,
    BlockBertForQuestionAnswering: transformers.AutoModelForQuestionAnswering,
}


def tiny_model(cls, kind):
    torch.manual_seed(0)
    return cls(BlockBertConfig(**TINY, **KINDS[kind])).eval()


def inputs(n=20):
    torch.manual_seed(1)
    ids = torch.randint(1, TINY["vocab_size"], (2, n))
    mask = torch.ones_like(ids)
    mask[1, 14:] = 0
    types = torch.zeros_like(ids)
    types[:, 8:] = 1
    return ids, mask, types


def ours(model, ids, mask, types) -> dict:
    """The outputs of a blockbert model, under transformers' names."""
    with torch.no_grad():
        out = model(ids, mask, types)
    if isinstance(out, torch.Tensor):
        return {"last_hidden_state": out}
    if hasattr(out, "start_logits"):
        return {"start_logits": out.start_logits, "end_logits": out.end_logits}
    if hasattr(out, "nsp_logits"):
        return {"prediction_logits": out.logits, "seq_relationship_logits": out.nsp_logits}
    return {"logits": out.logits}


def theirs(model, ids, mask, types) -> dict:
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    assert isinstance(out, transformers.utils.ModelOutput)
    return {k: v for k, v in out.items() if v is not None}


@contextlib.contextmanager
def transformers_log():
    """The messages transformers logs meanwhile (its load report of missing/unexpected weights among them)."""
    messages = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def assert_same_outputs(a: dict, b: dict, mask):
    assert a.keys() == b.keys()
    real = mask.bool()
    for key in a:
        x, y = (a[key], b[key]) if key == "seq_relationship_logits" else (a[key][real], b[key][real])
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5, msg=key)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_save_pretrained_round_trip(tmp_path, cls, kind):
    model = tiny_model(cls, kind)
    assert model.save_pretrained(tmp_path / "out") == tmp_path / "out"
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == ("bert" if kind == "dense" else "blockbert")
    again = cls.from_pretrained(str(tmp_path / "out")).eval()
    assert type(again) is cls
    if kind == "block":  # the export writes N itself
        assert again.config == model.config
    elif kind == "sparse":
        assert again.config == model.config
    ids, mask, types = inputs()
    assert_same_outputs(ours(again, ids, mask, types), ours(model, ids, mask, types), mask)


@pytest.mark.parametrize("kind", ["block", "sparse"])
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_auto_classes_load_an_export_as_blockbert_does(tmp_path, cls, kind):
    tiny_model(cls, kind).save_pretrained(tmp_path / "out")
    with transformers_log() as messages:
        hf, info = AUTO[cls].from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    logged = "\n".join(messages)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert "MISSING" not in logged and "newly initialized" not in logged, logged
    assert isinstance(hf, transformers.PreTrainedModel) and not hf.training
    ours_again = cls.from_pretrained(str(tmp_path / "out")).eval()
    assert hf.config.to_blockbert() == ours_again.config
    ids, mask, types = inputs()
    assert_same_outputs(theirs(hf, ids, mask, types), ours(ours_again, ids, mask, types), mask)
    config = transformers.AutoConfig.from_pretrained(str(tmp_path / "out"))
    assert isinstance(config, BlockBertHFConfig) and config.to_blockbert() == ours_again.config


@pytest.mark.parametrize("kind", ["block", "sparse"])
def test_auto_model_takes_the_encoder_of_a_question_answering_export(tmp_path, kind):
    tiny_model(BlockBertForQuestionAnswering, kind).save_pretrained(tmp_path / "qa")
    with transformers_log() as messages:
        hf, info = transformers.AutoModel.from_pretrained(str(tmp_path / "qa"), output_loading_info=True)
    assert not info["missing_keys"], info
    assert "MISSING" not in "\n".join(messages)  # the QA head in the file is expected to be left over: no report
    encoder = BlockBertModel.from_pretrained(str(tmp_path / "qa")).eval()
    ids, mask, types = inputs()
    assert_same_outputs(theirs(hf, ids, mask, types), ours(encoder, ids, mask, types), mask)
    with transformers_log() as messages:
        mlm, info = transformers.AutoModelForMaskedLM.from_pretrained(str(tmp_path / "qa"), output_loading_info=True)
    assert {k.split(".")[0] for k in info["missing_keys"]} == {"mlm"}  # a head not in the file: initialised fresh
    assert "MISSING" in "\n".join(messages)  # ... and reported (the checks above would see a report)
    assert mlm.mlm.decoder_weight is mlm.encoder.embeddings.word.weight  # tied
    assert torch.equal(mlm.mlm.bias, torch.zeros_like(mlm.mlm.bias))


def test_losses_tuples_and_transformers_save_pretrained(tmp_path):
    model = tiny_model(BlockBertForMaskedLM, "block")
    model.save_pretrained(tmp_path / "out")
    hf = transformers.AutoModelForMaskedLM.from_pretrained(str(tmp_path / "out"))
    assert isinstance(hf, BlockBertHFForMaskedLM)
    ids, mask, types = inputs()
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask, labels=ids)
        torch.testing.assert_close(out.loss, model(ids, mask, labels=ids).loss)
        assert isinstance(hf(ids, return_dict=False), tuple)
    hf.save_pretrained(tmp_path / "hf")  # transformers' own writer: the same keys and a config blockbert reads
    again = BlockBertForMaskedLM.from_pretrained(str(tmp_path / "hf")).eval()
    assert_same_outputs(ours(again, ids, mask, types), ours(model, ids, mask, types), mask)
    qa = tiny_model(BlockBertForQuestionAnswering, "block")
    qa.save_pretrained(tmp_path / "qa")
    hf_qa = transformers.AutoModelForQuestionAnswering.from_pretrained(str(tmp_path / "qa"))
    starts, ends = torch.tensor([3, 5]), torch.tensor([4, 9])
    with torch.no_grad():
        torch.testing.assert_close(
            hf_qa(input_ids=ids, attention_mask=mask, start_positions=starts, end_positions=ends).loss,
            qa(ids, mask, start_positions=starts, end_positions=ends).loss,
        )


def test_exports_from_before_the_registration_still_load(tmp_path):
    """The config.json layout is unchanged; an old export without block_seq_len (N = its positions) and a
    field this version does not know load with both loaders, alike."""
    model = tiny_model(BlockBertForQuestionAnswering, "block")
    model.save_pretrained(tmp_path / "old")
    values = {k: v for k, v in model.config.to_dict().items() if k != "block_seq_len"}
    old = {"model_type": "blockbert", "architectures": ["BlockBertForQuestionAnswering"], "blockbert": values}
    old["blockbert"]["a_later_field"] = 1
    (tmp_path / "old" / "config.json").write_text(json.dumps(old, indent=2) + "\n")
    mine = BlockBertForQuestionAnswering.from_pretrained(str(tmp_path / "old")).eval()
    hf = transformers.AutoModelForQuestionAnswering.from_pretrained(str(tmp_path / "old"))
    assert mine.config.block_seq_len == hf.config.to_blockbert().block_seq_len == 64
    ids, mask, types = inputs()
    assert_same_outputs(theirs(hf, ids, mask, types), ours(mine, ids, mask, types), mask)


def test_registration_is_idempotent():
    register_auto_classes()
    register_auto_classes()
    assert isinstance(transformers.AutoConfig.for_model("blockbert"), BlockBertHFConfig)
    assert set(blockbert.__all__) <= set(dir(blockbert))
    assert all(getattr(blockbert, name) is not None for name in blockbert.__all__)


def python(code: str, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "BLOCKBERT_CLI"}
    environ.update(env, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_the_command_line_imports_neither_torch_nor_transformers():
    python(
        "import sys, blockbert\n"
        f"assert blockbert.__file__.startswith({str(ROOT)!r}), blockbert.__file__\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
        "blockbert.BlockBertConfig(attention='block', heads='10:2')\n"
        "assert 'torch' not in sys.modules\n"
        "from blockbert import BlockBertModel, PRESETS, preset_config\n"
        "assert 'torch' in sys.modules and 'transformers' not in sys.modules, 'model.py imports transformers'\n",
        BLOCKBERT_CLI="1",
    )
    python(  # without the variable, import blockbert registers the Auto classes
        "import sys, blockbert\n"
        "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
        "assert 'blockbert' in CONFIG_MAPPING\n"
    )


def test_export_writes_a_model_card(blockbert, tmp_path):
    run_dir = tmp_path / "run"
    overrides = ["model.attention=block", "model.heads=3:1", "data.max_seq_length=64", "trainer.max_steps=2"]
    overrides += ["logger=none", "progress_bar=false", "data.generated_documents=40"]
    blockbert(tmp_path, "pretrain", *overrides, f"hydra.run.dir={run_dir}")
    blockbert(tmp_path, "export", str(run_dir), str(tmp_path / "out"))
    card = (tmp_path / "out" / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "library_name: blockbert" in front and "- blockbert" in front and "- block-attention" in front
    for text in (
        "`BlockBertForMaskedLM`",
        "block: n=2 blocks",
        "head config 3:1",
        "| n (blocks) | 2 |",
        "| N | 64 (block_seq_len",
        "2 layers, hidden 64, 4 heads",
        "| Preset | tiny |",
        "tiny_corpus (generated, 40 documents)",
        "| val/ppl |",
        "| step | 2 |",
        "blockbert pretrain " + " ".join(overrides),
        "import blockbert",
        "AutoModelForMaskedLM.from_pretrained",
        "BlockBertForMaskedLM.from_pretrained",
    ):
        assert text in body, text
    assert str(tmp_path) not in card  # no local paths (metrics.json's run_dir is left out)
    hf = transformers.AutoModelForMaskedLM.from_pretrained(str(tmp_path / "out"))
    assert hf.config.to_blockbert().block_seq_len == 64
    written = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    out = blockbert(tmp_path, "export", str(run_dir), str(tmp_path / "out"), check=False)  # before: written over
    assert out.returncode == 2 and "holds files already (README.md, config.json" in out.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == written
    assert "BlockBertForMaskedLM.from_pretrained" in blockbert(tmp_path, "export", str(run_dir), str(tmp_path / "out"),
                                                                "--overwrite").stdout  # fmt: skip

    (run_dir / "metrics.json").unlink()  # a run without its records still exports
    shutil.rmtree(run_dir / ".hydra")
    blockbert(tmp_path, "export", str(run_dir), str(tmp_path / "bare"))
    bare = (tmp_path / "bare" / "README.md").read_text()
    assert bare.count("not recorded") >= 4 and "`BlockBertForMaskedLM`" in bare and "head config 3:1" in bare


def test_a_multirun_directory_given_for_a_run_names_its_jobs(tmp_path):
    """Before: "'sweep': no checkpoint (expected a blockbert run directory ...)" for `export`, `init_from`."""
    from blockbert.formats.checkpoints import model_from_run

    for job in ("0", "1"):
        (tmp_path / "sweep" / job / ".hydra").mkdir(parents=True)
        (tmp_path / "sweep" / job / ".hydra" / "overrides.yaml").write_text("- model.heads=3:1\n")
    jobs = f"{tmp_path / 'sweep' / '0'}, {tmp_path / 'sweep' / '1'}"
    with pytest.raises(FileNotFoundError, match=re.escape(f"is a sweep or multirun directory: give one of its jobs' "
                                                          f"directories ({jobs})")):  # fmt: skip
        model_from_run(str(tmp_path / "sweep"))


def test_model_card_of_a_fine_tuned_and_of_a_dense_model(tmp_path):
    run = tmp_path / "ft"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        "init_from: runs/pretrain/x\ntask:\n  name: squad11\n  hub_name: rajpurkar/squad\ndata:\n  max_seq_length: 64\n"
    )
    (run / ".hydra" / "overrides.yaml").write_text("- task=squad11\n- init_from=runs/pretrain/x\n")
    (run / "metrics.json").write_text(json.dumps({"dev/exact_match": 12.5, "dev/f1": 20.25, "run_dir": str(run)}))
    card = model_card(tiny_model(BlockBertForQuestionAnswering, "sparse"), run)
    assert "pipeline_tag: question-answering" in card and "- rajpurkar/squad" in card
    for text in ("sparse: Sparse Transformer", "squad11 (hub: rajpurkar/squad)", "| dev/f1 | 20.25 |"):
        assert text in card, text
    assert "blockbert finetune task=squad11 init_from=runs/pretrain/x" in card
    assert "AutoModelForQuestionAnswering" in card and str(run) not in card
    assert "| Initialised from | runs/pretrain/x |" in card
    # a fine-tuning run from a Hugging Face checkpoint (before: no "Initialised from" row), and its metrics.json's
    # settings (before: rows of the metrics table)
    (run / ".hydra" / "config.yaml").write_text("init_from: null\nmodel:\n  init_from: ckpt/minilm\n")
    records = {"dev/f1": 20.25, "step": 6, "status": "finished", "init_from": None, "batch_size": 32}
    (run / "metrics.json").write_text(json.dumps({**records, "eval_timing": {"dev": 1.5}}))
    card = model_card(tiny_model(BlockBertForQuestionAnswering, "sparse"), run)
    assert "| Initialised from | ckpt/minilm |" in card
    metrics = card.split("## Metrics")[1].split("## Command")[0]
    assert "| dev/f1 | 20.25 |" in metrics and "| step | 6 |" in metrics and "Run status: finished" in metrics
    assert "init_from" not in metrics and "batch_size" not in metrics and "eval_timing" not in metrics
    dense = model_card(tiny_model(BlockBertForMaskedLM, "dense"), tmp_path / "missing")
    assert "library_name: transformers" in dense and "import blockbert" not in dense
    assert "plain Hugging Face BERT directory" in dense and dense.count("not recorded") >= 4
    (run / "metrics.json").write_text("{not json")  # unreadable records are "not recorded" too
    (run / ".hydra" / "config.yaml").write_text(": : :\n- [")
    assert "not recorded" in model_card(tiny_model(BlockBertModel, "block"), run)


# ---------------------------------------------------------------------------------- exports that fit the HF tools
STANDARD = {  # config.json's standard name: the BlockBertConfig field
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "vocab_size": "vocab_size",
    "max_position_embeddings": "max_position_embeddings",
    "intermediate_size": "intermediate_size",
}


@pytest.mark.parametrize("kind", ["block", "sparse"])
def test_auto_config_of_an_export_has_the_standard_fields(tmp_path, kind):
    model = tiny_model(BlockBertForMaskedLM, kind)
    model.save_pretrained(tmp_path / "out")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["blockbert"] == model.config.to_dict()  # the source of truth for loading, as before
    config = transformers.AutoConfig.from_pretrained(str(tmp_path / "out"))
    assert isinstance(config, BlockBertHFConfig)
    for name, field in STANDARD.items():
        assert written[name] == getattr(config, name) == getattr(model.config, field), name
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 2, 4)
    assert (config.vocab_size, config.max_position_embeddings) == (100, 64)

    # the node wins over the names beside it; an export without them (older) has the attributes all the same
    written["hidden_size"], written["num_hidden_layers"] = 999, 7
    (tmp_path / "out" / "config.json").write_text(json.dumps(written))
    config = transformers.AutoConfig.from_pretrained(str(tmp_path / "out"))
    assert (config.hidden_size, config.num_hidden_layers) == (32, 2)
    old = {key: written[key] for key in ("model_type", "architectures", "blockbert")}
    (tmp_path / "out" / "config.json").write_text(json.dumps(old))
    config = transformers.AutoConfig.from_pretrained(str(tmp_path / "out"))
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (32, 2, 100)
    hf = transformers.AutoModelForMaskedLM.from_pretrained(str(tmp_path / "out"))
    hf.save_pretrained(tmp_path / "again")  # transformers' writer keeps both
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert again["num_attention_heads"] == 4 and again["blockbert"]["num_heads"] == 4


@pytest.mark.parametrize(
    "kind, extra, longest",
    [("block", {"block_seq_len": 48}, 48), ("block", {}, 64), ("sparse", {}, 64), ("dense", {}, 64)],
)
def test_exported_tokenizer_takes_the_models_longest_sequence(tmp_path, tiny_tokenizer, kind, extra, longest):
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    source = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert source["model_max_length"] > 10**6
    # a checkpoint's truncation length (sentence-transformers' MiniLM keeps 128), left as it was before
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps({**source, "max_length": 7}))
    model = BlockBertForMaskedLM(BlockBertConfig(**TINY, **KINDS[kind], **extra))
    model.save_pretrained(tmp_path / "out", tmp_path / "tok")
    written = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert written["model_max_length"] == longest and "max_length" not in written
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert tokenizer.model_max_length == longest
    assert len(tokenizer("the model reads " * 40, truncation=True)["input_ids"]) == longest


@pytest.mark.parametrize("type_vocab_size", [2, 1])
def test_exported_trained_tokenizer_gives_the_segment_ids_the_model_was_trained_with(
    tmp_path, tiny_tokenizer, type_vocab_size
):
    """A run's trained WordPiece has no tokenizer class that names token_type_ids: before, ``tokenizer(question,
    paragraph)`` of an export gave none, the model read the paragraph as segment 0, and a fine-tuned QA export
    answered 152 of 402 dev questions as its run did (402 with the ids)."""
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    model = BlockBertForQuestionAnswering(BlockBertConfig(**TINY, **KINDS["block"], type_vocab_size=type_vocab_size))
    model.save_pretrained(tmp_path / "out", tmp_path / "tok")
    encoded = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))("a model?", "the model reads")
    if type_vocab_size == 1:  # RoBERTa's single segment: left to the tokenizer
        assert "token_type_ids" not in encoded
        return
    question = len(tiny_tokenizer("a model?")["input_ids"])  # [CLS] question [SEP]
    assert encoded["token_type_ids"] == [0] * question + [1] * (len(encoded["input_ids"]) - question)


def write_run_config(run: Path, config: str) -> Path:
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(config)
    return run


def test_model_card_names_real_data_and_no_preset_that_does_not_describe_the_model(tmp_path):
    from huggingface_hub import ModelCard

    from blockbert.formats.presets import PRESETS

    model = tiny_model(BlockBertForMaskedLM, "block")
    local = write_run_config(  # roberta_1seq with block heads and other sizes, on local files
        tmp_path / "local",
        "model:\n  name: roberta_1seq\n  init_from: null\n"
        "data:\n  name: text_files\n  source: files\n  files: [corpus/a.txt, corpus/b.txt]\n  hub_name: null\n",
    )
    card = ModelCard(model_card(model, local, PRESETS))
    assert card.data.datasets is None and "datasets" not in card.data.to_dict()
    assert card.data.library_name == "blockbert" and card.data.pipeline_tag == "fill-mask"
    assert "| Data | text_files (local files: corpus/a.txt, corpus/b.txt) |" in card.text
    assert "| Preset | roberta_1seq" not in card.text and "model.name 'roberta_1seq' does not describe it" in card.text
    assert "attention block (preset: dense)" in card.text
    assert "# BlockBERT: BlockBertForMaskedLM, block attention, n=2, heads 3:1 (4 heads)" in card.text

    hub = write_run_config(
        tmp_path / "hub",
        "model:\n  name: x\ndata:\n  name: wikitext103\n  source: hub\n  hub_name: wikitext\n"
        "  hub_config: wikitext-103-raw-v1\n",
    )
    card = ModelCard(model_card(model, hub, PRESETS))
    assert card.data.datasets == ["wikitext"] and "wikitext103 (hub: wikitext; config wikitext-103-raw-v1)" in card.text
    assert "model.name 'x' is not a preset here" in card.text

    finetune = write_run_config(  # SQuAD from local files: its hub name is not what the run read
        tmp_path / "ft",
        "task:\n  name: squad11\n  hub_name: rajpurkar/squad\n  train_file: train-v1.1.json\n"
        "  dev_file: dev-v1.1.json\n",
    )
    card = ModelCard(model_card(tiny_model(BlockBertForQuestionAnswering, "sparse"), finetune, PRESETS))
    assert card.data.datasets is None and card.data.pipeline_tag == "question-answering"
    assert "squad11 (local files: train-v1.1.json, dev-v1.1.json)" in card.text and "rajpurkar" not in card.text


@pytest.fixture(scope="module")
def exported_run(blockbert, tmp_path_factory) -> dict:
    """{kind: export directory}: a tiny block-attention pretrain run on local text files (N = 64 = its positions)
    exported by `blockbert export`, and its weights as a dense model saved with the run's tokenizer."""
    tmp = tmp_path_factory.mktemp("export")
    words = "the model reads a long sequence of words and learns what comes next in every block"
    (tmp / "corpus.txt").write_text("\n\n".join(f"{words} {i}. {words}." for i in range(60)))
    run_dir = tmp / "run"
    overrides = ["data=text_files", f"data.files={tmp / 'corpus.txt'}", "data.tokenizer_vocab_size=200"]
    overrides += ["model.attention=block", "model.heads=3:1", "model.max_position_embeddings=64"]
    overrides += ["data.max_seq_length=64", "trainer.max_steps=1", "logger=none", "progress_bar=false"]
    blockbert(tmp, "pretrain", *overrides, f"hydra.run.dir={run_dir}")
    blockbert(tmp, "export", str(run_dir), str(tmp / "block"))
    dense = BlockBertForMaskedLM.from_pretrained(str(tmp / "block"), attention="dense")
    dense.save_pretrained(tmp / "dense", run_dir / "tokenizer")
    return {"block": tmp / "block", "dense": tmp / "dense"}


@pytest.mark.parametrize("kind", ["block", "dense"])
def test_fill_mask_pipeline_runs_on_an_export_and_truncates_to_n(exported_run, kind):
    out = exported_run[kind]
    fill = transformers.pipeline("fill-mask", model=str(out))  # block: the Auto classes `import blockbert` registered
    assert isinstance(fill.model, BlockBertHFForMaskedLM if kind == "block" else transformers.BertForMaskedLM)
    assert fill.tokenizer.model_max_length == 64  # the run's tokenizer said 10**30
    short = fill("the model [MASK] a long sequence.")
    assert len(short) == 5 and all(0 <= guess["score"] <= 1 for guess in short)
    text = "the model [MASK] a long sequence of words. " + "it learns what comes next in every block. " * 20
    assert len(fill.tokenizer(text)["input_ids"]) > 64  # more than N: the model refuses it whole ...
    guesses = fill(text, tokenizer_kwargs={"truncation": True})  # ... and takes its first N tokens
    assert len(guesses) == 5 and guesses[0]["sequence"].startswith("the model")


def test_export_of_a_local_files_run_fits_the_hub_tools(exported_run):
    from huggingface_hub import ModelCard

    out = exported_run["block"]
    card = ModelCard.load(out / "README.md")  # a run on local files: no hub dataset in the metadata
    assert card.data.datasets is None and card.data.library_name == "blockbert"
    assert f"| Data | text_files (local files: {out.parent / 'corpus.txt'}) |" in card.text
    assert "| Preset | tiny |" in card.text  # tiny is block attention 3:1, 2 layers, hidden 64, 4 heads
    config = transformers.AutoConfig.from_pretrained(str(out))
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 2, 4)
    assert config.max_position_embeddings == 64 and config.vocab_size == config.blockbert["vocab_size"] < 200
    assert transformers.AutoTokenizer.from_pretrained(str(out)).model_max_length == config.blockbert["block_seq_len"]


# ---------------------------------------------------------------------------------- what an export says it exported
def checkpoint_at(run: Path, name: str, step: int, shift: float) -> Path:
    """checkpoints/NAME: the run's last.ckpt as of ``step``, its weights moved by ``shift`` (told apart by them)."""
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    state["global_step"] = step
    state["state_dict"] = {k: v + shift if v.is_floating_point() else v for k, v in state["state_dict"].items()}
    torch.save(state, run / "checkpoints" / name)
    return run / "checkpoints" / name


def export(run, out: Path, capsys) -> tuple[str, str, str, dict]:
    """(stdout, stderr, the card, the exported weights) of `blockbert export RUN OUT`, in this process."""
    from blockbert.app.commands.export import run_export

    run_export(str(run), str(out))
    printed = capsys.readouterr()
    weights = BlockBertForMaskedLM.from_pretrained(str(out)).state_dict()
    return printed.out, printed.err, (out / "README.md").read_text(), weights


def same_weights(weights: dict, ckpt: Path) -> bool:
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    return all(torch.equal(state[f"model.{k}"], v) for k, v in weights.items())


@pytest.fixture
def run_copy(exported_run, tmp_path) -> Path:
    """A copy of the exported_run's 1-step run directory, to change (its metrics.json and last.ckpt: step 1)."""
    shutil.copytree(exported_run["block"].parent / "run", tmp_path / "run")
    return tmp_path / "run"


def set_metrics(run: Path, **values) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, **values}))


def test_an_interrupted_run_exports_the_checkpoint_a_resume_continues_from(run_copy, tmp_path, capsys):
    """Before: last.ckpt's weights (step 1) under a card saying step 7, status interrupted; and the output named no
    checkpoint. init_from (load_run) reads the same newest checkpoint."""
    from blockbert.formats.checkpoints import load_run

    interrupted = checkpoint_at(run_copy, "interrupted.ckpt", 7, 0.5)
    (run_copy / "checkpoints" / "step-9.ckpt").write_bytes(b"damaged")  # more steps, unreadable: passed over
    set_metrics(run_copy, step=7, status="interrupted")
    out, _, card, weights = export(run_copy, tmp_path / "out", capsys)
    assert same_weights(weights, interrupted) and not same_weights(weights, run_copy / "checkpoints" / "last.ckpt")
    assert f"weights: {interrupted} (step 7)" in out.splitlines()
    assert "| Weights | step 7 (checkpoints/interrupted.ckpt) |" in card
    assert "Run status: interrupted" in card and "| step | 7 |" in card and "| val/ppl |" in card
    assert load_run(str(run_copy))[0] == interrupted  # what fine-tuning from the run (init_from) starts from


def test_the_card_of_an_earlier_checkpoint_shows_no_metrics_of_the_run_end(run_copy, tmp_path, capsys):
    """Before: the card of step-1's weights showed the metrics.json of step 3 (val/ppl ...) as theirs."""
    earlier = run_copy / "checkpoints" / "last.ckpt"
    set_metrics(run_copy, step=3)
    out, _, card, weights = export(earlier, tmp_path / "out", capsys)
    metrics = card.split("## Metrics")[1].split("## Command")[0]
    assert "| val/ppl |" not in metrics and "| step |" not in metrics
    assert "The run's latest metrics (metrics.json, step 3) are not those of these weights (step 1)" in metrics
    assert "| Weights | step 1 (checkpoints/last.ckpt) |" in card
    assert same_weights(weights, earlier) and f"weights: {earlier} (step 1)" in out


def test_the_card_of_a_resumed_run_gives_each_command(run_copy, tmp_path, capsys):
    """Before: the card gave only the command the run was started with, not the resume's (its max_steps)."""
    (run_copy / ".hydra" / "resume-1").mkdir()
    (run_copy / ".hydra" / "resume-1" / "overrides.yaml").write_text("- trainer.max_steps=5\n")
    _, _, card, _ = export(run_copy, tmp_path / "out", capsys)
    started = " ".join(yaml_list(run_copy / ".hydra" / "overrides.yaml"))
    assert f"# started\nblockbert pretrain {started}\n# resumed (1)\nblockbert pretrain trainer.max_steps=5\n" in card


def test_a_run_still_training_is_said_and_the_card_shows_its_quality_metrics_only(run_copy, tmp_path, capsys):
    """Before: nothing said that the run was still training, and the metrics table gave the learning rates, the
    epoch, the speed and the status among the metrics."""
    set_metrics(run_copy, status="running", epoch=0, **{"lr-AdamW/pg1": 0.001, "train/tokens_per_s": 99.0})
    _, err, card, _ = export(run_copy, tmp_path / "out", capsys)
    metrics = card.split("## Metrics")[1].split("## Command")[0]
    assert "**The run was still training when it was exported**" in metrics
    assert "export: warning:" in err and "is still training (metrics.json: status running, step 1" in err
    assert "| val/ppl |" in metrics and "| train/loss |" in metrics and "| step | 1 |" in metrics
    for left_out in ("lr-AdamW", "tokens_per_s", "epoch", "status |", "model |", "seq_len"):
        assert left_out not in metrics, left_out


def yaml_list(path: Path) -> list:
    import yaml

    return yaml.safe_load(path.read_text())


def test_a_block_export_is_fine_tuned_as_the_block_model_it_is(exported_run, blockbert, tmp_path):
    """Under the default experiment, a blockbert export keeps its attention and N (before: the dense roberta_1seq
    settings ran it dense at A.4's N=512); a dense export stays dense; model= or another model.attention choose.
    The fixture's model has the demo's tiny sizes: it goes on with the demo's values, as a demo run given to
    init_from does (before: A.4's lr 3e-5, which leaves it almost untrained); other sizes take A.4's."""
    block = f"model.init_from={exported_run['block']}"
    shown = yaml.safe_load(blockbert(tmp_path, "finetune", block, "--cfg", "job").stdout)
    assert (shown["model"]["attention"], shown["model"]["heads"], shown["model"]["block_seq_len"]) == (
        "block",
        "3:1",
        64,
    )
    assert shown["data"]["max_seq_length"] == 64 and shown["optim"]["lr"] == 1e-3  # the demo's
    assert shown["trainer"]["max_steps"] == 300 and shown["model"]["name"] == "tiny"
    dense = yaml.safe_load(
        blockbert(tmp_path, "finetune", f"model.init_from={exported_run['dense']}", "--cfg", "job").stdout
    )
    assert dense["model"]["attention"] == "dense" and dense["data"]["max_seq_length"] == 128  # the demo's N
    assert dense["optim"]["lr"] == 1e-3
    paper = yaml.safe_load(blockbert(tmp_path, "finetune", block, "model=blockbert_n2", "--cfg", "job").stdout)
    assert paper["optim"]["lr"] == 3e-5 and paper["model"]["heads"] == "3:1"  # A.4; 10:2 scaled to the 4 heads
    chosen = yaml.safe_load(blockbert(tmp_path, "finetune", block, "model.attention=dense", "--cfg", "job").stdout)
    assert chosen["model"]["attention"] == "dense"
    same = yaml.safe_load(blockbert(tmp_path, "finetune", block, "model.attention=block", "--cfg", "job").stdout)
    assert (same["model"]["heads"], same["data"]["max_seq_length"]) == ("3:1", 64)  # its own kind: still its heads, N
    run_dir = tmp_path / "ft"
    args = ("task.generated_questions=40", "trainer.max_epochs=1", "logger=none", "progress_bar=false")
    out = blockbert(tmp_path, "finetune", block, *args, f"hydra.run.dir={run_dir}")
    assert "attention block, heads 3:1 (n=2), blocks cut from N=64" in out.stdout
    assert (run_dir / "metrics.json").is_file()
