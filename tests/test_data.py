import random

import pytest
import torch
from transformers import DataCollatorForLanguageModeling

from blockbert.data.sampler import ResumableSampler
from blockbert.data.sequences import pack_documents, sentence_pairs, split_sentences
from blockbert.train.settings import derive_batch, world_size

CLS, SEP = 2, 3


def docs(n_docs=6, seed=0):
    rng = random.Random(seed)
    # token ids encode (document, sentence) so boundaries can be checked: 1000*doc + 10*sentence + k
    return [
        [[1000 * (d + 1) + 10 * s + k for k in range(rng.randint(1, 9))] for s in range(rng.randint(1, 8))]
        for d in range(n_docs)
    ]


def test_split_sentences():
    assert split_sentences("One two. Three four!\nFive six?  Seven") == [
        "One two.",
        "Three four!",
        "Five six?",
        "Seven",
    ]


def test_packing_respects_length_and_document_boundaries():
    documents = docs()
    seqs = pack_documents(documents, 16, CLS, SEP)
    for seq in seqs:
        assert len(seq) <= 16 and seq[0] == CLS and seq[-1] == SEP
        assert len({t // 1000 for t in seq[1:-1]}) == 1  # one document per sequence
    flat = [t for seq in seqs for t in seq[1:-1]]
    assert flat == [t for d in documents for s in d for t in s]  # nothing lost, order kept


def test_packing_cuts_a_sentence_longer_than_n():
    seqs = pack_documents([[list(range(10, 40))]], 12, CLS, SEP)
    assert [len(s) for s in seqs] == [12, 12, 12]
    assert [t for s in seqs for t in s[1:-1]] == list(range(10, 40))


def test_sentence_pairs_have_segments_labels_and_fit():
    pairs = sentence_pairs(docs(40, seed=1), 24, CLS, SEP, random.Random(0))
    labels = [label for _, _, label in pairs]
    assert 0.3 < sum(labels) / len(labels) < 0.7
    for ids, types, label in pairs:
        assert len(ids) <= 24 and ids[0] == CLS and ids.count(SEP) == 2 and ids[-1] == SEP
        first_sep = ids.index(SEP)
        assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)
        a_docs = {t // 1000 for t in ids[1:first_sep]}
        b_docs = {t // 1000 for t in ids[first_sep + 1 : -1]}
        assert len(a_docs) == 1 and len(b_docs) == 1
        assert (a_docs == b_docs) == (label == 0)  # label 0: B continues A's document


def test_dynamic_masking_never_masks_special_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = tok(["the model reads a long sequence of words " * 6] * 64)["input_ids"]
    batch = DataCollatorForLanguageModeling(tok, mlm_probability=0.15, seed=0)([{"input_ids": i} for i in ids])
    masked = batch["labels"] != -100
    special = torch.isin(torch.tensor(ids), torch.tensor(tok.all_special_ids))
    assert not (masked & special).any()
    rate = masked.sum() / (~special).sum()
    assert 0.12 < rate < 0.18
    replaced = batch["input_ids"][masked]
    assert 0.7 < (replaced == tok.mask_token_id).float().mean() < 0.9


def test_validation_masks_are_the_same_every_time_in_any_process(tiny_tokenizer, monkeypatch):
    """FixedMasking: the same masks at every validation, the global RNG left as it was, and no refusal outside the
    main process (a collator's own seed refuses a process that is neither the main one nor a loader worker)."""
    import multiprocessing

    from blockbert.data.pretrain_datamodule import FixedMasking

    ids = tiny_tokenizer(["the model reads a long sequence of words " * 6] * 8)["input_ids"]
    masking = FixedMasking(DataCollatorForLanguageModeling(tiny_tokenizer, mlm_probability=0.15), seed=3)
    torch.manual_seed(0)
    untouched = torch.rand(1)
    torch.manual_seed(0)
    first = masking([{"input_ids": i} for i in ids])
    assert torch.equal(torch.rand(1), untouched)  # the draws after it are those without it
    monkeypatch.setattr(multiprocessing.current_process(), "name", "SpawnProcess-1")  # a ddp_spawn rank, say
    torch.manual_seed(1)
    again = masking([{"input_ids": i} for i in ids])
    assert torch.equal(first["input_ids"], again["input_ids"]) and torch.equal(first["labels"], again["labels"])
    assert (first["labels"] != -100).any()


def test_the_processes_lightning_starts_are_the_ones_the_batch_is_split_over(monkeypatch):
    from omegaconf import OmegaConf

    def trainer(accelerator, devices, nodes=1):
        return OmegaConf.create({"accelerator": accelerator, "devices": devices, "num_nodes": nodes})

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert world_size(trainer("auto", -1)) == world_size(trainer("gpu", "auto")) == 4  # every GPU, as Lightning takes
    assert world_size(trainer("cpu", -1)) == 1
    assert world_size(trainer("gpu", "0,2", 2)) == 4 and world_size(trainer("cpu", 2)) == 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert world_size(trainer("auto", "auto")) == 1


def test_derive_batch_from_tokens_per_batch():
    assert derive_batch(131072, 512, 8, 32) == (256, 8, 1)
    assert derive_batch(131072, 1024, 8, 8) == (128, 8, 2)
    assert derive_batch(2048, 128, 8, 1) == (16, 8, 2)
    assert derive_batch(2048, 128, 6, 1) == (16, 4, 4)


def consume(sampler, batch, batches, done=0):
    """Lightning's side: passes of the sampler in drop_last batches; returns (indices, saved state)."""
    seen = []
    while len(seen) < batches * batch:
        indices = list(sampler)  # one pass (one Lightning epoch)
        for start in range(0, len(indices) - batch + 1, batch):
            seen += indices[start : start + batch]
            if len(seen) == batches * batch:
                break
    return seen, sampler.position_after(done + batches)  # what the data module saves


@pytest.mark.parametrize("stop", [1, 2, 3, 5, 7])
def test_resumed_sampler_continues_the_same_stream(stop):
    full, _ = consume(ResumableSampler(10, seed=3, global_batch=3), 3, 9)  # 3 batches per pass, 1 dropped
    first, state = consume(ResumableSampler(10, seed=3, global_batch=3), 3, stop)
    rest, _ = consume(ResumableSampler(10, seed=3, global_batch=3, position=state), 3, 9 - stop, done=stop)
    assert first + rest == full
    assert state == stop // 3 * 10 + stop % 3 * 3  # passes of 10 samples, of which 9 are used
    assert sorted(full[:9]) != full[:9] and len(set(full[:9])) == 9  # a shuffled pass without repeats


def test_sampler_splits_the_global_order_over_ranks():
    ranks = [list(ResumableSampler(12, seed=0, global_batch=4, rank=r, world_size=2)) for r in range(2)]
    single = list(ResumableSampler(12, seed=0, global_batch=4))
    assert ranks[0] == single[0::2] and ranks[1] == single[1::2]


def test_a_trained_tokenizers_sequences_are_cached_under_its_learners_version(monkeypatch, tmp_path):
    """A cache built with an earlier WordPiece learner (before issue 25's deterministic one) kept serving its old
    vocabulary and sequences: the default run then differed between machines (validation perplexity 262.49 against
    262.30 at step 0)."""
    from hydra import compose, initialize_config_dir

    from blockbert.data import pretrain_datamodule
    from blockbert.data.pretrain_datamodule import PretrainDataModule
    from blockbert.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="pretrain")
    entry = PretrainDataModule(cfg.data, False, 8, 0, tmp_path)._cache_entry()
    monkeypatch.setattr(pretrain_datamodule, "WORDPIECE_VERSION", "a later learner")
    assert PretrainDataModule(cfg.data, False, 8, 0, tmp_path)._cache_entry() != entry


@pytest.mark.parametrize("spec", ["nodir/vocab.txt", "data/tok/tokenizer.json", "./tok", "a/b/c"])
def test_a_missing_local_tokenizer_is_refused_at_once_not_asked_of_the_hub(spec, monkeypatch, tmp_path):
    """Before: nodir/vocab.txt was tried as a hub name, about 46 s of retries without a network."""
    import transformers

    from blockbert.data.tokenizer import load_tokenizer

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_hub)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"data.tokenizer='{spec}': no such file or directory"):
        load_tokenizer(spec, None, 100, tmp_path)


def test_a_pass_holds_whole_optimizer_steps_so_steps_keep_their_batch():
    """With gradient accumulation (``batches_per_step``) a pass drops the tail short of a whole step: Lightning steps
    the optimizer at the end of a pass whatever it accumulated, so a pass of 5 micro-batches at 2 a step made a step
    of half a batch, and validation (counted in micro-batches across passes) drifted off the step it was asked for.
    """
    sampler = ResumableSampler(10, seed=3, global_batch=2, batches_per_step=2)  # 5 micro-batches: 4 used
    assert len(sampler) == 8 and len(list(sampler)) == 8
    assert sampler.position_after(4) == 10 and sampler.position_after(6) == 14  # a pass is 2 steps of 2 batches
    first, state = consume(ResumableSampler(10, seed=3, global_batch=2, batches_per_step=2), 2, 6)
    assert state == 14
    rest, _ = consume(ResumableSampler(10, seed=3, global_batch=2, batches_per_step=2, position=state), 2, 2, done=6)
    full, _ = consume(ResumableSampler(10, seed=3, global_batch=2, batches_per_step=2), 2, 8)
    assert first + rest == full
    plain = ResumableSampler(10, seed=3, global_batch=2, drop_last=False, batches_per_step=2)  # one rank, fine-tuning
    assert len(plain) == 10  # its last step is short, as BERT's fine-tuning has it


def test_a_run_saved_before_passes_held_whole_steps_resumes_with_its_own_passes():
    """A checkpoint without ``batches_per_step`` (older) cut its passes at micro-batches: its run goes on so, or the
    data position worked out from Lightning's count of batches would skip or repeat data; newer ones record it."""
    from blockbert.data.sampler import ResumableData

    class Data(ResumableData):
        batch_size, accumulate, seed = 2, 2, 0

    older, newer = Data(), Data()
    older.load_state_dict({"samples_consumed": 10, "global_batch": 2})  # 5 micro-batches a pass of 10, then
    newer.load_state_dict({"samples_consumed": 10, "global_batch": 2, "batches_per_step": 2})
    assert older.training_sampler(10, 0).position_after(6) == 12 and older.state_at(6)["batches_per_step"] == 1
    assert newer.training_sampler(10, 0).position_after(6) == 14 and newer.state_at(6)["batches_per_step"] == 2
    assert Data().training_sampler(10, 0).batches_per_step == 2  # a new run: the accumulation
