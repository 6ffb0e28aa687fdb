import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402

# registers with transformers' Auto classes before a test imports cli.py, which sets BLOCKBERT_CLI=1
import blockbert  # noqa: E402, F401


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    import datasets

    from blockbert.data.tokenizer import train_wordpiece

    docs = datasets.Dataset.from_dict({"text": ["the model reads a long sequence of words and learns"] * 20})
    return train_wordpiece(docs, 200, tmp_path_factory.mktemp("tok"))


def pytest_collection_modifyitems(items):
    """The slow end-to-end tests first: spread over the workers (pytest -n 2) they then run beside the many short
    tests instead of ending the run one after another."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
