"""The typed configs of conf/: one dataclass per config node, with each numeric setting's range and each choice's
options. :func:`check_config` checks a composed config against its command's schema while it is composed (before a
run directory or a W&B run exists), so ``optim.lr=abc`` or ``data.max_seq_length=0`` ends ``--cfg job`` as it ends a
run: one line naming the key, the value and what is accepted.

A config is checked, not replaced: the YAML files stay the source of every default, the schema only says what each
key accepts. A key the schema does not know is refused (``+optim.lrr=1``), except under ``trainer``, whose other keys
go to Lightning's ``Trainer`` as they are. Plain dataclasses, read by OmegaConf (no Hydra here).
"""
# ruff: noqa: UP006, UP045 -- OmegaConf 2.3 reads typing's Optional/List/Dict, not X | None or list[...]

from __future__ import annotations

import dataclasses
import difflib
import functools
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional  # noqa: UP035 -- OmegaConf 2.3 reads typing's generics, not X | None

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, InterpolationResolutionError, ValidationError

from blockbert.errors import ConfigError
from blockbert.model.config import ATTENTION_IMPLS, ATTENTION_KINDS, LAYOUTS, SPARSE_IMPLS

LOGGER_KINDS = ("wandb", "csv", "none")
GPU_ACCELERATORS = ("gpu", "cuda")  # trainer.accelerator names of a CUDA GPU
BENCHMARK_MODES = ("model", "attention", "layout", "data", "pretrain", "finetune", "plan")


def setting(default, low=None, high=None, *, above=None, below=None, choices=None, means=None, length=None):
    """A field with what it accepts: ``low <= value <= high``, ``above < value < below``, or one of ``choices``
    (None is always accepted where the type is Optional; a list's every element); ``length``: a list's; ``means``:
    what the value is, said instead of the bounds when they are not met."""
    rule = {"low": low, "high": high, "above": above, "below": below, "choices": choices, "means": means,
            "length": length}  # fmt: skip
    rule = {key: value for key, value in rule.items() if value is not None}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default, metadata=rule)
    return field(default=default, metadata=rule)


@dataclass
class Model:
    name: str = "roberta_1seq"
    init_from: Optional[str] = None
    next_sentence_prediction: bool = False
    vocab_size: int = setting(30522, 1)
    hidden_size: int = setting(768, 1)
    num_layers: int = setting(12, 1)
    num_heads: int = setting(12, 1)
    intermediate_size: int = setting(3072, 0)
    max_position_embeddings: int = setting(512, 1)
    type_vocab_size: int = setting(2, 1)
    attention: str = setting("dense", choices=ATTENTION_KINDS)
    heads: str = "10:2"
    sparse_stride: int = setting(128, 1)
    sparse_expressivity: int = setting(32, 1)
    sparse_impl: str = setting("mask", choices=SPARSE_IMPLS)
    attention_impl: str = setting("sdpa", choices=ATTENTION_IMPLS)
    layout: str = setting("auto", choices=LAYOUTS)
    hidden_dropout: float = setting(0.1, 0.0, below=1.0)
    attention_dropout: float = setting(0.1, 0.0, below=1.0)
    layer_norm_eps: float = setting(1e-12, above=0.0)
    initializer_range: float = setting(0.02, 0.0)
    pad_token_id: int = setting(0, 0)
    gradient_checkpointing: bool = False
    # the checkpoint's, when the model comes from one (filled in while the config is composed)
    block_seq_len: Optional[int] = setting(None, 0)
    position_offset: Optional[int] = setting(None, 0)


@dataclass
class Trainer:
    accelerator: str = setting("cpu", choices=("cpu", *GPU_ACCELERATORS, "auto", "mps", "tpu"))  # Lightning's names
    devices: Any = 1
    num_nodes: int = setting(1, 1)
    strategy: Any = "auto"
    precision: Any = "32-true"
    max_steps: int = setting(-1, -1)
    max_epochs: Optional[int] = setting(None, -1)
    gradient_clip_val: Optional[float] = setting(None, 0.0)
    val_check_interval: Optional[float] = setting(None, above=0.0)
    limit_val_batches: Optional[float] = setting(None, 0.0)
    log_every_n_steps: int = setting(50, 1)
    num_sanity_val_steps: int = setting(2, -1)


@dataclass
class PretrainTrainer(Trainer):
    val_check_interval: int = setting(10000, 1)  # optimizer steps between validations (not an epoch fraction)


@dataclass
class Logger:
    kind: str = setting("wandb", choices=LOGGER_KINDS)
    project: Optional[str] = None
    entity: Optional[str] = None
    mode: Optional[str] = setting(None, choices=("offline", "online", "disabled", "shared"))
    group: Optional[str] = None


@dataclass
class Paths:
    cache_dir: str = "~/.cache/blockbert"
    plan_dir: Optional[str] = None


@dataclass
class Paper:
    tables: str = ""
    row: str = ""
    pretrained: bool = True


@dataclass
class Longrange:
    segment_tokens: Optional[int] = setting(None, 1)
    segments: int = setting(1, 1)
    blocks: int = setting(2, 1)
    slot_every: int = setting(16, 1)
    distance: List[float] = setting([1.0])
    cyclic: bool = False
    filler_words: int = setting(128, 1)
    topic_words: int = setting(4, 1)


@dataclass
class CorpusData:
    name: str = "tiny_corpus"
    source: str = setting("generated", choices=("generated", "files", "hub", "longrange"))
    files: Any = None
    hub_name: Any = None
    hub_config: Any = None
    hub_split: str = "train"
    text_field: str = "text"
    documents: str = setting("paragraph", choices=("paragraph", "file", "line"))
    rows_per_document: Any = 1
    tokenizer: str = "train"
    tokenizer_vocab_size: int = setting(2048, 1)
    max_seq_length: int = setting(128, 8)
    validation_fraction: float = setting(
        0.05,
        above=0.0,
        below=1.0,
        means="it is the fraction of documents held out for validation, a number strictly between 0 and 1 (e.g. 0.05)",
    )
    mlm_probability: float = setting(0.15, above=0.0, below=1.0)
    per_device_batch_size: int = setting(8, 1)
    num_workers: Optional[int] = setting(None, 0)
    num_proc: Optional[int] = setting(None, 1)
    generated_documents: int = setting(400, 2)
    longrange: Optional[Longrange] = None


@dataclass
class Optim:
    lr: float = setting(2.5e-4, above=0.0)
    betas: List[float] = setting([0.9, 0.999])
    eps: float = setting(1e-8, above=0.0)
    weight_decay: float = setting(0.01, 0.0)
    warmup_steps: int = setting(10000, 0)
    schedule_steps: Optional[int] = setting(None, 1)


@dataclass
class Run:
    """What both training commands hold."""

    paths: Paths = field(default_factory=Paths)
    model: Model = field(default_factory=Model)
    trainer: Trainer = field(default_factory=Trainer)
    logger: Logger = field(default_factory=Logger)
    seed: int = setting(0, 0)
    paper: Optional[Paper] = None
    ckpt_path: Optional[str] = None
    compile: bool = False
    matmul_precision: str = setting("highest", choices=("highest", "high", "medium"))
    progress_bar: bool = True
    fit_check: bool = True
    device_memory: Optional[str] = None


@dataclass
class Pretrain(Run):
    data: CorpusData = field(default_factory=CorpusData)
    trainer: PretrainTrainer = field(default_factory=PretrainTrainer)
    tokens_per_batch: int = setting(131072, 1)
    optim: Optim = field(default_factory=Optim)
    checkpoint_every_n_steps: Optional[int] = setting(10000, 1)
    checkpoint_keep: int = setting(3, -1)  # -1: all (Lightning's save_top_k)


@dataclass
class Task:
    name: str = "generated"
    format: Optional[str] = setting(None, choices=("squad1", "squad2", "mrqa"))
    version: Optional[str] = setting(None, choices=("1.1", "2.0"))
    generated_questions: Optional[int] = setting(None, 4)
    generated_people: List[int] = setting(  # of the 24 names: one left for a 2.0 stranger
        [3, 3], 1, 23, length=2, means="give [fewest, most] persons per paragraph, each 1 to 23, e.g. [1, 14]"
    )
    tokenizer_vocab_size: int = setting(30522, 1)
    train_file: Optional[str] = None
    dev_file: Optional[str] = None
    test_file: Optional[str] = None
    hub_name: Optional[str] = None
    hub_config: Optional[str] = None
    hub_subset: Optional[str] = None
    hub_train_split: Optional[str] = None
    hub_dev_split: Optional[str] = None
    split_dev: bool = False
    max_train_samples: Optional[int] = setting(None, 1)
    max_eval_samples: Optional[int] = setting(None, 1)


@dataclass
class QAData:
    max_seq_length: int = setting(512, 8)
    doc_stride: int = setting(128, 1)
    max_query_length: int = setting(64, 1)
    max_answer_length: int = setting(30, 1)
    n_best_size: int = setting(20, 1)
    per_device_batch_size: int = setting(16, 1)
    num_workers: Optional[int] = setting(None, 0)
    num_proc: Optional[int] = setting(None, 1)


@dataclass
class FinetuneOptim:
    lr: float = setting(3e-5, above=0.0)
    batch_size: int = setting(32, 1)
    betas: List[float] = setting([0.9, 0.999])
    eps: float = setting(1e-8, above=0.0)
    weight_decay: float = setting(0.01, 0.0)
    warmup_proportion: float = setting(0.1, 0.0, 1.0)


@dataclass
class Finetune(Run):
    task: Task = field(default_factory=Task)
    init_from: Optional[str] = None
    checkpoint_every_n_steps: Optional[int] = setting(None, 1)
    data: QAData = field(default_factory=QAData)
    optim: FinetuneOptim = field(default_factory=FinetuneOptim)


@dataclass
class Size:
    hidden_size: int = setting(768, 1)
    intermediate_size: int = setting(3072, 1)
    num_layers: int = setting(12, 1)
    vocab_size: int = setting(30522, 1)


DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass
class Profile:
    size: Size = field(default_factory=Size)
    models: List[str] = setting(["roberta_1seq"])
    seq_lengths: List[int] = setting([128], 8)
    tokens_per_device: int = setting(4096, 1)
    attention_impl: str = setting("eager", choices=("eager", "sdpa"))
    device: str = "auto"  # auto, or a torch device: cpu, cuda, cuda:1, ...
    dtype: str = setting("auto", choices=DTYPES)
    a2_warmup_steps: int = setting(3, 0)
    seed: int = setting(0, 0)
    heads: Dict[str, str] = setting({})


@dataclass
class WholeRun:
    models: List[str] = setting(["roberta_1seq"])
    seq_len: int = setting(512, 8)
    batch_size: int = setting(1, 1)
    steps: int = setting(10, 1)
    documents: Optional[int] = setting(None, 2)
    rows_per_document: Optional[int] = setting(None, 1)
    questions: Optional[int] = setting(None, 4)
    people: Optional[List[int]] = setting(None, 1, 23, length=2, means="give [fewest, most], each 1 to 23")


@dataclass
class PlannedRun:
    model: str = "roberta_1seq"
    seq_len: int = setting(512, 8)
    batch_size: int = setting(1, 1)
    accumulate: int = setting(1, 1)


@dataclass
class PlanCheck:
    runs: List[PlannedRun] = field(default_factory=lambda: [PlannedRun()])
    steps: int = setting(20, 1)
    documents: int = setting(600, 2)
    rows_per_document: int = setting(120, 1)


@dataclass
class LayoutCheck:
    models: List[str] = setting(["roberta_1seq"])
    layouts: List[str] = setting(["padded", "unpadded"])
    fills: List[float] = setting([1.0])
    batch_size: int = setting(8, 1)
    seq_len: int = setting(512, 8)


@dataclass
class BenchmarkData:
    sizes_mb: List[float] = setting([10.0])
    max_seq_length: int = setting(512, 8)
    nsp: bool = False
    num_proc: Optional[int] = setting(None, 1)
    repeats: int = setting(1, 1)
    tokenizers_parallelism: bool = False


@dataclass
class Benchmark:
    paths: Paths = field(default_factory=Paths)
    size: Size = field(default_factory=Size)
    mode: str = setting("model", choices=BENCHMARK_MODES)
    models: List[str] = setting(["roberta_1seq"])
    baseline: Any = None
    phases: List[str] = setting(["inference"], choices=("inference", "train"))
    lm_head: bool = True
    ratio_of: str = setting("median", choices=("median", "mean"))
    batch_sizes: List[int] = setting([1], 1)
    seq_lengths: List[int] = setting([512], 8)
    heads: Dict[str, str] = setting({})
    inference_bound: bool = True
    attention_seq_lengths: List[int] = setting([512], 8)
    attention_batch_size: int = setting(1, 1)
    attention_dropout: List[float] = setting([0.0], 0.0, below=1.0)
    attention_padding: float = setting(0.0, 0.0, below=1.0)
    repeats: int = setting(5, 1)
    warmup: int = setting(1, 0)
    device: str = "auto"
    dtype: str = setting("auto", choices=DTYPES)
    seed: int = setting(0, 0)
    compile: bool = False
    pretrain: WholeRun = field(default_factory=WholeRun)
    finetune: WholeRun = field(default_factory=WholeRun)
    data: BenchmarkData = field(default_factory=BenchmarkData)
    plan: PlanCheck = field(default_factory=PlanCheck)
    layout: LayoutCheck = field(default_factory=LayoutCheck)


SCHEMAS = {"pretrain": Pretrain, "finetune": Finetune, "profile": Profile, "benchmark": Benchmark}
# what the experiments (one file per paper row and demo, shared by both commands) set for pre-training only: left out
# of a fine-tuning config, which would not read them
NOT_READ = {"finetune": ("tokens_per_batch", "optim.warmup_steps", "trainer.val_check_interval")}


def drop_unread(cfg: DictConfig, command: str, given: set[str]) -> None:
    """Leave out of ``cfg`` the keys ``command`` does not read (:data:`NOT_READ`) that the command line did not give.
    Given ones are refused: by the schema, which names what is accepted, or here where the schema shares the key with
    pre-training (a Lightning Trainer argument that fine-tuning sets itself)."""
    for key in NOT_READ.get(command, ()):
        if key in given and is_setting(command, key):
            raise ConfigError(
                f"{key} is read only by pretrain, not {command}: fine-tuning evaluates dev after every epoch "
                "(trainer.max_epochs), and at the end when trainer.max_steps stops it first"
            )
        parent, _, name = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if key not in given and node is not None and name in node:
            with open_dict(node):
                del node[name]


OPEN_NODES = ("trainer",)  # their other keys are handed on as they are (to Lightning's Trainer)


def check_config(cfg: DictConfig, command: str) -> None:
    """Refuse, in one line, a value of ``cfg`` (``command``'s composed config, its ``hydra`` node aside) whose type or
    range its schema does not accept, and a key the schema does not know."""
    schema = SCHEMAS.get(command)
    if schema is None:
        return
    values = {key: value for key, value in OmegaConf.to_container(cfg).items() if key != "hydra"}
    for key in OPEN_NODES:  # only the keys the schema types
        if isinstance(values.get(key), dict):
            known = {f.name for f in dataclasses.fields(_field_type(schema, key))}
            values[key] = {k: v for k, v in values[key].items() if k in known}
    try:
        typed = OmegaConf.merge(_typed_schema(schema), values)  # merge copies the schema's config: it stays as built
        try:
            resolved = OmegaConf.to_container(typed, resolve=True)
        except InterpolationResolutionError:  # e.g. a resolver only Hydra's job knows: the types were checked
            resolved = OmegaConf.to_container(typed)
    except ConfigKeyError as err:
        raise not_a_setting(command, str(err.full_key)) from None
    except ValidationError as err:
        raise ConfigError(f"{err.full_key}={_value(values, str(err.full_key))!r}: {_expected(err)}") from None
    _check_ranges(schema, resolved, "")
    if isinstance(resolved.get("task"), dict):
        _check_task_source(resolved["task"])
    if isinstance(resolved.get("data"), dict) and "source" in resolved["data"]:
        _check_corpus_source(resolved["data"])
    if isinstance(resolved.get("trainer"), dict):
        _check_sharding(resolved["trainer"])


def _check_sharding(trainer: dict) -> None:
    """Lightning's FSDP runs on CUDA GPUs only: with another accelerator it is refused here, as the config is composed
    (``--cfg job``, ``plan``, a sweep's check), not after a run has built its data and its directory."""
    strategy, accelerator = str(trainer.get("strategy")), trainer.get("accelerator")
    if "fsdp" in strategy.lower() and accelerator not in (*GPU_ACCELERATORS, "auto"):
        raise ConfigError(
            f"trainer.strategy={strategy} shards over CUDA GPUs only (Lightning's FSDP), not trainer.accelerator="
            f"{accelerator}: use trainer=ddp trainer.accelerator=cpu for CPU processes, or trainer=fsdp on GPUs"
        )


@functools.cache
def _typed_schema(schema) -> DictConfig:
    """The schema as OmegaConf's typed config, built once (a sweep checks every job's config: 25 ms a build)."""
    return OmegaConf.structured(schema)


# what only the generated task reads, and what only a task of files or the hub reads (every task reads the rest)
GENERATED_ONLY = {"generated_questions": None, "generated_people": [3, 3], "version": None}  # key: its unset value
FILES_OR_HUB_ONLY = ("format", "train_file", "dev_file", "test_file", "hub_name", "hub_config", "hub_subset",
                     "hub_train_split", "hub_dev_split")  # fmt: skip


def _check_task_source(task: dict) -> None:
    """A task setting that the task's source does not read is refused, not ignored: ``task=generated`` makes its own
    questions (``task.train_file=my.json`` without ``task=squad11`` would fine-tune on generated ones), and the
    tasks of files or the hub have no generated questions (their version is their format's)."""
    name = task.get("name")
    if name == "generated":
        given = [key for key in FILES_OR_HUB_ONLY if task.get(key) is not None]
        if given:
            raise ConfigError(
                f"task.{given[0]}={task[given[0]]!r} is not read by task=generated, which makes its own questions: "
                "give task=squad11, squad20 or mrqa (with task.train_file and task.dev_file, or a hub dataset)"
            )
        return
    given = [key for key, unset in GENERATED_ONLY.items() if task.get(key) not in (None, unset)]
    if given:
        raise ConfigError(
            f"task.{given[0]}={task[given[0]]!r} is read only by task=generated, not task={name}: "
            + ("its version is its format's (task=squad11: 1.1, task=squad20: 2.0)" if given[0] == "version"
               else "leave it out, or give task=generated")
        )  # fmt: skip


# the corpus settings only one data.source reads, and how to choose that source
CORPUS_SOURCE_ONLY = {
    "files": ("files", "data=text_files"),
    "hub_name": ("hub", "data.source=hub"),
    "hub_config": ("hub", "data.source=hub"),
    "longrange": ("longrange", "data=longrange"),
}


def _check_corpus_source(data: dict) -> None:
    """A corpus setting its ``data.source`` does not read is refused, not ignored: ``data.files=my.txt`` with the
    default generated corpus would pre-train on generated text."""
    for key, (reader, choice) in CORPUS_SOURCE_ONLY.items():
        if data.get(key) is not None and data["source"] != reader:
            node = isinstance(data[key], dict)
            given = f"data.{key}.*" if node else f"data.{key}={data[key]!r}"
            unset = f"~data.{key}" if node else f"data.{key}=null"
            raise ConfigError(
                f"{given} is read only by data.source={reader}, not {data['source']}: give {choice}, or leave it out "
                f"({unset})"
            )


def typed_section(command: str, key: str) -> bool:
    """Whether ``command``'s schema types the section a dotted ``key`` is in: not Hydra's own (``hydra.*``) nor a
    free-form node (benchmark's ``heads``, where ``+heads.NAME=...`` adds a key)."""
    return _section(command, key) is not None


def is_setting(command: str, key: str) -> bool:
    """Whether ``command``'s schema has the dotted ``key``."""
    node = _section(command, key)
    return node is not None and key.rpartition(".")[2] in {spec.name for spec in dataclasses.fields(node)}


def _section(command: str, key: str):
    """The schema dataclass of the section a dotted ``key`` is in (the command's own for a top-level key); None where
    the schema types none."""
    section = key.rpartition(".")[0]
    return _field_type(SCHEMAS[command], section) if section else SCHEMAS[command]


def not_a_setting(command: str, key: str) -> ConfigError:
    """The one-line refusal of a dotted ``key`` that ``command``'s schema does not have (``model.heds=3:1``, a typo,
    or ``+model.heds=3:1``): the nearest key, and the ones accepted in its section."""
    section, node = key.rpartition(".")[0], _section(command, key)
    names = [spec.name for spec in dataclasses.fields(node)] if node else []
    near = difflib.get_close_matches(key.rpartition(".")[2], names, n=1)
    where = f" in {section}" if section else ""
    text = f"{key} is not a setting" + (f" (did you mean {section + '.' if section else ''}{near[0]}?)" if near else "")
    if section in OPEN_NODES:
        text += f"; another Lightning Trainer argument is given as +{key}=VALUE"
    return ConfigError(f"{text}: accepted{where} are {', '.join(names)}")


def _check_ranges(schema, values: dict, prefix: str) -> None:
    for spec in dataclasses.fields(schema):
        value = values.get(spec.name)
        key = prefix + spec.name
        if dataclasses.is_dataclass(_node_type(spec)) and isinstance(value, dict):
            _check_ranges(_node_type(spec), value, key + ".")
        elif value is not None and spec.metadata and not _unresolved(value):
            problem = _out_of_range(value, spec.metadata)
            if problem:
                what = "is not accepted" if "choices" in spec.metadata else "is out of range"
                raise ConfigError(f"{key}={value!r} {what}: {problem}")


def _unresolved(value) -> bool:
    """An interpolation only the job resolves (``${hydra:job.num}``, an unset ``${oc.env:...}``): checked there."""
    return isinstance(value, str) and "${" in value


def _out_of_range(value, rule: dict) -> str | None:
    if isinstance(value, list):
        if "length" in rule and len(value) != rule["length"]:
            return rule.get("means") or f"give {rule['length']} values"
        return next(filter(None, (_out_of_range(element, rule) for element in value)), None)
    if "choices" in rule:
        return None if value in rule["choices"] else "accepted are " + ", ".join(map(str, rule["choices"]))
    bounds = []
    if "low" in rule:
        bounds.append((value >= rule["low"], f">= {rule['low']}"))
    if "above" in rule:
        bounds.append((value > rule["above"], f"> {rule['above']}"))
    if "high" in rule:
        bounds.append((value <= rule["high"], f"<= {rule['high']}"))
    if "below" in rule:
        bounds.append((value < rule["below"], f"< {rule['below']}"))
    if all(ok for ok, _ in bounds):
        return None
    return rule.get("means") or "it must be " + " and ".join(text for _, text in bounds)


def _node_type(spec: dataclasses.Field):
    kind = spec.type if not isinstance(spec.type, str) else eval(spec.type, globals())  # noqa: S307 -- our annotations
    return next((arg for arg in getattr(kind, "__args__", ()) if dataclasses.is_dataclass(arg)), kind)


def _field_type(schema, dotted: str):
    node = schema
    for name in dotted.split("."):
        spec = next((f for f in dataclasses.fields(node) if f.name == name), None) if node else None
        node = _node_type(spec) if spec else None
        if not dataclasses.is_dataclass(node):
            return None
    return node


def _value(values: dict, dotted: str):
    node = values
    for name in dotted.replace("[", ".").replace("]", "").split("."):
        try:
            node = node[int(name)] if isinstance(node, list) else node[name]
        except (KeyError, IndexError, ValueError, TypeError):
            return None
    return node


TYPE_NAMES = {"Float": "a number", "Integer": "an integer", "Boolean": "true or false", "String": "a string"}


def _expected(err: ValidationError) -> str:
    message = str(err.msg)
    for name, text in TYPE_NAMES.items():
        if f"converted to {name}" in message:
            return f"expected {text}"
    if "is not a valid bool" in message:
        return "expected true or false"
    if message.startswith("Incompatible value 'None'"):
        return "a value is needed here (not null)"
    return message.splitlines()[0]
