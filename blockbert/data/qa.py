"""Extractive QA examples from SQuAD 1.1/2.0 JSON(.gz) or MRQA JSONL(.gz), validated item by item.

A malformed file (bad JSON, a missing field) stops with a one-line error naming the file and the
item. An answer whose text does not match the paragraph at its offset is counted and reported,
and the answer is dropped from training (the example stays for evaluation).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import itertools
import json
import logging
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from blockbert.data.cache import build_file, from_the_hub, hub_cache
from blockbert.data.encoding import first_non_utf8
from blockbert.errors import JSON_KINDS, ConfigError, as_yaml, json_kind

log = logging.getLogger(__name__)
FORMATS = ("squad1", "squad2", "mrqa")
# what a user sets to choose each format, for the advice of a file read in the wrong one: a fine-tuning run's format
# follows its task; `blockbert evaluate` passes its --format option instead
TASK_OF_FORMAT = {"squad1": "task=squad11", "squad2": "task=squad20", "mrqa": "task=mrqa"}


class QADataError(ConfigError):
    """A QA file is malformed; the message names the file and the item."""


@dataclass
class QAExample:
    qid: str
    question: str
    context: str
    answers: list[str]  # gold texts (for scoring); empty for a SQuAD 2.0 question without answer
    spans: list[tuple[int, int]] = field(default_factory=list)  # verified (start, end) char spans, end exclusive


@dataclass
class QADataset:
    path: str
    format: str
    examples: list[QAExample]
    mismatched_answers: int = 0  # answers whose text does not match the paragraph at the offset

    @property
    def gold(self) -> dict[str, list[str]]:
        return {e.qid: e.answers for e in self.examples}


def detect_format(path: str | Path) -> str:
    """``mrqa`` for .jsonl/.jsonl.gz or another .gz but .json.gz (or JSON lines starting as MRQA's under another
    name), else ``squad2`` if the file's version says 2.x, else ``squad1``."""
    name = str(path)
    if name.endswith((".jsonl", ".jsonl.gz")) or (name.endswith(".gz") and not name.endswith(".json.gz")):
        return "mrqa"
    try:
        return squad_version(load_json(Path(path)))
    except QADataError:
        if _starts_as_mrqa(Path(path)):  # not one JSON value, but MRQA lines: its "malformed JSON" would mislead
            return "mrqa"
        raise


def squad_version(data) -> str:
    """``squad2`` if the SQuAD file's version says 2.x (the official says "v2.0"), else ``squad1``; any JSON value is
    taken (a file that is not an object is refused where it is read, in one line naming what is accepted)."""
    version = data.get("version", "") if isinstance(data, dict) else ""
    return "squad2" if str(version).lstrip("vV").startswith("2") else "squad1"


def task_files(task_cfg) -> dict[str, str] | None:
    """The local files of a task of files, ``{"train", "dev"[, "test"]}``, each checked to be there (a run checks
    them before anything else); None for the generated task and a hub task."""
    if task_cfg.name == "generated":
        return None
    if not (task_cfg.get("train_file") or task_cfg.get("dev_file")):
        if not task_cfg.get("hub_name"):
            raise ConfigError(
                f"task {task_cfg.name}: set task.train_file and task.dev_file (local files) "
                "or task.hub_name (a hub dataset)"
            )
        return None
    if not (task_cfg.get("train_file") and task_cfg.get("dev_file")):
        raise ConfigError(
            f"task {task_cfg.name}: give both task.train_file and task.dev_file "
            f"(got train_file={as_yaml(task_cfg.get('train_file'))}, dev_file={as_yaml(task_cfg.get('dev_file'))})"
        )
    files = {"train": task_cfg.train_file, "dev": task_cfg.dev_file}
    if task_cfg.get("test_file"):
        files["test"] = task_cfg.test_file
    for split, path in files.items():
        if not Path(path).expanduser().is_file():
            what = "a directory, not a file" if Path(path).expanduser().is_dir() else "no such file"
            raise FileNotFoundError(f"task.{split}_file={str(path)!r}: {what}")
    return files


def read_qa_file(
    path: str | Path, fmt: str | None = None, choose: dict[str, str] = TASK_OF_FORMAT, unique_ids: bool = True
) -> QADataset:
    """The file's questions in format ``fmt`` (detected if None); a file in another format is refused in one line
    that says which setting in ``choose`` ({format: what the user gives}) reads it.

    With ``unique_ids`` a question id used twice is refused in one line: a scored file's predictions and scores are
    keyed by id (the official scripts count both questions, a dict of ours kept one). Our choice: a training file
    (``unique_ids=False``) may repeat ids, as training keys nothing by id (windows point to their question by its
    index in the file)."""
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"QA data file {str(path)!r} {what}")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise QADataError(f"format={fmt!r} is unknown: accepted are {', '.join(FORMATS)}")
    reader = _read_mrqa if fmt == "mrqa" else _read_squad
    dataset = QADataset(str(path), fmt, [])
    first_of = {}  # question id -> its (1-based) position in the file
    for example in reader(path, dataset, choose):
        dataset.examples.append(example)
        first = first_of.setdefault(example.qid, len(dataset.examples))
        if unique_ids and first != len(dataset.examples):
            raise QADataError(
                f"{path}: question id {short(example.qid)} is used twice (questions {first} and "
                f"{len(dataset.examples)} of the file): each question of a scored file needs its own id "
                "(predictions and scores are keyed by id)"
            )
    if not dataset.examples:
        raise QADataError(f"{path}: no questions found: expected {SQUAD_OR_MRQA} with at least one question")
    if dataset.mismatched_answers:
        log.warning(
            "%s: answers that do not match the paragraph at their offset: %d (fine-tuning does not train on them; "
            "scoring compares answer texts, which they keep)",
            path,
            dataset.mismatched_answers,
        )
    return dataset


GZIP_MAGIC = b"\x1f\x8b"
SQUAD_OR_MRQA = "SQuAD JSON (an object with a 'data' list of articles) or MRQA JSON lines (an object per line)"


def open_qa(path: Path, mode: str = "rt"):
    """The one place QA files (and `blockbert evaluate`'s JSON files) are opened: gzipped ones (gzip's magic bytes
    or a .gz name) decompressed, text as UTF-8 with a byte order mark, if any, skipped (utf-8-sig)."""
    opener = gzip.open if _gzip_magic(path) or path.suffix == ".gz" else open
    return opener(path, mode, encoding="utf-8-sig") if "t" in mode else opener(path, mode)


def load_json(path: Path, expected: str = SQUAD_OR_MRQA):
    """The file's JSON value; an empty file, one that is not UTF-8 or not JSON is refused in one line (``expected``:
    what the file should hold, for an empty one)."""
    try:
        with open_qa(path) as file:
            text = file.read()
    except UnicodeDecodeError as err:
        raise QADataError(not_utf8(path, err)) from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:  # not gzip data, truncated, damaged
        raise QADataError(not_decompressed(path, err)) from None
    if not text.strip():  # json said "malformed JSON at line 1, column 1: Expecting value"
        raise QADataError(f"{path} is empty{' (only whitespace)' if text else ''}: expected {expected}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise QADataError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None


def not_utf8(path: Path, err: UnicodeDecodeError) -> str:
    """The pre-training corpus's words (data/corpus.py) for a file that is not UTF-8: the first bad byte and its
    offset (in the decompressed bytes of a gzipped file), and how to convert it."""
    with open_qa(path, "rb") as file:  # the error's start is within a chunk the reader decoded: find the offset
        found = first_non_utf8(file)
    byte, at = found if found else (err.object[err.start], None)
    where = "" if at is None else f" at offset {at}" + (" of its decompressed bytes" if _gzip_magic(path) else "")
    return (
        f"{path} is not UTF-8 text (byte {byte:#04x}{where}): QA files are UTF-8 JSON or JSON lines; "
        "convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    )


def _gzip_magic(path: Path) -> bool:
    """Whether the file starts with gzip's magic bytes, whatever its name."""
    with open(path, "rb") as file:
        return file.read(2) == GZIP_MAGIC


def not_decompressed(path: Path, err: Exception) -> str:
    return f"{path} cannot be decompressed: it is corrupt or truncated ({err})"


def short(value, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: values quoted from a file can be megabytes; None and booleans
    as JSON and YAML spell them (null, true, false), the words of the file quoted."""
    text = as_yaml(value)
    return text if len(text) <= limit else text[:limit] + "..."


def kind_and_value(value) -> str:
    """What a value is and the value ("a string '17'"), or "null"."""
    return "null" if value is None else f"{json_kind(value)} {short(value)}"


def _field(item: dict, key: str, path: Path, where: str, kind=None):
    """``item[key]``, which must be there and, with ``kind`` (str, list or int), of that JSON kind."""
    if not isinstance(item, dict) or key not in item:
        raise QADataError(f"{path}: {where} has no field {key!r}")
    value = item[key]
    if kind is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        wanted = JSON_KINDS[kind]
        raise QADataError(f"{path}: {where}: field {key!r} should be {wanted}, not {kind_and_value(value)}")
    return value


def _verified_span(dataset: QADataset, context: str, text: str, start, end, path: Path, where: str):
    """(start, end) if ``context[start:end] == text``; a mismatch is counted; an offset outside is an error."""
    if not isinstance(start, int) or not isinstance(end, int) or not 0 <= start <= end <= len(context):
        raise QADataError(
            f"{path}: {where}: answer offset {short(start)} is outside its paragraph (length {len(context)})"
        )
    if context[start:end] != text:
        dataset.mismatched_answers += 1
        return None
    return start, end


def _verified_spans(dataset: QADataset, context: str, candidates, path: Path, where: str) -> list[tuple[int, int]]:
    """The spans of the (text, start, end) candidates that match the paragraph; mismatches are counted."""
    return [
        span
        for text, start, end in candidates
        if (span := _verified_span(dataset, context, text, start, end, path, where))
    ]


def _read_squad(path: Path, dataset: QADataset, choose: dict[str, str]):
    """A question has an answer when its ``answers`` list is not empty, as the official v2.0 evaluation script
    decides. Our choice: ``is_impossible``, where given, must be a JSON boolean and agree with ``answers`` (true with
    answers, or false without, is refused): the official scorer and our training would read such a file apart, and
    "false" (a string) made answerable questions unanswerable."""
    data = _squad_json(path, choose)
    for a, article in enumerate(_field(data, "data", path, "the top-level object", list)):
        for p, paragraph in enumerate(_field(article, "paragraphs", path, f"article {a}", list)):
            where_p = f"article {a}, paragraph {p}"
            context = _field(paragraph, "context", path, where_p, str)
            for qa in _field(paragraph, "qas", path, where_p, list):
                qid = str(_field(qa, "id", path, f"{where_p}, a question"))
                where = f"question {short(qid)}"
                question = _field(qa, "question", path, where, str)
                answers = _field(qa, "answers", path, where, list)
                if "is_impossible" in qa:
                    _check_impossible(qa["is_impossible"], answers, path, where)
                texts = [_field(answer, "text", path, where, str) for answer in answers]
                starts = [_field(answer, "answer_start", path, where, int) for answer in answers]
                spans = _verified_spans(
                    dataset, context, [(t, s, s + len(t)) for t, s in zip(texts, starts)], path, where
                )
                if dataset.format == "squad1" and not texts:
                    raise QADataError(
                        f"{path}: {where} has no answer, as in SQuAD 2.0 (a SQuAD 1.1 question needs one): "
                        f"give {choose['squad2']}"
                    )
                yield QAExample(qid, question, context, texts, spans)


def _check_impossible(impossible, answers: list, path: Path, where: str) -> None:
    """``is_impossible`` must be a boolean that agrees with the answers (see :func:`_read_squad`)."""
    if not isinstance(impossible, bool):
        raise QADataError(
            f"{path}: {where}: field 'is_impossible' should be a boolean (true or false), "
            f"not {kind_and_value(impossible)}"
        )
    if impossible == bool(answers):
        said = "true (no answer) but 'answers' is not empty" if impossible else "false but 'answers' is empty"
        raise QADataError(
            f"{path}: {where}: 'is_impossible' is {said}: the file contradicts itself (the official scorer goes by "
            "'answers', and so do we): make them agree"
        )


def _squad_json(path: Path, choose: dict[str, str]) -> dict:
    """The file's JSON object; MRQA JSON lines (which fail as one JSON value, or are one paragraph without 'data') are
    told apart from a malformed file: the fix is the format, not the file. Any other top level is refused in one line
    (read on, [1, 2] said "AttributeError: 'list' object has no attribute 'get'")."""
    try:
        data = load_json(path)
        mrqa = isinstance(data, dict) and "data" not in data and _is_mrqa_line(data)
    except QADataError:
        if not _starts_as_mrqa(path):
            raise
        mrqa = True
    if mrqa:
        raise QADataError(
            f"{path} looks like MRQA JSON lines (a JSON object per line), not SQuAD JSON: give {choose['mrqa']}"
        )
    if not isinstance(data, dict):
        raise QADataError(
            f"{path}: the file is {json_kind(data)}, not SQuAD JSON (an object with a 'data' list of articles) "
            "nor MRQA JSON lines (an object per line)"
        )
    return data


def _starts_as_mrqa(path: Path) -> bool:
    """Whether the file's first line is an MRQA header or paragraph (read alone: the file may be gzipped)."""
    try:
        with open_qa(path) as lines:
            first = next((line for line in lines if line.strip()), "")
        return _is_mrqa_line(json.loads(first))
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, json.JSONDecodeError):
        return False


def _is_mrqa_line(item) -> bool:
    return isinstance(item, dict) and ("header" in item or {"context", "qas"} <= item.keys())


def _squad_format(path: Path) -> str | None:
    """``squad1`` or ``squad2`` if the whole file is SQuAD JSON (a dict with a 'data' list), else None."""
    try:
        with open_qa(path) as file:
            data = json.load(file)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return squad_version(data) if isinstance(data, dict) and isinstance(data.get("data"), list) else None


def _read_mrqa(path: Path, dataset: QADataset, choose: dict[str, str]):
    try:
        yield from _mrqa_examples(path, dataset)
    except QADataError:
        fmt = None if dataset.examples or _starts_as_mrqa(path) else _squad_format(path)  # SQuAD JSON at line 1?
        if fmt is None:
            raise
        raise QADataError(
            f"{path} looks like SQuAD JSON (a dict with 'data'), not MRQA JSON lines: give {choose[fmt]}"
        ) from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:  # not gzip data, truncated, damaged
        raise QADataError(not_decompressed(path, err)) from None
    except UnicodeDecodeError as err:
        raise QADataError(not_utf8(path, err)) from None


def _mrqa_examples(path: Path, dataset: QADataset):
    with open_qa(path) as lines:
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise QADataError(f"{path}: line {n}: malformed JSON: {err.msg}") from None
            if not isinstance(item, dict):  # 5 said "TypeError: argument of type 'int' is not iterable"
                raise QADataError(
                    f"{path}: line {n} is {json_kind(item)}; MRQA JSON lines are an object each "
                    "(a header, or a paragraph with 'context' and 'qas')"
                )
            if "header" in item:
                continue
            context = _field(item, "context", path, f"line {n}", str)
            for qa in _field(item, "qas", path, f"line {n}", list):
                qid = str(_field(qa, "qid", path, f"line {n}, a question"))
                where = f"line {n}, question {short(qid)}"
                question = _field(qa, "question", path, where, str)
                texts = [str(t) for t in _field(qa, "answers", path, where, list)]
                if not texts:
                    raise QADataError(f"{path}: {where} has an empty 'answers' list (MRQA questions have answers)")
                candidates = []
                for detected in _field(qa, "detected_answers", path, where, list):
                    text = _field(detected, "text", path, where, str)
                    for pair in _field(detected, "char_spans", path, where, list):  # end inclusive
                        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, int) for x in pair)):
                            raise QADataError(
                                f"{path}: {where}: char_spans entry {short(pair)} is not a [start, end] "
                                "pair of integers"
                            )
                        candidates.append((text, pair[0], pair[1] + 1))
                spans = _verified_spans(dataset, context, candidates, path, where)
                yield QAExample(qid, question, context, texts, spans)


def split_dev_test(dataset: QADataset) -> tuple[QADataset, QADataset]:
    """MRQA has no test set: split the dev set evenly by paragraph, deterministically (by hash)."""
    contexts = sorted({e.context for e in dataset.examples}, key=lambda c: hashlib.sha1(c.encode()).hexdigest())
    test_contexts = set(contexts[len(contexts) // 2 :])
    dev = [e for e in dataset.examples if e.context not in test_contexts]
    test = [e for e in dataset.examples if e.context in test_contexts]
    return (
        QADataset(dataset.path + "#dev", dataset.format, dev),
        QADataset(dataset.path + "#test", dataset.format, test),
    )


def gold_file_name(fmt: str) -> str:
    """A split's gold file is in the split's format, and MRQA's are JSON lines (.jsonl): `blockbert evaluate` detects
    the format by that name."""
    return "gold.jsonl" if fmt == "mrqa" else "gold.json"


def write_qa_file(dataset: QADataset, path: Path) -> None:
    """``dataset`` as a file of its format that :func:`read_qa_file` reads back with the same questions, gold texts
    and order, so `blockbert evaluate` scores it as the run did: no file of the user holds a half of a split dev set.
    Only verified answer spans are kept; a SQuAD answer that did not match its offset gets the first place its text
    is found (the paragraph's start if none: scores read only the texts)."""
    text = _mrqa_text(dataset) if dataset.format == "mrqa" else _squad_text(dataset)
    path.write_text(text, encoding="utf-8")


def _paragraphs(examples: list[QAExample]) -> list[list[QAExample]]:
    """Runs of consecutive examples on one paragraph, in order (the order of the questions sets the scores' sums)."""
    return [list(run) for _, run in itertools.groupby(examples, key=lambda e: e.context)]


def _mrqa_text(dataset: QADataset) -> str:
    lines = [{"header": {"source": dataset.path}}]
    for examples in _paragraphs(dataset.examples):
        context = examples[0].context
        qas = [
            {
                "qid": e.qid,
                "question": e.question,
                "answers": e.answers,
                "detected_answers": [{"text": context[s:end], "char_spans": [[s, end - 1]]} for s, end in e.spans],
            }
            for e in examples
        ]
        lines.append({"context": context, "qas": qas})
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)


def _squad_text(dataset: QADataset) -> str:
    paragraphs = []
    for examples in _paragraphs(dataset.examples):
        qas = []
        for e in examples:
            qa = {"id": e.qid, "question": e.question, "answers": [_squad_answer(e, t) for t in e.answers]}
            if dataset.format == "squad2" and not e.answers:
                qa["is_impossible"] = True
            qas.append(qa)
        paragraphs.append({"context": examples[0].context, "qas": qas})
    version = "2.0" if dataset.format == "squad2" else "1.1"
    return json.dumps({"version": version, "data": [{"title": "", "paragraphs": paragraphs}]}, ensure_ascii=False)


def _squad_answer(example: QAExample, text: str) -> dict:
    context = example.context
    start = next((s for s, end in example.spans if context[s:end] == text), max(context.find(text), 0))
    return {"text": text, "answer_start": start}


NAMES = [
    "Alma",
    "Boris",
    "Chen",
    "Dara",
    "Emil",
    "Farah",
    "Goran",
    "Hana",
    "Ivo",
    "Jana",
    "Kofi",
    "Lena",
    "Mateo",
    "Nia",
    "Oskar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sami",
    "Tomas",
    "Uma",
    "Vera",
    "Wim",
    "Yara",
]
CITIES = ["Lisbon", "Oslo", "Quito", "Hanoi", "Dakar", "Lima", "Riga", "Perth", "Accra", "Bern", "Cairo", "Delhi"]
THINGS = ["violin", "chess", "tennis", "painting", "poetry", "guitar", "rowing", "pottery", "cooking", "drums"]
COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
FACTS = [  # (sentence, question, answer source)
    ("{n} lives in {city}.", "Where does {n} live?", "city"),
    ("{n} enjoys {thing}.", "What does {n} enjoy?", "thing"),
    ("The favourite colour of {n} is {color}.", "What is the favourite colour of {n}?", "color"),
]


GENERATED_PEOPLE = (3, 3)  # a generated paragraph's persons by default: [fewest, most]


def write_generated_squad(
    path: Path, questions: int, version: str = "1.1", seed: int = 0, people: tuple[int, int] = GENERATED_PEOPLE
) -> Path:
    """Write (once) a synthetic SQuAD-format file: short biographies and questions about them.

    Each paragraph tells three facts about each of ``people`` persons (as many as a uniform draw from that range:
    a range spreads the paragraphs' lengths as real QA sets' are spread; three each by default). With version "2.0"
    about one question in six asks about a person the paragraph does not mention (no answer: 60% of the paragraphs
    add one). ``questions`` is rounded up to whole paragraphs (3 questions each, 4 with one without answer): 1600
    gives 1602 with version 1.1.
    """
    text = functools.partial(_generated_squad, questions, str(version), seed, people)
    return build_file(path, lambda tmp: tmp.write_text(text(), encoding="utf-8"))


def _generated_squad(questions: int, version: str, seed: int, people: tuple[int, int]) -> str:
    rng = random.Random(seed)
    fewest, most = people
    articles, count = [], 0
    while count < questions:
        prefix = f"a{len(articles)}q"
        persons = rng.sample(NAMES, fewest if fewest == most else rng.randint(fewest, most))
        facts, qas = [], []
        for person in persons:
            values = dict(n=person, city=rng.choice(CITIES), thing=rng.choice(THINGS), color=rng.choice(COLORS))
            for sentence, question, key in rng.sample(FACTS, 3):
                facts.append((sentence.format(**values), question.format(**values), values[key]))
        rng.shuffle(facts)
        context = ""
        for sentence, question, answer in facts:
            start = len(context) + sentence.index(answer)
            qas.append(
                {
                    "id": f"{prefix}{len(qas)}",
                    "question": question,
                    "answers": [{"text": answer, "answer_start": start}],
                }
            )
            context += sentence + " "
        context = context.rstrip()
        qas = rng.sample(qas, 3)
        if version.startswith("2") and rng.random() < 0.6:
            stranger = rng.choice([n for n in NAMES if n not in persons])
            qas.append(
                {
                    "id": f"{prefix}{len(facts)}",
                    "question": f"Where does {stranger} live?",
                    "answers": [],
                    "is_impossible": True,
                }
            )
        count += len(qas)
        articles.append({"title": persons[0], "paragraphs": [{"context": context, "qas": qas}]})
    return json.dumps({"version": version, "data": articles})


def read_hub_split(
    name: str, config: str | None, split: str, fmt: str, cache_dir: Path, subset: str | None = None
) -> QADataset:
    """A split of a hub dataset with the SQuAD schema (``squad``, ``squad_v2``) or MRQA's (``mrqa``)."""
    import datasets

    # no trust_remote_code: datasets >= 4.0 (pyproject.toml's floor) runs no loading scripts and dropped the keyword
    with from_the_hub(f"task.hub_name={name!r}", "give local files instead: task.train_file=... task.dev_file=..."):
        rows = datasets.load_dataset(name, config, split=split, cache_dir=hub_cache(cache_dir))
    if subset is not None:
        rows = rows.filter(lambda s: s == subset, input_columns="subset")
    source = f"{name}[{split}]" + (f"/{subset}" if subset else "")
    dataset = QADataset(source, fmt, [])
    where = Path(source)
    for row in rows:
        if fmt == "mrqa":
            qid, texts, detected = str(row["qid"]), list(row["answers"]), row["detected_answers"]
            candidates = [
                (text, start, end + 1)
                for text, char_spans in zip(detected["text"], detected["char_spans"])
                for start, end in zip(char_spans["start"], char_spans["end"])
            ]  # MRQA ends are inclusive
        else:
            qid, answers = str(row["id"]), row["answers"]
            texts = list(answers["text"])
            candidates = [(text, start, start + len(text)) for text, start in zip(texts, answers["answer_start"])]
        spans = _verified_spans(dataset, row["context"], candidates, where, f"question {qid!r}")
        dataset.examples.append(QAExample(qid, row["question"], row["context"], texts, spans))
    if not dataset.examples:
        raise QADataError(f"{source}: no questions found")
    return dataset
