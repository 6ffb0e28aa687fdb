"""Fine-tuning end to end at tiny scale, and `blockbert evaluate` agreeing with it."""

import json
import os
import re
import subprocess
import sys

import pytest
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
    assert "1 prediction id not in" in result.output and "'zz'" in result.output
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
    assert "blockbert finetune: error: task.train_file='/no/train.json': no such file" in result.output
    assert "plan:" not in result.output and not list(tmp_path.glob("runs/*/*"))  # before: after the memory fit


def two_question_squad(path, version, qid):
    """A SQuAD file of two questions on "a b": ``qid`` (unanswerable in 2.0, answer "b" in 1.1) and q2 (answer "b")."""
    b = [{"text": "b", "answer_start": 2}]
    first = {"id": qid, "question": "?", "answers": [] if version == "2.0" else b, "is_impossible": version == "2.0"}
    paragraphs = [{"context": "a b", "qas": [first, {"id": "q2", "question": "?", "answers": b}]}]
    path.write_text(json.dumps({"version": version, "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path


def test_evaluate_refuses_predictions_of_another_set_in_one_line(tmp_path):
    """A SQuAD 2.0 dev file with a 1.1 run's predictions: no id matches; 2.0 divided by zero (exit 1) and 1.1 scored 0
    silently. One line naming both files instead, the warnings about each id left out."""
    preds = tmp_path / "p11.json"
    preds.write_text(json.dumps({"v11-a": "b", "v11-b": "x"}))
    for version in ("2.0", "1.1"):
        data = two_question_squad(tmp_path / f"dev-v{version}.json", version, "n1")
        result = runner.invoke(cli.app, ["evaluate", str(data), str(preds)])
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines() == [
            f"blockbert evaluate: error: {preds}: no prediction id matches a question of {data} "
            "(first prediction id 'v11-a', first question id 'n1')"
        ]
    preds.write_text("{}")
    result = runner.invoke(cli.app, ["evaluate", str(data), str(preds)])
    assert result.exit_code == 2 and result.output.strip().endswith("(the file has no predictions)")


def test_evaluate_refuses_na_prob_without_squad2(tmp_path):
    """--na-prob is read only for SQuAD 2.0: with a 1.1 (or MRQA) file it was silently ignored."""
    data = two_question_squad(tmp_path / "dev-v1.1.json", "1.1", "q1")
    preds, odds = tmp_path / "p.json", tmp_path / "null_odds.json"
    preds.write_text(json.dumps({"q1": "b", "q2": "b"}))
    odds.write_text(json.dumps({"q1": 0.5, "q2": 0.5}))
    result = runner.invoke(cli.app, ["evaluate", str(data), str(preds), "--na-prob", str(odds)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"blockbert evaluate: error: --na-prob {odds}: no-answer probabilities are read only for SQuAD 2.0, and "
        f"{data} is read as squad1 (give --format squad2 if it is SQuAD 2.0)"
    ]
    result = runner.invoke(cli.app, ["evaluate", str(data), str(preds), "--na-prob", str(odds), "--format", "squad2"])
    assert result.exit_code == 0 and "best_f1_thresh" in result.output


def test_evaluate_says_how_missing_predictions_skew_the_best_threshold_scores(tmp_path):
    """The official 2.0 script counts every no-answer question as right before its threshold search but divides by
    the predicted ones: with the no-answer question unpredicted, best_exact is 200 (kept, as the official script
    computes it; said on stderr)."""
    data = two_question_squad(tmp_path / "dev-v2.0.json", "2.0", "n1")
    preds, odds = tmp_path / "p.json", tmp_path / "null_odds.json"
    preds.write_text(json.dumps({"q2": "b"}))
    odds.write_text(json.dumps({"q2": 0.1}))
    result = runner.invoke(cli.app, ["evaluate", str(data), str(preds), "--na-prob", str(odds)])
    assert result.exit_code == 0 and json.loads(result.stdout)["best_exact"] == 200.0
    assert f"{preds}: 1 question without a prediction (first: 'n1'); best_exact and best_f1 count their " in (
        result.stderr
    )


def mrqa_lines(prefix: str, paragraphs: int, split: str) -> str:
    """A tiny MRQA file: a header, then paragraphs about two persons, the answer's place varying, two questions each
    (one with an alias not in the paragraph)."""
    people, cities = ["Alma", "Boris", "Chen", "Dara", "Emil", "Farah"], ["Lisbon", "New Oslo", "Quito", "Port Lima"]
    lines = [{"header": {"dataset": "Tiny", "split": split}}]
    for i in range(paragraphs):
        a, b = people[i % 6], people[(i + 1 + i // 6) % 6]
        ca, cb = cities[i % 4], cities[(i // 4) % 4]
        context = f"{'Long ago, ' * (i % 3)}{a} lived in {ca}. Later {b} was born in {cb}, in year {i}."
        qas = []
        for j, (who, city) in enumerate(((a, ca), (b, cb))):
            start = context.index(f"in {city}") + 3
            qas.append(
                {
                    "qid": f"{prefix}{i}-{j}",
                    "question": f"Where is {who} from?",
                    "answers": [city, f"the city of {city}"],
                    "detected_answers": [{"text": city, "char_spans": [[start, start + len(city) - 1]]}],
                }
            )
        lines.append({"context": context, "qas": qas})
    return "".join(json.dumps(line) + "\n" for line in lines)


def test_mrqa_split_gold_files_rescore_to_the_run_metrics(blockbert, tmp_path):
    """An MRQA dev set is split into dev and test: each half's gold file beside its predictions is one `blockbert
    evaluate` reads (it was {id: answers}, which it refused), holding exactly that half's questions and answers, and
    it gives the run's EM/F1 exactly."""
    from blockbert.data.qa import read_qa_file

    train, dev = tmp_path / "tiny-train.jsonl", tmp_path / "tiny-dev.jsonl"
    train.write_text(mrqa_lines("t", 24, "train"))
    dev.write_text(mrqa_lines("d", 12, "dev"))
    run_dir = tmp_path / "mrqa"
    files = [f"task.train_file={train}", f"task.dev_file={dev}", f"hydra.run.dir={run_dir}"]
    out = blockbert(
        tmp_path, "finetune", "task=mrqa", *files, "trainer.max_steps=2", "logger=none", "progress_bar=false"
    )
    assert "dev/predictions.json, test/, checkpoints/) are in:" in out.stdout  # before: test/ was not named
    metrics = json.loads((run_dir / "metrics.json").read_text())
    full_gold, halves = read_qa_file(dev).gold, {}
    for split in ("dev", "test"):
        gold, predictions = run_dir / split / "gold.jsonl", run_dir / split / "predictions.json"
        result = runner.invoke(cli.app, ["evaluate", str(gold), str(predictions)])
        assert result.exit_code == 0, result.output
        assert result.output.startswith("{")  # no id of the predictions missing or unknown: no warning
        scored = json.loads(result.output)
        assert scored == {"exact_match": metrics[f"{split}/exact_match"], "f1": metrics[f"{split}/f1"]}
        halves[split] = read_qa_file(gold).gold
        assert halves[split] == {qid: full_gold[qid] for qid in halves[split]} and halves[split]
    assert sorted(halves["dev"] | halves["test"]) == sorted(full_gold) and not halves["dev"].keys() & halves["test"]


def squad_file(path, paragraphs: int, shift: int = 0):
    """A SQuAD 1.1 file of ``paragraphs`` paragraphs, a question each; ``shift`` moves every answer_start."""
    items = []
    for i in range(paragraphs):
        context = f"Paragraph {i} says the river runs through Paris."
        qa = {"id": f"q{i}", "question": "Which city?", "answers": [{"text": "Paris", "answer_start": 0}]}
        qa["answers"][0]["answer_start"] = context.index("Paris") + shift
        items.append({"title": f"t{i}", "paragraphs": [{"context": context, "qas": [qa]}]})
    path.write_text(json.dumps({"version": "1.1", "data": items}))
    return path


def test_a_task_with_nothing_to_train_or_score_is_refused_before_training(tmp_path, blockbert):
    """Before: a training file whose every answer missed its offset trained nothing and ended in a
    ZeroDivisionError; a dev file of one paragraph split in two (task.split_dev) trained the whole run, then ended in
    a TypeError with metrics.json saying finished."""
    from blockbert.data.qa_datamodule import load_task
    from blockbert.errors import ConfigError
    from blockbert.formats.compose import compose

    def task(train, dev, *more):
        files = [f"task.train_file={train}", f"task.dev_file={dev}"]
        return compose("finetune", ["task=squad11", *files, *more], finished=True).task

    good, missed = squad_file(tmp_path / "train.json", 4), squad_file(tmp_path / "missed.json", 3, shift=1)
    one = squad_file(tmp_path / "one.json", 1)
    with pytest.raises(ConfigError, match=r"missed\.json: none of its 3 questions can be trained on: every answer"):
        load_task(task(missed, good), tmp_path / "cache")
    with pytest.raises(ConfigError, match=r"one\.json: 1 paragraph cannot be split into a dev and a test half"):
        load_task(task(good, one, "task.split_dev=true"), tmp_path / "cache")
    assert set(load_task(task(good, good, "task.split_dev=true"), tmp_path / "cache")) == {"train", "dev", "test"}
    args = ["task=squad11", f"task.train_file={good}", f"task.dev_file={one}", "task.split_dev=true", "logger=csv"]
    out = blockbert(tmp_path, "finetune", *args, check=False)
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith("blockbert finetune: error: "), (
        out.stderr[-3000:]
    )
    assert not list(tmp_path.glob("runs/finetune/*"))  # a refused new run leaves no run directory


def test_a_finished_run_rescored_on_another_dev_file_has_that_files_loss(tmp_path, blockbert):
    """Before: dev/loss stayed the first dev file's (Lightning's validation, which a finished run does not run again)
    beside the new file's EM and F1. The final scoring computes each split's loss with the scores."""
    train, dev = squad_file(tmp_path / "train.json", 8), squad_file(tmp_path / "dev.json", 4)
    other = squad_file(tmp_path / "other.json", 7)  # other paragraphs, other questions
    run_dir = tmp_path / "run"
    args = ["task=squad11", f"task.train_file={train}", "trainer.max_steps=2", "logger=csv", f"hydra.run.dir={run_dir}"]
    blockbert(tmp_path, "finetune", *args, f"task.dev_file={dev}")
    first = json.loads((run_dir / "metrics.json").read_text())
    blockbert(tmp_path, "finetune", *args, f"task.dev_file={other}")
    again = json.loads((run_dir / "metrics.json").read_text())
    assert again["step"] == first["step"] == 2 and 0 < again["dev/loss"] != first["dev/loss"] > 0


def test_sigterm_while_scoring_dev_ends_in_the_interrupted_line(blockbert, tmp_path):
    """Before: a SIGTERM while a fine-tuned model scored dev went unnoticed (Lightning's prediction loop does not
    look at it): the run wrote its predictions and exited 0. Now exit 143 and the line; the rerun scores it."""
    from test_pretrain import SIGTERM_IN

    run_dir = tmp_path / "ft"
    args = ["finetune", *FAST, "trainer.max_epochs=1", "logger=none", f"hydra.run.dir={run_dir}"]
    env = dict(os.environ, WANDB_MODE="disabled", BLOCKBERT_CACHE=str(tmp_path / "cache"), BLOCKBERT_CLI="1")
    out = subprocess.run(
        [sys.executable, "-c", SIGTERM_IN, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**env, "STOP_IN": "blockbert.train.qa_module:QAModule.predict_step"},
    )  # fmt: skip
    assert out.returncode == 143, out.stderr[-3000:]
    line = next(line for line in out.stderr.splitlines() if "interrupted:" in line)
    assert line.startswith("blockbert finetune: interrupted: stopped by SIGTERM while scoring at step ")
    assert line.endswith(
        f"training is complete and saved in checkpoints/last.ckpt; run the same command with hydra.run.dir={run_dir} "
        "to score it"
    )
    assert not (run_dir / "dev" / "predictions.json").exists()
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"  # not training's "finished"
    blockbert(tmp_path, *args)
    assert (run_dir / "dev" / "predictions.json").is_file()
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "finished"
