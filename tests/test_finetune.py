"""Fine-tuning end to end at tiny scale, and `blockbert evaluate` agreeing with it."""

import json
import re

import torch
import yaml
from typer.testing import CliRunner

import cli
from blockbert import BlockBertModel
from blockbert.formats.checkpoints import load_pretrain_run

runner = CliRunner()
FAST = ["progress_bar=false", "task.generated_questions=160", "trainer.max_epochs=2", "logger=csv"]


def test_squad2_finetune_metrics_equal_the_evaluate_command(blockbert, tmp_path):
    run_dir = tmp_path / "ft"
    out = blockbert(tmp_path, "finetune", *FAST, "task.version=2.0", f"hydra.run.dir={run_dir}")
    assert out.stdout.strip().splitlines()[-1] == str(run_dir.resolve())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    dev_file = next((tmp_path / "cache" / "qa").glob("generated-v2.0-*/dev.json"))
    for name in ("predictions.json", "nbest_predictions.json", "null_odds.json"):
        assert (run_dir / "dev" / name).is_file()
    predictions = json.loads((run_dir / "dev" / "predictions.json").read_text())
    assert all(isinstance(v, str) for v in predictions.values())
    scored = json.loads(
        blockbert(tmp_path, "evaluate", str(dev_file), str(run_dir / "dev" / "predictions.json")).stdout
    )
    for key in ("exact", "f1", "total", "HasAns_exact", "NoAns_f1"):
        assert metrics[f"dev/{key}"] == scored[key]
    with_probs = json.loads(
        blockbert(
            tmp_path,
            "evaluate",
            str(dev_file),
            str(run_dir / "dev" / "predictions.json"),
            "--na-prob",
            str(run_dir / "dev" / "null_odds.json"),
        ).stdout
    )
    assert "best_f1_thresh" in with_probs and metrics["dev/null_threshold"] == metrics["dev/best_f1_thresh"]


def test_two_process_fine_tuning_on_cpu_splits_the_batch_and_scores_all_of_dev(blockbert, tmp_path):
    """trainer=ddp with 2 CPU processes: the batch of 32 is 16 windows on each (each pass drops the windows that fill
    no whole batch), every process scores all of dev, and rank 0's prediction files give the logged scores."""
    run_dir = tmp_path / "ddp"
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
    out = blockbert(tmp_path, "finetune", *FAST, *ddp, f"hydra.run.dir={run_dir}")
    assert out.stdout.strip().splitlines()[-1] == str(run_dir.resolve())
    windows = int(re.search(r"train: (\d+) windows", (run_dir / "finetune.log").read_text()).group(1))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["step"] == 2 * (windows // 32)  # 2 epochs
    dev_file = next((tmp_path / "cache" / "qa").glob("generated-v1.1-*/dev.json"))
    scored = json.loads(
        blockbert(tmp_path, "evaluate", str(dev_file), str(run_dir / "dev" / "predictions.json")).stdout
    )
    assert metrics["dev/exact_match"] == scored["exact_match"] and metrics["dev/f1"] == scored["f1"]
    rows = (run_dir / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    column = rows[0].split(",").index("dev/f1")
    scored_rows = [row for row in rows[1:] if row.split(",")[column]]
    assert len(scored_rows) == 3  # dev scored at the end of each of the 2 epochs, then the final scores
    assert "sync_dist" not in out.stderr and "Traceback" not in out.stderr


def test_finetune_from_a_pretrain_run(blockbert, tmp_path):
    pre = tmp_path / "pre"
    blockbert(
        tmp_path,
        "pretrain",
        "progress_bar=false",
        "logger=none",
        "trainer.max_steps=2",
        "data.generated_documents=40",
        f"hydra.run.dir={pre}",
    )
    config, encoder, tokenizer = load_pretrain_run(str(pre))
    model = BlockBertModel(config)
    model.load_state_dict(encoder)  # strict: every encoder weight is there
    assert len(tokenizer) == config.vocab_size
    run_dir = tmp_path / "ft"
    out = blockbert(tmp_path, "finetune", *FAST, "trainer.max_epochs=1", f"init_from={pre}", f"hydra.run.dir={run_dir}")
    assert "fine-tuning from" in out.stderr + out.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 <= metrics["dev/f1"] <= 100
    first = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]["model_config"]
    assert first == config.to_dict()
    used = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())  # the demo's values, at the run's N
    assert used["data"]["max_seq_length"] == 128 and used["optim"]["lr"] == 1e-3  # a demo run goes on as the demo
    assert used["model"]["name"] == "tiny" and used["model"]["heads"] == "3:1"  # the run's (was: roberta_1seq)

    def composed(*args):
        return blockbert(tmp_path, "finetune", f"init_from={pre}", *args, "--cfg", "job", check=False)

    # the run's model is built: another one asked for is refused (before: replaced by the run's, unseen)
    for given, named in (
        (["model.heads=2:2"], "model.heads='2:2' (the run's is '3:1')"),
        (["model=blockbert_n3"], "model.name='blockbert_n3' (the run's is 'tiny')"),
    ):
        out = composed(*given)
        refusal = f"init_from={pre} builds that run's model, and the command line gives {named}: drop it"
        assert out.returncode == 2 and refusal in out.stderr, out.stderr
    out = composed("model.attention_dropout=0.2", "model.layout=padded")  # how it computes: the user's
    used = yaml.safe_load(out.stdout)["model"]
    assert out.returncode == 0 and used["attention_dropout"] == 0.2 and used["layout"] == "padded"
    from blockbert.formats.compose import compose
    from blockbert.train.finetune import starting_point

    cfg = compose("finetune", [f"init_from={pre}", "model.attention_dropout=0.2", "model.layout=padded"], finished=True)
    built = starting_point(cfg, heads_given=False)[0]  # and the model the run builds has them
    assert (built.attention_dropout, built.layout, built.heads) == (0.2, "padded", config.heads)
    config_file = pre / ".hydra" / "config.yaml"  # a run of another model: fine-tuned with A.4's values
    config_file.write_text(config_file.read_text().replace("name: tiny", "name: blockbert_n2", 1))
    out = composed()
    used = yaml.safe_load(out.stdout)
    assert out.returncode == 0 and used["optim"]["lr"] == 3e-05 and used["model"]["name"] == "blockbert_n2"
    out = composed("data.max_seq_length=256")  # the advice fits a run from a checkpoint (was: model.max_position_...)
    advice = "exceeds the model's 128 positions: init_from keeps the pre-trained model's length: run at that length"
    assert out.returncode == 2 and f"data.max_seq_length=256 {advice}" in out.stderr, out.stderr


def test_evaluate_errors_and_unknown_ids(tmp_path):
    gold = tmp_path / "dev.json"
    gold.write_text(
        json.dumps(
            {
                "version": "1.1",
                "data": [
                    {
                        "paragraphs": [
                            {
                                "context": "a b",
                                "qas": [{"id": "q1", "question": "?", "answers": [{"text": "b", "answer_start": 2}]}],
                            }
                        ]
                    }
                ],
            }
        )
    )
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps({"q1": "b", "zz": "x"}))
    result = runner.invoke(cli.app, ["evaluate", str(gold), str(preds)])
    assert result.exit_code == 0
    assert json.loads(result.stdout[result.stdout.index("{") :]) == {"exact_match": 100.0, "f1": 100.0}
    assert "1 prediction id(s) not in" in result.output and "'zz'" in result.output
    result = runner.invoke(cli.app, ["evaluate", str(gold), str(tmp_path / "none.json")])
    assert result.exit_code == 2 and "none.json" in result.output
    preds.write_text("[1, 2")
    result = runner.invoke(cli.app, ["evaluate", str(gold), str(preds)])
    assert result.exit_code == 2 and "p.json: malformed JSON" in result.output


def test_missing_task_file_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(
        cli.app, ["finetune", "task=squad11", "task.train_file=/no/train.json", "task.dev_file=/no/dev.json"]
    )
    assert result.exit_code == 2
    assert "QA data file '/no/train.json' does not exist" in result.output
