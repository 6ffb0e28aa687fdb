"""Data preparation at scale: num_proc, a cache built once and loaded everywhere, batched QA windows,
settings checked up front, and the data benchmark. Outputs are compared with the code they replaced."""

import json
import random
import re
import threading
import time

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from blockbert.data import pretrain_datamodule, qa_datamodule
from blockbert.data.cache import build_once
from blockbert.data.corpus import load_documents
from blockbert.data.pretrain_datamodule import PretrainDataModule
from blockbert.data.qa import QADataset, QAExample, read_qa_file, write_generated_squad
from blockbert.data.qa_datamodule import QADataModule
from blockbert.data.qa_windows import QAWindow, build_windows, window_starts
from blockbert.data.sequences import pack_documents, sentence_pairs, split_sentences
from blockbert.data.tokenizer import encode_texts, encode_with_offsets
from blockbert.errors import ConfigError
from blockbert.paths import config_dir


def data_cfg(cache, *overrides):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="pretrain", overrides=[f"paths.cache_dir={cache}", *overrides])
    return cfg.data


# ---- the implementations these changes replaced (verbatim), as references ---------------------------------------


def reference_pack_documents(documents, max_len, cls_id, sep_id):
    budget = max_len - 2
    sequences = []
    for sentences in documents:
        chunk: list[int] = []
        for sentence in sentences:
            for start in range(0, max(len(sentence), 1), budget):  # a sentence longer than N is cut
                piece = sentence[start : start + budget]
                if chunk and len(chunk) + len(piece) > budget:
                    sequences.append([cls_id, *chunk, sep_id])
                    chunk = []
                chunk += piece
        if chunk:
            sequences.append([cls_id, *chunk, sep_id])
    return sequences


def reference_sequences(documents, tok, max_len, nsp, seed):
    """PretrainDataModule._sequences before this change: one map over the documents, a tokenizer call per document."""
    cls_id, sep_id = tok.cls_token_id, tok.sep_token_id

    def build(batch, indices):
        docs = []
        for text in batch["text"]:
            sentences = split_sentences(text)
            docs.append(tok(sentences, add_special_tokens=False)["input_ids"] if sentences else [])
        if not nsp:
            return {"input_ids": reference_pack_documents(docs, max_len, cls_id, sep_id)}
        pairs = sentence_pairs(docs, max_len, cls_id, sep_id, random.Random(seed + indices[0]))
        return {
            "input_ids": [p[0] for p in pairs],
            "token_type_ids": [p[1] for p in pairs],
            "next_sentence_label": [p[2] for p in pairs],
        }

    return documents.map(
        build,
        batched=True,
        with_indices=True,
        batch_size=1000,
        remove_columns=documents.column_names,
        keep_in_memory=True,
    )


def reference_build_windows(example, example_index, tokenizer, max_seq_length, doc_stride, max_query_length):
    question = tokenizer(example.question, add_special_tokens=False)["input_ids"][:max_query_length]
    paragraph = tokenizer(example.context, add_special_tokens=False, return_offsets_mapping=True)
    ids, char_spans = paragraph["input_ids"], paragraph["offset_mapping"]
    budget = max_seq_length - len(question) - 3
    spans = window_starts(len(ids), budget, doc_stride)
    answer = None
    if example.spans:
        begin, end = example.spans[0]
        tokens = [t for t, (s, e) in enumerate(char_spans) if s < end and e > begin]
        answer = (tokens[0], tokens[-1]) if tokens else None
    windows = []
    first = len(question) + 2
    for w, (start, length) in enumerate(spans):
        piece = range(start, start + length)
        window = QAWindow(
            example_index,
            [
                tokenizer.cls_token_id,
                *question,
                tokenizer.sep_token_id,
                *ids[start : start + length],
                tokenizer.sep_token_id,
            ],
            [0] * first + [1] * (length + 1),
            [None] * first + [tuple(char_spans[t]) for t in piece] + [None],
            [False] * first + [reference_is_max_context(spans, w, t) for t in piece] + [False],
        )
        if answer and start <= answer[0] and answer[1] < start + length:
            window.start_position = answer[0] - start + first
            window.end_position = answer[1] - start + first
        windows.append(window)
    return windows


def reference_is_max_context(spans, current, token):
    best_score, best = None, None
    for w, (start, length) in enumerate(spans):
        if not start <= token < start + length:
            continue
        score = min(token - start, start + length - 1 - token) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best = score, w
    return best == current


def reference_windows(dataset, tokenizer, cfg, train):
    windows = []
    for i, example in enumerate(dataset.examples):
        windows += reference_build_windows(
            example, i, tokenizer, cfg["max_seq_length"], cfg["doc_stride"], cfg["max_query_length"]
        )
    if train:
        windows = [
            w
            for w in windows
            if not (dataset.examples[w.example_index].answers and not dataset.examples[w.example_index].spans)
        ]
    return windows


# ---- pre-training sequences ---------------------------------------------------------------------------------------


def test_packing_equals_the_previous_implementation():
    rng = random.Random(0)
    for _ in range(300):
        docs = [
            [
                [rng.randrange(50) for _ in range(rng.choice([0, 1, 3, 7, 14, 15, 29, 31]))]
                for _ in range(rng.randrange(6))
            ]
            for _ in range(rng.randrange(4))
        ]
        max_len = rng.choice([3, 4, 9, 16])
        assert pack_documents(docs, max_len, 101, 102) == reference_pack_documents(docs, max_len, 101, 102)


def test_encode_texts_equals_the_tokenizer_call(tiny_tokenizer):
    texts = ["The model reads.", "Zoë  naïvely reads\t\tthe   model’s words!", "[SEP] and [CLS] inside", "", "x" * 300]
    assert encode_texts(tiny_tokenizer, texts) == tiny_tokenizer(texts, add_special_tokens=False)["input_ids"]
    ids, offsets = encode_with_offsets(tiny_tokenizer, texts)
    reference = tiny_tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    assert ids == reference["input_ids"] and offsets == reference["offset_mapping"]
    backend = tiny_tokenizer.backend_tokenizer
    backend.enable_truncation(max_length=3)  # a state transformers switches off for a plain call: so do we
    try:
        assert encode_texts(tiny_tokenizer, texts) == tiny_tokenizer(texts, add_special_tokens=False)["input_ids"]
    finally:
        backend.no_truncation()


def other_tokenizers():
    """A byte-level BPE (RoBERTa's kind) and SentencePiece-style Unigrams (Metaspace, prefix always or first)."""
    from tokenizers import ByteLevelBPETokenizer, SentencePieceUnigramTokenizer, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    text = ["The model reads a long sequence. It learns!", "Zoë naïvely reads: words, numbers 3.5 and more?"] * 20
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(text, vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"])
    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator(text, vocab_size=100, special_tokens=["<unk>", "<s>"], unk_token="<unk>")
    first = SentencePieceUnigramTokenizer()
    first.train_from_iterator(text, vocab_size=100, special_tokens=["<unk>", "<s>"], unk_token="<unk>")
    first.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    return {
        name: PreTrainedTokenizerFast(tokenizer_object=t._tokenizer, pad_token="<pad>" if name == "bpe" else "<s>")
        for name, t in (("bpe", bpe), ("unigram", unigram), ("metaspace_first", first))
    }


SENTENCES = [
    ["The model reads.", "It  learns!", "Zoë\tnaïvely  reads 3.5 words?"],
    [],
    ["x" * 200],
    ["[SEP] and <s> in text.", "  leading and trailing spaces  ", "é"],
    ["one"],
]


def test_encode_sentences_equals_one_call_per_sentence(tiny_tokenizer):
    from blockbert.data.tokenizer import SENTENCE_MARK, _encode_marked, _marked, encode_sentences

    for name, tok in {"wordpiece": tiny_tokenizer, **other_tokenizers()}.items():
        expected = [[tok(s, add_special_tokens=False)["input_ids"] for s in doc] for doc in SENTENCES]
        assert encode_sentences(tok, SENTENCES) == expected, name
        assert _marked(tok, SENTENCES) is not None, name  # the fast path, checked, not the fallback
        with_mark = [["a", f"b {SENTENCE_MARK} c"], ["d"]]  # a text holding the mark: one call per sentence
        assert encode_sentences(tok, with_mark) == [
            [tok(s, add_special_tokens=False)["input_ids"] for s in doc] for doc in with_mark
        ]
    # why Metaspace takes pieces: with its prefix only at the start of a text, joined sentences would differ
    first = other_tokenizers()["metaspace_first"]
    backend, mark_id, pieces = _marked(first, SENTENCES)
    assert pieces and _encode_marked(SENTENCES, backend, mark_id, False) != encode_sentences(first, SENTENCES)


@pytest.mark.parametrize("nsp", [False, True])
def test_sequences_are_the_same_with_num_proc_1_and_2_and_as_before(tmp_path, nsp):
    """2500 documents: three batches of documents, split over two processes at an unaligned boundary."""
    overrides = ["data.generated_documents=2500", "data.tokenizer_vocab_size=300", "data.max_seq_length=64"]
    built, tokenizer = {}, None
    for num_proc in (None, 2):
        cache = tmp_path / f"cache-{num_proc}"
        dm = PretrainDataModule(
            data_cfg(cache, *overrides, f"data.num_proc={num_proc or 'null'}"), nsp, 8, 3, cache, tokenizer=tokenizer
        )  # the same vocabulary (WordPiece training is not deterministic)
        dm.prepare_data()
        dm.setup()
        built[num_proc], tokenizer = dm, dm.tokenizer
    one, two = built[None], built[2]
    assert len(one.train_set.cache_files) == 1 and len(two.train_set.cache_files) == 2  # two processes wrote
    for split in ("train_set", "val_set"):
        assert getattr(one, split)[:] == getattr(two, split)[:]

    documents = load_documents(one.cfg, tmp_path / "cache-None")
    n_val = round(len(documents) * one.cfg.validation_fraction)
    parts = documents.train_test_split(test_size=n_val, seed=3, shuffle=True)
    for split, part in (("train_set", "train"), ("val_set", "test")):
        before = reference_sequences(parts[part], one.tokenizer, 64, nsp, 3)
        assert getattr(one, split)[:] == before[:]  # the same sequences as the code this replaced
    assert len(one.train_set) > 100


def test_prepare_data_builds_once_and_setup_only_loads(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cfg = data_cfg(cache, "data.generated_documents=60", "data.tokenizer_vocab_size=200", "data.max_seq_length=32")
    PretrainDataModule(cfg, False, 4, 0, cache).prepare_data()  # what Lightning runs on local rank 0
    entries = list((cache / "pretrain").iterdir())

    def fail(*args, **kwargs):
        raise AssertionError("setup() should read the cache, not build")

    monkeypatch.setattr(pretrain_datamodule, "load_documents", fail)
    monkeypatch.setattr(pretrain_datamodule, "load_tokenizer", fail)
    dm = PretrainDataModule(cfg, False, 4, 0, cache)  # another rank: a fresh object
    dm.prepare_data()  # cached: nothing to do
    dm.setup()
    assert len(dm.train_set) > 4 and len(dm.tokenizer) > 100
    assert list((cache / "pretrain").iterdir()) == entries
    assert all(f["filename"].startswith(str(cache / "pretrain")) for f in dm.train_set.cache_files)
    # a setting that changes the sequences is another entry (and builds)
    other = PretrainDataModule(
        data_cfg(cache, "data.generated_documents=60", "data.tokenizer_vocab_size=200", "data.max_seq_length=48"),
        False,
        4,
        0,
        cache,
    )
    with pytest.raises(AssertionError, match="should read the cache"):
        other.setup()


def test_concurrent_builders_wait_for_the_first(tmp_path):
    calls, manifests = [], []

    def build(directory):
        calls.append(threading.get_ident())
        time.sleep(0.5)
        (directory / "data.arrow").write_text("x")
        return {"files": ["data.arrow"]}

    threads = [
        threading.Thread(target=lambda: manifests.append(build_once(tmp_path / "entry", build))) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and manifests == [{"files": ["data.arrow"]}] * 3


@pytest.mark.parametrize("fraction", [1.0, 0, -0.1, 1.5])
def test_validation_fraction_out_of_range_is_one_clear_error(tmp_path, fraction):
    cfg = data_cfg(tmp_path, f"data.validation_fraction={fraction}")
    with pytest.raises(
        ConfigError,
        match=rf"data.validation_fraction={fraction} is out of range: .*strictly "
        r"between 0 and 1",
    ):
        PretrainDataModule(cfg, False, 4, 0, tmp_path)


def test_validation_fraction_leaving_no_training_document(tmp_path):
    (tmp_path / "a.txt").write_text("First doc.\n\nSecond doc.\n\nThird doc.\n")
    cfg = data_cfg(tmp_path, "data=text_files", f"data.files={tmp_path}/a.txt", "data.validation_fraction=0.9")
    with pytest.raises(ConfigError, match=r"data.validation_fraction=0.9 holds out 3 of the 3 documents"):
        PretrainDataModule(cfg, False, 1, 0, tmp_path).setup()


def test_validation_fraction_error_through_the_cli(blockbert, tmp_path):
    out = blockbert(tmp_path, "pretrain", "data.validation_fraction=1.0", "logger=none", check=False)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        "blockbert pretrain: error: data.validation_fraction=1.0 is out of range: it is the fraction of "
        "documents held out for validation, a number strictly between 0 and 1 (e.g. 0.05)"
    ]


# ---- QA windows ---------------------------------------------------------------------------------------------------

QA_CFG = OmegaConf.create({"max_seq_length": 40, "doc_stride": 16, "max_query_length": 8})


def hand_made() -> QADataset:
    """A long paragraph with many windows, answers at the start, the middle and the end, an unanswerable question
    and an answer that did not match its offsets (kept for evaluation, left out of training)."""
    context = " ".join(f"the model reads word{i % 7} and learns." for i in range(40)) + " The end"
    mid = context.index("word3 and", len(context) // 2)
    examples = [
        QAExample("start", "what reads", context, ["the model"], [(0, 9)]),
        QAExample("mid", "what does the model read in the middle of it all", context, ["word3"], [(mid, mid + 5)]),
        QAExample("end", "which end", context, ["The end"], [(len(context) - 7, len(context))]),
        QAExample("none", "who sings", context, [], []),
        QAExample("mismatch", "what", context, ["zebra"], []),
        QAExample("short", "what", "the model reads", ["reads"], [(10, 15)]),
    ]
    return QADataset("hand-made", "squad2", examples)


def test_windows_equal_the_previous_ones_and_are_reused(tmp_path, tiny_tokenizer, monkeypatch):
    data = {"train": hand_made(), "dev": hand_made()}
    dm = QADataModule(data, tiny_tokenizer, QA_CFG, 4, cache_dir=tmp_path)
    dm.setup()
    for split in data:
        assert list(dm.windows[split]) == reference_windows(data[split], tiny_tokenizer, QA_CFG, split == "train")
    assert len(dm.windows["dev"]) > len(dm.windows["train"]) > 10
    assert {w.example_index for w in dm.windows["train"]} == {0, 1, 2, 3, 5}  # the mismatched one left out
    windows = dm.windows["dev"]
    assert windows[3] == list(windows)[3] and windows[-1] == list(windows)[-1] and windows[1:3] == list(windows)[1:3]
    hits = [w for w in windows if w.start_position]
    assert {w.example_index for w in hits} == {0, 1, 2, 5}
    context = data["dev"].examples[0].context
    assert {
        context[w.offsets[w.start_position][0] : w.offsets[w.end_position][1]] for w in hits if w.example_index < 3
    } == {"the model", "word3", "The end"}
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape[0] == 4 and batch["window_index"].tolist() == [0, 1, 2, 3]

    def fail(*args, **kwargs):
        raise AssertionError("the second run should read the cached windows")

    monkeypatch.setattr(qa_datamodule, "window_rows", fail)
    again = QADataModule(data, tiny_tokenizer, QA_CFG, 4, cache_dir=tmp_path)
    again.setup()
    for split in data:
        assert again.windows[split].table.cache_files == dm.windows[split].table.cache_files
        assert list(again.windows[split]) == list(dm.windows[split])
    other = QADataModule(data, tiny_tokenizer, OmegaConf.merge(QA_CFG, {"doc_stride": 12}), 4, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="cached windows"):  # another setting: another cache entry
        other.setup()


@pytest.mark.parametrize("version", ["1.1", "2.0"])
def test_windows_on_the_generated_squad_set(tmp_path, tiny_tokenizer, version):
    path = write_generated_squad(tmp_path / "train.json", 300, version, 0)
    data = {"train": read_qa_file(path), "dev": read_qa_file(path)}
    cfg = OmegaConf.create({"max_seq_length": 24, "doc_stride": 8, "max_query_length": 6, "num_proc": 2})
    dm = QADataModule(data, tiny_tokenizer, cfg, 8, cache_dir=tmp_path / "cache")
    dm.setup()
    for split in data:
        assert list(dm.windows[split]) == reference_windows(data[split], tiny_tokenizer, cfg, split == "train")
    assert len(dm.windows["train"]) > 2 * len(data["train"].examples)  # several windows per question


def test_training_windows_are_split_over_processes_in_whole_global_batches(tmp_path, tiny_tokenizer):
    """Two ranks, batches of 4 each: every pass, the ranks take disjoint windows, as many batches each, together
    every window but the last ones that fill no global batch of 8; dev is read whole by each."""
    from types import SimpleNamespace

    path = write_generated_squad(tmp_path / "train.json", 30, "1.1", 0)
    data = {"train": read_qa_file(path), "dev": read_qa_file(path)}
    loaders = []
    for rank in (0, 1):
        dm = QADataModule(data, tiny_tokenizer, QA_CFG, 4, cache_dir=tmp_path / "cache", world_size=2)
        dm.setup()
        cpu = SimpleNamespace(root_device=SimpleNamespace(type="cpu"))
        dm.trainer = SimpleNamespace(global_rank=rank, strategy=cpu, num_devices=2)
        loaders.append(dm)
    size = len(loaders[0].windows["train"])
    assert size % 8 and size > 16
    trains = [dm.train_dataloader() for dm in loaders]
    assert [len(train) for train in trains] == [size // 8] * 2  # batches a pass: Lightning validates after the last
    passes = []
    for _ in range(2):  # two passes: a new order each
        taken = [[i for batch in train for i in batch["window_index"].tolist()] for train in trains]
        assert len(taken[0]) == len(taken[1]) == size // 8 * 4
        assert not set(taken[0]) & set(taken[1])
        passes.append(taken)
    assert passes[0] != passes[1]
    assert all(len([i for b in dm.val_dataloader() for i in b["window_index"].tolist()]) == len(dm.windows["dev"])
               for dm in loaders)  # fmt: skip


def test_too_few_training_windows_for_the_devices_is_one_line(tmp_path, tiny_tokenizer):
    data = {"train": hand_made(), "dev": hand_made()}
    dm = QADataModule(data, tiny_tokenizer, QA_CFG, 64, cache_dir=tmp_path, world_size=2)
    dm.setup()
    size = len(dm.windows["train"])
    with pytest.raises(ConfigError, match=rf"^{size} training windows fill no batch of 64 on each of 2 devices: use "):
        dm.train_dataloader()


def test_build_windows_matches_the_previous_one(tiny_tokenizer):
    for example in hand_made().examples:
        for settings in [(40, 16, 8), (16, 4, 4), (64, 128, 64)]:
            assert build_windows(example, 7, tiny_tokenizer, *settings) == reference_build_windows(
                example, 7, tiny_tokenizer, *settings
            )


# ---- the data benchmark -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_data_benchmark_end_to_end(blockbert, tmp_path):
    args = ["mode=data", "data.sizes_mb=[0.3,0.6]", "data.max_seq_length=64", f"paths.cache_dir={tmp_path / 'bench'}"]
    out = blockbert(tmp_path, "benchmark", *args, "hydra.run.dir=b")
    result = json.loads((tmp_path / "b" / "benchmark.json").read_text())
    assert [r["size_mb"] for r in result["records"]] == [0.3, 0.6]
    for r in result["records"]:
        assert 0.8 * r["size_mb"] < r["corpus_mb"] <= r["size_mb"] and r["ratio"] > 0 and r["ratio_cpu"] > 0
        assert (
            r["ours_peak_rss_mb"] > r["ours_start_rss_mb"] > 0 and r["floor_peak_rss_mb"] > r["floor_peak_anon_mb"] > 0
        )
        assert r["ours_rows"] > 0 and r["floor_rows"] > 0
    assert set(result["summary"]) >= {"ours_time_per_mb_growth", "ours_peak_rss_growth_mb", "worst_ratio"}
    assert (
        "ours/floor time" in out.stdout
        and re.search(r"target <= 1.3 \(wall\): (met|missed)", out.stdout)
        and out.stdout.strip().splitlines()[-1] == str((tmp_path / "b").resolve())
    )
    assert not any((tmp_path / "bench" / "benchmark-data" / "work").iterdir())  # each measurement's cache is removed
