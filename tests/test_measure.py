"""The memory counter, the regression, and profile/benchmark end to end (correctness only, no timing)."""

import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from blockbert.errors import ConfigError
from blockbert.measure.benchmark import BOUNDS, _records, baselines_of, check_mode_heads, print_table
from blockbert.measure.memory import SavedTensorCounter, fit_linear_quadratic, measure_step
from blockbert.measure.models import build, check_heads, random_batch
from blockbert.measure.timing import OOM, time_side_by_side, timing_summary


def test_saved_tensor_counter_on_a_toy_graph_known_by_hand():
    weight = torch.nn.Parameter(torch.randn(3, 4))
    a = torch.randn(3, 4, requires_grad=True)
    with SavedTensorCounter(exclude=[weight]) as counter:
        b = a.exp()  # saves its result b
        c = b * b  # saves b twice: the same storage, counted once
        d = c.sin()  # saves c
        e = d * weight  # saves d and the parameter (excluded)
    e.sum().backward()
    assert len(counter.storages) == 3
    assert counter.bytes == 3 * 3 * 4 * 4  # three float32 [3, 4] tensors


def test_regression_recovers_known_coefficients():
    lengths = [128, 256, 512, 1024, 2048]
    fit = fit_linear_quadratic(lengths, [5.0 + 0.25 * n for n in lengths])
    assert fit.intercept == pytest.approx(5.0) and fit.slope == pytest.approx(0.25) and fit.r2 == pytest.approx(1.0)
    assert fit.quadratic_part(512) == pytest.approx(128.0) and fit.linear_part() == pytest.approx(5.0)
    rng = np.random.default_rng(0)
    noisy = fit_linear_quadratic(lengths, [5.0 + 0.25 * n + rng.normal(0, 0.5) for n in lengths])
    assert noisy.slope == pytest.approx(0.25, rel=0.02) and 0.99 < noisy.r2 < 1.0


def test_blockwise_quadratic_part_is_one_nth_of_roberta():
    size = dict(hidden_size=48, num_layers=1, intermediate_size=64, vocab_size=50)
    lengths, tokens = [96, 192, 384], 768
    slopes = {}
    for name in ("roberta_1seq", "blockbert_n2", "blockbert_n3"):
        act = []
        for n in lengths:  # a model of length N for each N, as the paper trains one
            torch.manual_seed(0)
            model = build(name, size, {}, n, attention_impl="eager").train()
            act.append(measure_step(model, random_batch(tokens // n, n, 50, "cpu")).activation_bytes)
        slopes[name] = fit_linear_quadratic(lengths, act).slope
    assert slopes["blockbert_n2"] / slopes["roberta_1seq"] == pytest.approx(1 / 2, rel=0.1)
    assert slopes["blockbert_n3"] / slopes["roberta_1seq"] == pytest.approx(1 / 3, rel=0.1)


def test_side_by_side_timing_rotates_and_reports_oom():
    calls_seen = []

    def ok(label):
        return lambda: calls_seen.append(label)

    def oom():
        raise RuntimeError("CUDA out of memory. Tried to allocate")

    times = time_side_by_side({"a": ok("a"), "b": ok("b"), "big": oom}, torch.device("cpu"), warmup=1, repeats=3)
    assert times["big"] == OOM and len(times["a"]) == len(times["b"]) == 3
    assert calls_seen[2:] == ["a", "b", "b", "a", "a", "b"]  # after warm-up, each repeat starts one later
    assert timing_summary(times["big"])["status"] == OOM and timing_summary([1.0, 2.0, 3.0])["median_s"] == 2.0


SMALL = ["size.hidden_size=48", "size.intermediate_size=64", "size.vocab_size=100", "size.num_layers=1"]


def test_profile_end_to_end_writes_table_json_and_plot_without_a2_on_cpu(blockbert, tmp_path):
    out = blockbert(tmp_path, "profile", "seq_lengths=[96,192]", "tokens_per_device=384", *SMALL, "hydra.run.dir=p")
    result = json.loads((tmp_path / "p" / "profile.json").read_text())
    assert set(result["models"]) == {"roberta_1seq", "sparsebert", "blockbert_n2", "blockbert_n3"}
    assert (tmp_path / "p" / "profile.png").stat().st_size > 0
    assert "O(N) / O(N²)" in out.stdout and out.stdout.strip().splitlines()[-1] == str((tmp_path / "p").resolve())
    # Appendix A.2's estimate needs the CUDA allocator: on CPU it is reported as not available, not attempted
    assert result["a2_warmup_steps"] == "n/a (CUDA only)" and result["dtype"] == "float32"
    assert all(
        e["fit_a2"] is None and all(r["a2_activation_mb"] is None for r in e["rows"]) for e in result["models"].values()
    )
    assert "n/a (CUDA only)" in out.stdout and "A.2 activations" not in out.stdout
    # two lengths fit exactly: no R² claimed (before: 1.0000 on every row)
    assert all(e["fit"]["r2"] is None for e in result["models"].values()) and "n/a (2 lengths)" in out.stdout


def test_profile_refuses_one_length_which_the_fit_cannot_split(blockbert, tmp_path):
    """Before: one point fitted, printed as 0.0 / 248.4 MB with R² 1.0."""
    out = blockbert(tmp_path, "profile", "seq_lengths=[96,96]", *SMALL, check=False)
    assert out.returncode == 2 and "seq_lengths=[96, 96]: give at least two different lengths" in out.stderr
    assert not list(tmp_path.glob("runs/profile/*"))


def test_profile_records_and_shows_the_heads_given(blockbert, tmp_path):
    """Before: blockbert_n3 measured with +heads.blockbert_n3=9:3 (n=2) was labelled blockbert_n3, its O(N²) part
    n=2's, and profile.json did not say."""
    args = ["seq_lengths=[96,192]", "tokens_per_device=384", *SMALL, "hydra.run.dir=p"]
    out = blockbert(tmp_path, "profile", "models=[blockbert_n2,blockbert_n3]", "+heads.blockbert_n3=9:3", *args)
    models = json.loads((tmp_path / "p" / "profile.json").read_text())["models"]
    assert {name: (e["heads"], e["preset_heads"]) for name, e in models.items()} == {
        "blockbert_n2": ("10:2", "10:2"),
        "blockbert_n3": ("9:3", "8:2:2"),
    }
    assert "blockbert_n3 (heads 9:3)" in out.stdout and "blockbert_n2 (heads" not in out.stdout
    n2, n3 = (models[name]["fit"]["slope_mb_per_token"] for name in ("blockbert_n2", "blockbert_n3"))
    assert n3 == pytest.approx(n2, rel=0.01)  # 9:3 is n=2


TINY = [*SMALL, "batch_sizes=[1]", "seq_lengths=[96]", "attention_seq_lengths=[96]", "attention_dropout=[0.0]"]
TINY += ["repeats=1", "warmup=0"]  # benchmark: one run of each


@pytest.mark.parametrize(
    "command, given, error",
    [
        (  # before: measured, rc 0, no warning
            "profile",
            "+heads.bogus=9:3",
            "heads.bogus='9:3': bogus is not among models=[roberta_1seq, sparsebert, blockbert_n2, blockbert_n3]; "
            "heads are read by the block models measured: blockbert_n2, blockbert_n3",
        ),
        (  # before: ignored, the attention layer timed (for minutes at the defaults)
            "benchmark mode=attention",
            "+heads.blockbert_n2=abc",
            "heads.blockbert_n2='abc' is not read by mode=attention (it times the fixed head configs 10:2 and 8:2:2): "
            "heads is read by mode=model and mode=layout; give 'heads={}' to clear heads a bench= preset sets "
            "(bench=table5's)",
        ),
        (  # before: heads='7:3' assigns 10 heads but the model has num_heads=12, the key not named
            "benchmark",
            "+heads.blockbert_n2=7:3",
            "heads.blockbert_n2='7:3' assigns 10 heads but blockbert_n2 has num_heads=12: the counts must sum to 12",
        ),
    ],
)
def test_bad_heads_are_refused_before_measuring_naming_the_key(blockbert, tmp_path, command, given, error):
    args = ["seq_lengths=[96,192]", "tokens_per_device=384", *SMALL] if command == "profile" else TINY
    out = blockbert(tmp_path, *command.split(), given, *args, check=False)
    assert (
        out.returncode == 2 and out.stderr.strip().splitlines()[-1] == f"blockbert {command.split()[0]}: error: {error}"
    )
    assert not list(tmp_path.glob("runs/*/*"))  # nothing measured, no run directory left


def test_heads_are_checked_against_the_models_the_mode_builds():
    size = dict(hidden_size=48, num_layers=1, intermediate_size=64, vocab_size=100)
    check_heads({"blockbert_n2": "9:3", "blockbert_n3_eager": "6:3:3"}, ["blockbert_n2", "blockbert_n3_eager"], size)
    for heads, error in (
        ({"hf_bert": "9:3"}, "heads.hf_bert='9:3': hf_bert has no blockwise attention to give heads to; heads are "
         "read by the block models measured: blockbert_n2"),
        ({"blockbert_n2": "abc"}, "heads.blockbert_n2='abc' is not a head config: expected non-negative integers "
         "separated by ':' summing to num_heads=12"),
        ({"roberta_1seq": "9:3"}, "heads.roberta_1seq='9:3': roberta_1seq has no blockwise attention"),
    ):  # fmt: skip
        with pytest.raises(ConfigError, match=re.escape(error)):
            check_heads(heads, ["roberta_1seq", "blockbert_n2", "hf_bert"], size)

    def config(mode, heads):
        return OmegaConf.create(
            dict(mode=mode, size=size, models=["blockbert_n3"], layout=dict(models=["blockbert_n2"]), heads=heads)
        )

    with pytest.raises(ConfigError, match=re.escape("blockbert_n3 is not among layout.models=[blockbert_n2]")):
        check_mode_heads(config("layout", {"blockbert_n3": "8:2:2"}))
    check_mode_heads(config("model", {"blockbert_n3": "8:2:2"}))
    for mode in ("data", "pretrain", "finetune", "plan"):
        with pytest.raises(ConfigError, match=f"is not read by mode={mode}: heads is read by mode=model and mode="):
            check_mode_heads(config(mode, {"blockbert_n3": "8:2:2"}))
        check_mode_heads(config(mode, {}))  # no heads: nothing to refuse


def test_benchmark_models_and_attention_end_to_end(blockbert, tmp_path):
    blockbert(
        tmp_path,
        "benchmark",
        "batch_sizes=[1]",
        "seq_lengths=[96]",
        *SMALL,
        "repeats=2",
        "warmup=0",
        "hydra.run.dir=b",
        "models=[roberta_1seq,sparsebert,sparsebert_blocks,blockbert_n3,hf_bert,hf_bigbird]",
        "baseline=hf_bert",
    )
    result = json.loads((tmp_path / "b" / "benchmark.json").read_text())
    assert result["complete"] is True and not list((tmp_path / "b").glob("benchmark.json.tmp*"))
    models = {r["model"] for r in result["records"]}
    assert models == {"roberta_1seq", "sparsebert", "sparsebert_blocks", "blockbert_n3", "hf_bert", "hf_bigbird"} | {
        "no_attention"  # t_rest of the inference bound, timed in inference only
    }
    rows = {(r["phase"], r["model"]): r for r in result["records"]}
    assert ("train", "no_attention") not in rows
    rest, dense = rows[("inference", "no_attention")]["median_s"], rows[("inference", "roberta_1seq")]["median_s"]
    block = rows[("inference", "blockbert_n3")]
    assert block["bound_s"] == pytest.approx(rest + (dense - rest) / 3)
    assert block["ratio_to_bound"] == pytest.approx(block["median_s"] / block["bound_s"])
    assert "ratio_to_bound" not in rows[("inference", "sparsebert")]
    baseline = [r for r in result["records"] if r["model"] == "hf_bert"]
    assert all(r["ratio_to_baseline"] == pytest.approx(1.0) for r in baseline)
    assert {r["phase"] for r in result["records"]} == {"inference", "train"}
    assert all(r["memory_mb"] > 0 for r in result["records"] if r["phase"] == "train")
    blockbert(
        tmp_path,
        "benchmark",
        "mode=attention",
        "attention_seq_lengths=[96]",
        "attention_padding=0.25",
        "repeats=1",
        "warmup=0",
        "hydra.run.dir=a",
    )
    records = json.loads((tmp_path / "a" / "benchmark.json").read_text())["records"]
    assert {r["phase"] for r in records} == {"attention fwd+bwd p=0.1 pad=0.25", "attention fwd+bwd p=0 pad=0.25"}
    assert {r["model"] for r in records} >= {
        "dense",
        "sparse (blocks)",
        "identity-only n=2 (12:0)",
        "block n=3 (8:2:2)",
    }
    for r in records:
        bound = next((b for b in records if b["phase"] == r["phase"] and b["model"] == BOUNDS.get(r["model"])), None)
        assert r["ratio_to_bound"] == (pytest.approx(r["median_s"] / bound["median_s"]) if bound else None)
        n = {"block n=3 (8:2:2)": 3, "identity-only n=2 (12:0)": 2}.get(r["model"])
        if n or r["model"] == "dense":
            assert r["floor"] == (pytest.approx(1 / n) if n else None)  # time ÷ dense cannot go below 1/n
    assert not any(r["model"].startswith("flex") for r in records)  # FlexAttention: CUDA without dropout only
    assert (tmp_path / "a" / "benchmark.png").is_file()


def test_table5_preset_gives_ratios_to_both_dense_baselines(blockbert, tmp_path):
    out = blockbert(
        tmp_path,
        "benchmark",
        "bench=table5",
        *SMALL,
        "batch_sizes=[2]",
        "seq_lengths=[96]",
        "repeats=2",
        "warmup=0",
        "hydra.run.dir=t",
    )
    result = json.loads((tmp_path / "t" / "benchmark.json").read_text())
    baselines = ["roberta_1seq_eager", "roberta_1seq"]
    assert result["baselines"] == baselines and result["dtype"] == "float16"
    records = {r["model"]: r for r in result["records"]}
    assert list(records) == ["roberta_1seq_eager", "roberta_1seq", "blockbert_n2", "blockbert_n3", "no_attention"]
    assert {r["phase"] for r in result["records"]} == {"inference"}
    for r in records.values():
        assert r["ratios"] == {b: pytest.approx(r["median_s"] / records[b]["median_s"]) for b in baselines}
        assert r["ratio_to_baseline"] == r["ratios"]["roberta_1seq_eager"]
    assert records["roberta_1seq"]["ratios"]["roberta_1seq"] == pytest.approx(1.0)
    assert "× roberta_1seq_eager" in out.stdout and "× roberta_1seq " in out.stdout
    # the heads each block model ran with: table5's 9:3 for n=2 (before: not recorded nor shown), n=3's preset
    assert (records["blockbert_n2"]["heads"], records["blockbert_n2"]["preset_heads"]) == ("9:3", "10:2")
    assert (records["blockbert_n3"]["heads"], records["blockbert_n3"]["preset_heads"]) == ("8:2:2", "8:2:2")
    assert "heads" not in records["roberta_1seq"] and "blockbert_n2 (heads 9:3)" in out.stdout
    assert "blockbert_n3 (heads" not in out.stdout


def test_baseline_is_one_model_or_a_list_of_them():
    models = ["roberta_1seq_eager", "roberta_1seq", "blockbert_n2"]
    assert baselines_of(OmegaConf.create(dict(models=models, baseline="roberta_1seq"))) == ["roberta_1seq"]
    both = OmegaConf.create(dict(models=models, baseline=["roberta_1seq_eager", "roberta_1seq"]))
    assert baselines_of(both) == ["roberta_1seq_eager", "roberta_1seq"]
    with pytest.raises(ConfigError, match="baseline=hf_bert is not among models: accepted are roberta_1seq_eager, "):
        baselines_of(OmegaConf.create(dict(models=models, baseline=["roberta_1seq", "hf_bert"])))
    # an unknown model is named as such (before: "baseline=hf_bert is not among models: accepted are nope")
    with pytest.raises(ConfigError, match="model 'nope' is unknown: accepted are blockbert_n2, "):
        baselines_of(OmegaConf.create(dict(models=["nope"], baseline="hf_bert")))


def test_an_oom_baseline_leaves_its_ratios_empty_and_the_others_stand(capsys):
    times = {"roberta_1seq_eager": OOM, "roberta_1seq": [2.0], "blockbert_n2": [1.0]}
    records = _records(
        times, ["roberta_1seq_eager", "roberta_1seq"], dict(phase="inference", batch_size=16, seq_len=1024), {}
    )
    assert [r["ratios"] for r in records] == [
        {"roberta_1seq_eager": None, "roberta_1seq": None},
        {"roberta_1seq_eager": None, "roberta_1seq": 1.0},
        {"roberta_1seq_eager": None, "roberta_1seq": 0.5},
    ]
    print_table(
        dict(
            mode="model",
            machine="m",
            device="cuda",
            dtype="float16",
            threads=1,
            date="d",
            baselines=["roberta_1seq_eager", "roberta_1seq"],
            records=records,
        )
    )
    assert "OOM" in capsys.readouterr().out


def test_eager_names_are_our_models_with_eager_attention():
    size = dict(hidden_size=48, num_layers=1, intermediate_size=64, vocab_size=100)
    assert build("roberta_1seq_eager", size, {}, 128).config.attention_impl == "eager"
    assert build("roberta_1seq", size, {}, 128).config.attention_impl == "sdpa"
    n2 = build("blockbert_n2_eager", size, {"blockbert_n2": "9:3"}, 128).config  # heads given for the base name
    assert (n2.attention_impl, n2.heads) == ("eager", "9:3")
    assert build("sparsebert_blocks_eager", size, {}, 128).config.sparse_impl == "blocks"
    with pytest.raises(ConfigError, match="model 'hf_bert_eager_eager' is unknown: .* ours also as <name>_eager"):
        build("hf_bert_eager_eager", size, {}, 128)


def test_benchmark_sizes_are_a_config_group(blockbert, tmp_path):
    out = blockbert(tmp_path, "benchmark", "size=base_4layers", "size.hidden_size=96", "--cfg", "job")
    assert "hidden_size: 96" in out.stdout and "num_layers: 4" in out.stdout and "vocab_size: 30522" in out.stdout


def test_peers_are_the_transformers_models_at_our_sizes():
    size = dict(hidden_size=48, num_layers=1, intermediate_size=64, vocab_size=100)
    for name, arch in (
        ("hf_bert", "BertForMaskedLM"),
        ("hf_bert_eager", "BertForMaskedLM"),
        ("hf_roberta", "RobertaForMaskedLM"),
        ("hf_bigbird", "BigBirdForMaskedLM"),
    ):
        peer = build(name, size, {}, 128)
        assert type(peer.model).__name__ == arch
        assert (peer.model.config.hidden_size, peer.model.config.num_hidden_layers, peer.config.vocab_size) == (
            48,
            1,
            100,
        )
    assert build("hf_bert_eager", size, {}, 128).model.config._attn_implementation == "eager"
    assert build("hf_bigbird", size, {}, 128).model.config.attention_type == "block_sparse"
    assert build("sparsebert_blocks", size, {}, 128).config.sparse_impl == "blocks"
    with pytest.raises(ConfigError, match="model 'gpt2' is unknown: accepted are blockbert_n2, .*, hf_bigbird"):
        build("gpt2", size, {}, 128)


@pytest.mark.parametrize("name", ["roberta_1seq", "blockbert_n2", "hf_bert"])
def test_table5_times_the_encoder_alone_as_the_cited_script_does(name):
    from contextlib import nullcontext

    from blockbert.measure.benchmark import _call

    size = dict(hidden_size=24, intermediate_size=48, num_layers=1, vocab_size=50)
    model = build(name, size, {"blockbert_n2": "10:2"}, 32)
    heads_called = []
    lm_head = model.model.cls if name == "hf_bert" else model.mlm
    lm_head.register_forward_hook(lambda *args: heads_called.append(True))
    batch = random_batch(2, 32, 50, "cpu")
    _call(model, None, batch, "inference", nullcontext(), lm_head=False)()
    assert heads_called == []
    _call(model, None, batch, "inference", nullcontext(), lm_head=True)()
    assert heads_called == [True]


def test_ratios_of_means_for_table5():
    times = {"a": [1.0, 1.0, 4.0], "b": [2.0, 2.0, 2.0]}
    medians = _records(times, ["b"], {}, {})
    means = _records(times, ["b"], {}, {}, ratio_of="mean")
    assert medians[0]["ratios"]["b"] == pytest.approx(0.5) and means[0]["ratios"]["b"] == pytest.approx(1.0)
    assert means[0]["mean_s"] == pytest.approx(2.0) and means[0]["median_s"] == pytest.approx(1.0)


# blockbert benchmark with Ctrl-C as a terminal sends it (SIGINT to the process), or a scheduler's SIGTERM, when the
# second point starts
CTRL_C_AT_SECOND_POINT = """
import os, signal
from blockbert.measure import benchmark
timed = benchmark.time_side_by_side
points = []
def ctrl_c_at_second(*args, **kwargs):
    points.append(1)
    if len(points) == 2:
        os.kill(os.getpid(), getattr(signal, os.environ.get("STOP_WITH", "SIGINT")))
    return timed(*args, **kwargs)
benchmark.time_side_by_side = ctrl_c_at_second
from cli import main
main()
"""


@pytest.mark.parametrize(("stop", "said", "code"), [("SIGINT", "Ctrl-C", 130), ("SIGTERM", "SIGTERM", 143)])
def test_a_benchmark_stopped_by_ctrl_c_keeps_the_rows_it_measured(tmp_path, stop, said, code):
    """The rows of the points measured before Ctrl-C (or SIGTERM: before, it ended silently) are in benchmark.json
    (marked incomplete) and in the table; the command says so in one line and exits 130 (143) (a GPU check's part
    stopped by its time limit keeps its rows)."""
    out = subprocess.run(
        [sys.executable, "-c", CTRL_C_AT_SECOND_POINT, "benchmark", "mode=attention", "attention_seq_lengths=[96,128]"]
        + ["attention_dropout=[0.0]", "repeats=1", "warmup=0", "hydra.run.dir=a"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "BLOCKBERT_CACHE": str(tmp_path / "cache"), "STOP_WITH": stop},
        timeout=300,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal has it
    )
    assert out.returncode == code, out.stderr[-3000:]
    result = json.loads((tmp_path / "a" / "benchmark.json").read_text())
    rows = result["records"]
    assert result["complete"] is False and {r["seq_len"] for r in rows} == {96}
    assert {r["model"] for r in rows} >= {"dense", "block n=2 (10:2)", "block n=3 (8:2:2)"}
    errors = [line for line in out.stderr.splitlines() if "blockbert benchmark:" in line]
    assert errors == [
        f"blockbert benchmark: interrupted: stopped by {said} after {len(rows)} measured rows; benchmark.json holds "
        "them; a rerun measures everything again"
    ]
    assert "Traceback" not in out.stderr
    assert "N=96 dropout 0 done" in out.stdout + out.stderr  # each point says so (before: silent until the end)
    assert "block n=3 (8:2:2)" in out.stdout  # the table of the rows measured
    assert out.stdout.strip().splitlines()[-1] == str((tmp_path / "a").resolve())


CTRL_C_AT_FIRST_STEP = """
import os, signal
from blockbert.measure import profile
def ctrl_c(*args, **kwargs):
    os.kill(os.getpid(), getattr(signal, os.environ.get("STOP_WITH", "SIGINT")))
    raise AssertionError("the signal did not stop the measurement")
profile.measure_step = ctrl_c
from cli import main
main()
"""


@pytest.mark.parametrize(("stop", "said", "code"), [("SIGINT", "Ctrl-C", 130), ("SIGTERM", "SIGTERM", 143)])
def test_a_profile_stopped_by_ctrl_c_or_sigterm_ends_in_the_interrupted_line(tmp_path, stop, said, code):
    """Before: exit 130 and nothing printed (SIGTERM: killed, nothing printed)."""
    out = subprocess.run(
        [sys.executable, "-c", CTRL_C_AT_FIRST_STEP, "profile", "seq_lengths=[96,192]", "hydra.run.dir=p"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "BLOCKBERT_CACHE": str(tmp_path / "cache"), "STOP_WITH": stop},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal has it
    )  # fmt: skip
    assert out.returncode == code, out.stderr[-3000:]
    assert [line for line in out.stderr.splitlines() if "blockbert profile:" in line] == [
        f"blockbert profile: interrupted: stopped by {said} before its results were written; a rerun measures "
        "everything again"
    ]
    assert out.stdout.strip().splitlines()[-1] == str((tmp_path / "p").resolve()) and "Traceback" not in out.stderr
