"""Whole-run benchmark (mode=pretrain|finetune): the three loops run on the same data and the ratios follow."""

import json

import pytest

from blockbert.measure.run_benchmark import with_ratios

PRETRAIN = ["pretrain.seq_len=128", "pretrain.steps=2", "pretrain.documents=200", "pretrain.rows_per_document=4"]
FINETUNE = ["finetune.seq_len=128", "finetune.batch_size=4", "finetune.steps=2", "finetune.questions=64"]


def test_ratios_compare_throughput_with_the_peer_and_step_time_with_the_bare_loop():
    records = with_ratios(
        [
            {"loop": "hf_trainer", "model": "hf_bert", "median_s": 2.0, "throughput": 100.0},
            {"loop": "blockbert", "model": "blockbert_n3", "median_s": 1.05, "throughput": 190.0},
            {"loop": "bare", "model": "blockbert_n3", "median_s": 1.0, "throughput": 200.0},
            {"loop": "blockbert", "model": "roberta_1seq", "error": "OOM"},
        ]
    )
    assert [r["vs_peer"] for r in records] == [1.0, 1.9, 2.0, None]
    assert [r["vs_bare"] for r in records] == [None, 1.05, None, None]


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode, settings",
    [("pretrain", PRETRAIN), ("finetune", FINETUNE)],
)
def test_each_loop_trains_the_same_data_in_its_own_process(blockbert, tmp_path, mode, settings):
    models = f"{mode}.models=[blockbert_n3]"
    done = blockbert(
        tmp_path, "benchmark", f"mode={mode}", models, *settings, "size=cpu_tiny", "warmup=1", "hydra.run.dir=run"
    )
    results = json.loads((tmp_path / "run" / "benchmark.json").read_text())
    records = {(r["loop"], r["model"]): r for r in results["records"]}
    assert set(records) == {("hf_trainer", "hf_bert"), ("blockbert", "blockbert_n3"), ("bare", "blockbert_n3")}
    for record in records.values():
        assert "error" not in record, record
        assert record["steps"] == 2 and record["median_s"] > 0 and record["peak_memory_mb"] > 0
        assert record["unit"] == ("tokens" if mode == "pretrain" else "examples")
    ours, bare = records[("blockbert", "blockbert_n3")], records[("bare", "blockbert_n3")]
    for record in records.values():  # what each loop counted in its own batches
        assert 0 < record["per_step"] <= (128 if mode == "pretrain" else 4)  # batch 1 x N=128, or 4 windows
        assert record["throughput"] > 0
    assert ours["vs_bare"] == pytest.approx(ours["median_s"] / bare["median_s"])
    if mode == "pretrain":  # the same sequences in the same order; ours counts them on the host, the bare loop on its
        assert ours["per_step"] == bare["per_step"]  # device

    if mode == "finetune":
        assert ours["eval_questions_per_s"] > 0
    assert set(bare["parts_s"]) == {"data", "forward", "backward", "optimizer"}
    assert 0 < bare["fill"] <= 1 and "of their positions (the rest: padding)" in done.stdout
    assert sum(bare["parts_s"].values()) == pytest.approx(bare["median_s"], rel=0.5)
    assert "× HF Trainer" in done.stdout and "step ÷ bare" in done.stdout
