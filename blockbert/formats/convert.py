"""Hugging Face BERT/RoBERTa checkpoints in and out of blockbert models (plain PyTorch).

Import: the encoder weights map onto any attention kind (only the pattern changes); the MLM, NSP
and QA heads are loaded when the checkpoint has them. Export: dense models become a Hugging Face
directory (``BertFor*``/``RobertaFor*``); block and sparse models a directory that
``from_pretrained`` here loads (``"model_type": "blockbert"``, the config under ``"blockbert"``, with the standard
``hidden_size``, ``num_hidden_layers``, ... beside it for the Hugging Face tools). The tokenizer files of a run are
copied with ``model_max_length`` set to the longest sequence the model takes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path

import torch

from blockbert.errors import ConfigError
from blockbert.formats.run_dir import RunDir
from blockbert.formats.safe_load import read_safetensors, torch_load
from blockbert.model.config import ATTENTION_SETTINGS, BlockBertConfig, scale_heads

log = logging.getLogger(__name__)

SUPPORTED = ("bert", "roberta", "blockbert")
QKV = ("query", "key", "value")


def _is_hub_name(path) -> bool:
    return not Path(path).expanduser().exists() and "/" in str(path) and not str(path).startswith((".", "/", "~"))


def _local_or_downloaded(path, patterns: list[str]) -> Path:
    """A local model directory, or the files of hub repository ``path`` matching ``patterns`` (online, or cached)."""
    if not _is_hub_name(path):
        return Path(path).expanduser()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path), allow_patterns=patterns))
    except Exception as err:  # noqa: BLE001 -- offline, unknown repo, ...: one line
        raise FileNotFoundError(
            f"{path!r} is not a local model directory, and the hub could not provide it "
            f"({type(err).__name__}): download it where there is network (hf download {path} "
            "--local-dir DIR) and give the directory DIR instead"
        ) from None


def read_config(directory: Path) -> dict:
    """The config.json of a Hugging Face model directory (or a blockbert export), checked to be one we read."""
    if not (directory / "config.json").is_file():
        run = RunDir(directory)
        if run.checkpoint_candidates() or run.hydra_dir.is_dir():
            raise FileNotFoundError(
                f"{directory} is a blockbert run directory, not a model directory: `blockbert export {directory} OUT` "
                f"writes one from its checkpoint (init_from={directory} starts a run from it)"
            )
        raise FileNotFoundError(
            f"{directory}: no config.json (expected a Hugging Face model directory or a blockbert export)"
        )
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except ValueError as err:  # malformed JSON, or not UTF-8 text
        raise ConfigError(f"{directory}/config.json is not a JSON config ({err})") from None
    if not isinstance(config, dict) or config.get("model_type") not in SUPPORTED:
        model_type = config.get("model_type") if isinstance(config, dict) else None
        raise ConfigError(
            f"{directory}/config.json: model_type={model_type!r} is not supported: accepted are {', '.join(SUPPORTED)}"
        )
    return config


def checkpoint_model_values(path: str | Path) -> dict:
    """The model settings (:class:`BlockBertConfig`'s fields) of a Hugging Face checkpoint or blockbert export, from
    its config.json alone (a hub name: that file only): what a run from it builds, known before the run starts."""
    directory = _local_or_downloaded(path, ["config.json"])
    hf = read_config(directory)
    if hf["model_type"] == "blockbert":
        return BlockBertConfig.from_values(hf["blockbert"]).to_dict()
    return config_from_hf(hf, directory).to_dict()


def read_checkpoint(path: str | Path) -> tuple[Path, dict, dict]:
    """(directory, config.json, state dict) of a local model directory or a hub name (online)."""
    directory = _local_or_downloaded(path, ["*.json", "*.txt", "model.safetensors"])
    if not (directory / "model.safetensors").is_file() and directory != Path(path).expanduser():
        directory = _local_or_downloaded(path, ["*.json", "*.txt", "pytorch_model.bin"])
    config = read_config(directory)
    safetensors_file, bin_file = directory / "model.safetensors", directory / "pytorch_model.bin"
    if safetensors_file.is_file():
        state = read_safetensors(safetensors_file)
    elif bin_file.is_file():
        state = torch_load(bin_file)  # weights_only: tensors and plain data; any failure is one line naming the file
        if not isinstance(state, dict):
            raise ConfigError(f"{bin_file} holds a {type(state).__name__}, not a state dict (weight name: tensor)")
    else:
        raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin")
    state = {
        k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"): v
        for k, v in state.items()
    }
    return directory, config, state


def config_from_hf(hf: dict, where: Path) -> BlockBertConfig:
    kind = hf["model_type"]
    if hf.get("hidden_act", "gelu") != "gelu" or hf.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(
            f"{where}/config.json: hidden_act={hf.get('hidden_act')!r}, position_embedding_type="
            f"{hf.get('position_embedding_type')!r}: accepted are gelu and absolute"
        )
    pad = hf.get("pad_token_id", 1 if kind == "roberta" else 0)
    return BlockBertConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf["max_position_embeddings"],
        type_vocab_size=hf.get("type_vocab_size", 2),
        hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        initializer_range=hf.get("initializer_range", 0.02),
        pad_token_id=pad,
        position_offset=pad + 1 if kind == "roberta" else 0,
    )


def encoder_keys(num_layers: int) -> list[tuple[str, str]]:
    """(Hugging Face key, blockbert key) of the encoder, without prefixes; q/k/v handled apart."""
    pairs = [
        ("embeddings.word_embeddings.weight", "embeddings.word.weight"),
        ("embeddings.position_embeddings.weight", "embeddings.position.weight"),
        ("embeddings.token_type_embeddings.weight", "embeddings.token_type.weight"),
        ("embeddings.LayerNorm.weight", "embeddings.norm.weight"),
        ("embeddings.LayerNorm.bias", "embeddings.norm.bias"),
    ]
    for i in range(num_layers):
        hf, mine = f"encoder.layer.{i}.", f"layers.{i}."
        for p in ("weight", "bias"):
            pairs += [
                (f"{hf}attention.output.dense.{p}", f"{mine}attention.out.{p}"),
                (f"{hf}attention.output.LayerNorm.{p}", f"{mine}attention_norm.{p}"),
                (f"{hf}intermediate.dense.{p}", f"{mine}ffn_in.{p}"),
                (f"{hf}output.dense.{p}", f"{mine}ffn_out.{p}"),
                (f"{hf}output.LayerNorm.{p}", f"{mine}ffn_norm.{p}"),
            ]
    return pairs


def head_keys(kind: str) -> list[tuple[str, str]]:
    """(Hugging Face key, blockbert key) of the MLM, NSP and QA heads."""
    if kind == "roberta":
        mlm = [("lm_head.dense", "mlm.transform"), ("lm_head.layer_norm", "mlm.norm")]
        pairs = [("lm_head.bias", "mlm.bias")]
    else:
        mlm = [
            ("cls.predictions.transform.dense", "mlm.transform"),
            ("cls.predictions.transform.LayerNorm", "mlm.norm"),
        ]
        pairs = [("cls.predictions.bias", "mlm.bias")]
    for hf, mine in mlm + [
        ("bert.pooler.dense", "nsp.pooler"),
        ("cls.seq_relationship", "nsp.classifier"),
        ("qa_outputs", "qa"),
    ]:
        pairs += [(f"{hf}.weight", f"{mine}.weight"), (f"{hf}.bias", f"{mine}.bias")]
    return pairs


def hf_to_blockbert(state: dict, config: BlockBertConfig, kind: str, encoder_prefix: str) -> dict:
    """Hugging Face tensors -> blockbert names (encoder under ``encoder_prefix``)."""
    base = next((p for p in ("bert.", "roberta.") if any(k.startswith(p) for k in state)), "")
    out = {}
    for hf, mine in encoder_keys(config.num_layers):
        if base + hf not in state:
            raise ConfigError(f"checkpoint has no weight {base + hf!r}")
        out[encoder_prefix + mine] = state[base + hf]
    for i in range(config.num_layers):
        for p in ("weight", "bias"):
            parts = [state.get(f"{base}encoder.layer.{i}.attention.self.{n}.{p}") for n in QKV]
            if any(t is None for t in parts):
                raise ConfigError(f"checkpoint has no weight '{base}encoder.layer.{i}.attention.self.query.{p}'")
            out[f"{encoder_prefix}layers.{i}.attention.qkv.{p}"] = torch.cat(parts, dim=0)
    for hf, mine in head_keys(kind):
        if hf in state:
            out[mine] = state[hf]
    if kind == "bert" and "bert.pooler.dense.weight" not in state and "pooler.dense.weight" in state:
        out["nsp.pooler.weight"], out["nsp.pooler.bias"] = state["pooler.dense.weight"], state["pooler.dense.bias"]
    return out


def blockbert_to_hf(state: dict, config: BlockBertConfig, kind: str) -> dict:
    """The inverse of :func:`hf_to_blockbert` for an encoder under ``encoder.`` plus heads."""
    base = f"{kind}."
    out = {}
    for hf, mine in encoder_keys(config.num_layers):
        out[base + hf] = state["encoder." + mine]
    for i in range(config.num_layers):
        for p in ("weight", "bias"):
            for name, part in zip(QKV, state[f"encoder.layers.{i}.attention.qkv.{p}"].chunk(3, dim=0)):
                out[f"{base}encoder.layer.{i}.attention.self.{name}.{p}"] = part
    for hf, mine in head_keys(kind):
        if mine in state:
            out[hf] = state[mine]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def extend_positions(table: torch.Tensor, rows: int, offset: int) -> torch.Tensor:
    """Longformer's recipe: copy the learned positions (after RoBERTa's reserved slots) until ``rows``."""
    learned = table[offset:]
    new = table.new_empty(rows, table.shape[1])
    new[:offset] = table[:offset]
    filled = offset
    while filled < rows:
        take = min(len(learned), rows - filled)
        new[filled : filled + take] = learned[:take]
        filled += take
    return new


def load_pretrained(cls, path, **overrides):
    """Build ``cls`` from a checkpoint directory (:meth:`blockbert.formats.pretrained.Pretrained.from_pretrained`)."""
    config, state, directory = import_weights(cls, path, **overrides)
    model = cls(config)
    load_announced(model, state, directory)
    return model


def load_announced(
    model: torch.nn.Module, state: dict, source, task_head: str | None = None, resuming: bool = False
) -> None:
    """Load ``state`` into ``model`` as far as it goes, and say so as transformers does: which parts were loaded from
    ``source`` and which start fresh (a warning, unless it is only ``task_head``, the head a fine-tuning adds: a
    pre-training head that starts fresh makes the first losses high), and what the checkpoint holds that the model
    does not use. ``resuming``: the run's own checkpoint holds every weight, so nothing is loaded (a fresh head's
    warning would mislead)."""
    if resuming:
        log.info("%s: not loaded, the run resumes from its own checkpoint, which holds every weight", source)
        return
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("decoder_weight")]  # tied to the word embeddings
    loaded = [k for k in state if k not in result.unexpected_keys]
    log.info("%s: loaded %d weights (%s)", source, len(loaded), _parts(loaded))
    if missing:
        expected = task_head is not None and _parts(missing) == task_head
        log.log(
            logging.INFO if expected else logging.WARNING,
            "%s: not in the checkpoint, initialised fresh: %s (%d weights): train them before trusting its outputs",
            source,
            _parts(missing),
            len(missing),
        )
    if result.unexpected_keys:
        log.info("%s: not used by %s: %s", source, type(model).__name__, _parts(result.unexpected_keys))


def _parts(keys) -> str:
    """The parts of a model that ``keys`` fall in (``encoder``, ``mlm``, ``nsp``, ``qa``; BERT's pooler, kept under
    ``nsp`` as the sentence-pair head reads it, is ``pooler``: a checkpoint without that head still has one)."""
    return ", ".join(sorted({"pooler" if k.startswith("nsp.pooler.") else k.split(".")[0] for k in keys}))


def import_weights(cls, path, fit_heads: bool = False, **overrides) -> tuple[BlockBertConfig, dict, Path]:
    """(config, state dict for ``cls``, directory). ``max_position_embeddings`` counts usable positions.

    With block attention, ``block_seq_len`` (N, which fixes the blocks) is the override if given; else a
    checkpoint pre-trained with block attention keeps its N (an export older than the field: its positions),
    raised to ``max_position_embeddings`` only when that asks for longer sequences; else (Hugging Face,
    dense or sparse checkpoints) N is ``max_position_embeddings`` when given, the positions otherwise.

    ``fit_heads``: a block head config written for another head count (a preset's ``10:2`` for a 16-head
    checkpoint) is scaled to the checkpoint's heads (:func:`blockbert.model.config.scale_heads`) instead of refused."""
    accepted = {*ATTENTION_SETTINGS, "max_position_embeddings", "block_seq_len"}
    unknown = set(overrides) - accepted
    if unknown:
        raise ConfigError(
            f"from_pretrained: cannot override {', '.join(sorted(unknown))}: accepted are {', '.join(sorted(accepted))}"
        )
    directory, hf, state = read_checkpoint(path)
    if hf.get("model_type") == "blockbert":
        values = dict(hf["blockbert"])
        kind = "blockbert"
    else:
        values = config_from_hf(hf, directory).to_dict()
        kind = hf["model_type"]
    trained_n = None  # the N a block-attention checkpoint was trained at
    if values.get("attention") == "block":
        trained_n = values.get("block_seq_len") or values["max_position_embeddings"] - values.get("position_offset", 0)
    wanted = overrides.pop("max_position_embeddings", None)
    block_seq_len = overrides.pop("block_seq_len", None)
    values.pop("block_seq_len", None)  # set once the positions are final
    values.update(overrides)
    if fit_heads and values.get("attention") == "block" and "heads" in overrides:
        fitted = scale_heads(overrides["heads"], values["num_heads"])
        if fitted != str(overrides["heads"]).strip():
            log.info("%s has %d heads: heads %s -> %s", directory, values["num_heads"], overrides["heads"], fitted)
            values["heads"] = fitted
    config = BlockBertConfig.from_values(values)
    prefix = "" if cls.__name__ == "BlockBertModel" else "encoder."
    if kind == "blockbert":
        mapped = {(k[len("encoder.") :] if not prefix and k.startswith("encoder.") else k): v for k, v in state.items()}
    else:
        mapped = hf_to_blockbert(state, config, kind, prefix)
    if wanted is not None and wanted + config.position_offset > config.max_position_embeddings:
        rows = wanted + config.position_offset
        key = prefix + "embeddings.position.weight"
        log.info(
            "%s: extending the position table from %d to %d rows by copying the learned positions",
            directory,
            config.max_position_embeddings,
            rows,
        )
        mapped[key] = extend_positions(mapped[key], rows, config.position_offset)
        config = dataclasses.replace(config, max_position_embeddings=rows, block_seq_len=0)
    if block_seq_len is None and config.attention == "block":
        block_seq_len = (wanted or 0) if trained_n is None else max(trained_n, wanted or 0)
        if trained_n is not None and block_seq_len > trained_n:
            log.info(
                "%s: block_seq_len follows the longer sequences, %d -> %d: the blocks are no longer the "
                "pre-trained ones",
                directory,
                trained_n,
                block_seq_len,
            )
    if block_seq_len is not None:
        config = dataclasses.replace(config, block_seq_len=block_seq_len)
    check_shapes(cls, config, mapped, directory)
    return config, mapped, directory


def check_shapes(cls, config: BlockBertConfig, state: dict, directory: Path) -> None:
    with torch.device("meta"):
        expected = cls(config).state_dict()
    for key, tensor in state.items():
        if key in expected and tuple(expected[key].shape) != tuple(tensor.shape):
            raise ConfigError(
                f"{directory}: weight {key!r} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(expected[key].shape)}"
            )


def hf_config_values(config: BlockBertConfig) -> dict:
    """The Hugging Face BERT/RoBERTa config fields of ``config`` (the inverse of :func:`config_from_hf`): a dense
    export's config, and the standard fields beside a block or sparse export's own."""
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": config.hidden_dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "layer_norm_eps": config.layer_norm_eps,
        "initializer_range": config.initializer_range,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
    }


def head_of(state: dict) -> str:
    """Which head a state dict's keys hold: the class name's suffix, ``Model`` for the bare encoder."""
    if "qa.weight" in state:
        return "ForQuestionAnswering"
    if "nsp.classifier.weight" in state:
        return "ForPreTraining"
    return "ForMaskedLM" if "mlm.bias" in state else "Model"


def export(model, out_dir: str | Path, tokenizer_dir: Path | None = None) -> Path:
    """Write ``model``: a Hugging Face directory when dense, else a blockbert directory."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config: BlockBertConfig = model.config
    state = model.state_dict()
    if not any(k.startswith("encoder.") for k in state):  # a bare BlockBertModel
        state = {"encoder." + k: v for k, v in state.items()}
    head = head_of(state)
    if config.attention == "dense":
        kind = "roberta" if config.position_offset else "bert"
        tensors = blockbert_to_hf(state, config, kind)
        if head == "Model":
            tensors = {k[len(kind) + 1 :]: v for k, v in tensors.items()}
        hf_config = {
            "model_type": kind,
            "architectures": [{"bert": "Bert", "roberta": "Roberta"}[kind] + head],
            **hf_config_values(config),
        }
    else:
        tensors = {k: v.detach().clone().contiguous() for k, v in state.items() if not k.endswith("decoder_weight")}
        hf_config = {
            "model_type": "blockbert",
            "architectures": [f"BlockBert{head}"],
            "blockbert": config.to_dict(),  # what loading reads; the standard names beside it are for the tools
            **hf_config_values(config),
        }
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    # safetensors >= 0.8 writes its file for the owner alone: readable as the directory's other files are (where the
    # file system lets modes be set)
    with contextlib.suppress(OSError):
        (out / "model.safetensors").chmod((out / "config.json").stat().st_mode & 0o777)
    if tokenizer_dir is not None and tokenizer_dir.is_dir():
        files = [file for file in tokenizer_dir.iterdir() if file.is_file()]
        for file in files:
            (out / file.name).write_bytes(file.read_bytes())
        if files:
            write_tokenizer_settings(out, config)
    return out


def longest_sequence(config: BlockBertConfig) -> int:
    """The longest input the model takes: N (``block_seq_len``) for block attention, else its positions."""
    return config.block_seq_len if config.attention == "block" else config.max_sequence_length


MODEL_INPUTS = ["input_ids", "token_type_ids", "attention_mask"]  # BERT's, segment ids included


def write_tokenizer_settings(directory: Path, config: BlockBertConfig) -> None:
    """Set in ``directory/tokenizer_config.json`` (created if missing) what the model takes: ``model_max_length``, so
    that truncation, and transformers' pipelines, cut inputs to it; and, for a model with segment embeddings,
    ``model_input_names`` with ``token_type_ids``, so that ``tokenizer(question, paragraph)`` gives the segment ids
    the model was trained with (a tokenizer trained by a run has no class of its own that would say so: without
    them the paragraph is read as segment 0 and a fine-tuned QA model answers otherwise than in its run)."""
    path = directory / "tokenizer_config.json"
    values = {}
    if path.is_file():
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise ConfigError(f"{path} is not a JSON tokenizer config ({err})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path} holds a {type(values).__name__}, not a JSON object (a tokenizer config)")
    values["model_max_length"] = longest_sequence(config)
    if config.type_vocab_size > 1 and "token_type_ids" not in (values.get("model_input_names") or []):
        values["model_input_names"] = MODEL_INPUTS
    values.pop("max_length", None)  # a truncation length the source kept (sentence-transformers' 128): not the model's
    path.write_text(json.dumps(values, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
