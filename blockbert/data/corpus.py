"""Load a pre-training corpus as a ``datasets.Dataset`` with one document per row (column ``text``)."""

from __future__ import annotations

import glob
import gzip
import json
import random
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import datasets

from blockbert.data.cache import build_file, file_stats, fingerprint, from_the_hub, hub_cache
from blockbert.data.encoding import first_non_utf8
from blockbert.data.longrange import LongRangeSpec, longrange_corpus
from blockbert.errors import ConfigError, json_kind

FORMATS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
COMPRESSED = ".gz"  # text, JSON and JSONL files may be gzipped (corpus.txt.gz): datasets and we read them as they are
# what separates the paragraphs of data.documents=paragraph: part of the cache keys of what is built from them
PARAGRAPH_SEPARATOR = "blank or whitespace-only lines"
SOURCES = ("generated", "longrange", "files", "hub")
# the Arrow types of a column of text: strings, or no value in any row (null is no text: such a row is left out)
TEXT_DTYPES = ("string", "large_string", "null")
FIRST_ROW_BYTES = 1 << 20  # the most of a JSON corpus's first line check_corpus reads (one JSON document: none of it)


def check_corpus(data_cfg) -> None:
    """One-line errors for pre-training data settings that would otherwise fail deep inside ``datasets``, and for a
    corpus that is not there (no file matches ``data.files``) or cannot be generated (``data.longrange.*``): a run
    checks them before anything else (the memory check's fit takes seconds). Of the corpus's text it reads only
    what is cheap whatever its size: the start of each small file (is it blank?) and the first row of the first
    JSON file (:func:`_check_first_row`); a value found later that is not text is refused by the loader
    (:func:`_text_column`), also in one line."""
    fraction = data_cfg.validation_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(
            f"data.validation_fraction={fraction!r} is out of range: it is the fraction of documents "
            "held out for validation, a number strictly between 0 and 1 (e.g. 0.05)"
        )
    num_proc = data_cfg.get("num_proc")
    if num_proc is not None and (isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1):
        raise ConfigError(f"data.num_proc={num_proc!r} is not a number of processes: give null or an integer >= 1")
    rows_per_document(data_cfg)
    if data_cfg.source == "files":
        _check_first_row(_expand(data_cfg.files), data_cfg.get("text_field", "text"))
    elif data_cfg.source == "longrange":
        LongRangeSpec.from_config(data_cfg)


def load_documents(data_cfg, cache_dir: Path) -> datasets.Dataset:
    source = data_cfg.source
    if source not in SOURCES:
        raise ConfigError(f"data.source={source!r} is unknown: accepted are {', '.join(SOURCES)}")
    group = rows_per_document(data_cfg)
    if source == "hub":
        return _load_hub(data_cfg, cache_dir, group)
    if source == "generated":
        paths = [str(generated_corpus(cache_dir, data_cfg.generated_documents))]
    elif source == "longrange":
        spec = LongRangeSpec.from_config(data_cfg)
        paths = [str(longrange_corpus(cache_dir, spec, data_cfg.generated_documents))]
    else:
        paths = _expand(data_cfg.files)
    return _group_rows(_load_files(paths, data_cfg, cache_dir), group[0])


def rows_per_document(data_cfg) -> list[int]:
    """``data.rows_per_document`` as one count per source (one per hub dataset), each an integer >= 1."""
    value = data_cfg.get("rows_per_document", 1)
    names = data_cfg.hub_name if data_cfg.source == "hub" else None
    sources = 1 if names is None or isinstance(names, str) else len(names)
    counts = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value] * sources
    if len(counts) != sources or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts):
        raise ConfigError(
            f"data.rows_per_document={value!r} is not accepted: give an integer >= 1 (consecutive rows "
            f"joined into one document), or a list of {sources} such integers, one per hub dataset"
        )
    return counts


def _group_rows(ds: datasets.Dataset, rows: int) -> datasets.Dataset:
    """Consecutive rows joined, one per line, into documents of ``rows`` rows (the last one may be shorter):
    a corpus stored one sentence per row (the hub's BookCorpus) becomes documents sequences can fill."""
    if rows == 1:
        return ds
    return ds.map(
        lambda batch: {"text": ["\n".join(batch["text"])]},
        batched=True,
        batch_size=rows,
        desc=f"joining every {rows} rows into a document",
    )


def describe_source(data_cfg) -> str:
    if data_cfg.source == "files":
        return repr(data_cfg.files if isinstance(data_cfg.files, str) else list(data_cfg.files))
    if data_cfg.source == "hub":
        return f"{data_cfg.hub_name!r} (hub)"
    return "(generated long-range corpus)" if data_cfg.source == "longrange" else "(generated)"


def _expand(files) -> list[str]:
    patterns = [files] if isinstance(files, str) else list(files or [])
    if not patterns:
        raise ConfigError("data.files is empty: give a path, a glob or a list of .txt/.json/.jsonl/.parquet files")
    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(str(Path(pattern).expanduser())))
        if not matches:
            raise FileNotFoundError(f"data.files: no file matches {pattern!r}")
        found = [m for m in matches if Path(m).is_file()]
        if not found:  # our choice: a directory is not read whole (it may hold other files); a glob says which
            raise ConfigError(
                f"data.files: {pattern!r} matches directories only, no file: give the files, e.g. a glob "
                f"{_glob_in(matches[0])!r}"
            )
        paths += found
    if all(_is_blank(p) for p in paths):
        raise ConfigError(f"data.files={files!r}: the corpus is empty (no text in {', '.join(paths)})")
    return paths


def _glob_in(directory: str) -> str:
    """A glob of the corpus files in ``directory``: by the suffix most of its files of a format blockbert reads have
    (of suffixes as common, the first in name order; ``.txt`` where it holds none)."""
    files = (p for p in sorted(Path(directory).iterdir()) if p.is_file() and file_format(str(p)))
    suffixes = Counter("".join(p.suffixes[-2:]) if _gzipped(str(p)) else p.suffix for p in files)
    suffix = suffixes.most_common(1)[0][0] if suffixes else ".txt"  # ties: in the order first met
    return str(Path(directory) / f"*{suffix}")


def _check_first_row(paths: list[str], field: str) -> None:
    """Refuse, before the run starts, a ``data.text_field`` whose value in the first row of the first JSON lines file
    is not text (``data.text_field=id``: a column of integers): one row is cheap to read whatever the corpus's size.
    A value further on is refused by the loader, which reads every row (:func:`_text_column`). A row without the
    field, or null in it, is no error: it holds no text, and is left out like an empty document."""
    path = next((p for p in paths if file_format(p) == "json"), None)
    if path is None or not isinstance(field, str):
        return
    try:
        with _open(path) as file:
            number, line = 1, file.readline(FIRST_ROW_BYTES)
            while line.endswith("\n") and not line.strip():
                number, line = number + 1, file.readline(FIRST_ROW_BYTES)
        row = json.loads(line.lstrip("\ufeff"))
    except (OSError, ValueError, EOFError, zlib.error):  # not UTF-8 or JSON lines, corrupt, a long line: the loader's
        return
    if isinstance(row, dict) and not _is_text(row.get(field)):
        raise ConfigError(_not_text_line(path, field, row[field], f"line {number}", row))


def _is_text(value) -> bool:
    """A value of a text field: a string, or null (no text)."""
    return value is None or isinstance(value, str)


def _not_text_line(origin: str, field: str, value, where: str | None = None, row: dict | None = None) -> str:
    """The line refusing ``data.text_field`` for holding ``value``, which is not text, in ``origin`` (at ``where``, a
    line or a row), naming the fields of ``row`` that hold text."""
    at = f" ({where})" if where else ""
    texts = [name for name, v in (row or {}).items() if name != field and isinstance(v, str)]
    hint = f" (text fields of that row: {', '.join(texts)})" if texts else ""
    return f"{origin}: data.text_field={field!r} holds {json_kind(value)}{at}, not text: give a field of strings{hint}"


def _is_blank(path: str) -> bool:
    size = Path(path).stat().st_size
    if size == 0 or size >= 4096:
        return size == 0
    return not (_read_through_gzip(path, 4096) if _gzipped(path) else Path(path).read_bytes()).strip()


def _gzipped(path: str) -> bool:
    return Path(path).suffix.lower() == COMPRESSED


def file_format(path: str) -> str | None:
    """The format of a data file by its name: ``text``, ``json`` or ``parquet`` (a gzipped text or JSON file by the
    name under ``.gz``), None if it is none of them."""
    name = Path(path)
    if _gzipped(path):
        name = Path(name.stem)
        return FORMATS.get(name.suffix.lower()) if FORMATS.get(name.suffix.lower()) != "parquet" else None
    return FORMATS.get(name.suffix.lower())


def _read_through_gzip(path: str, keep: int = 0) -> bytes:
    """Decompress a gzipped file once through, so that a corrupt or truncated one is named in one line (before
    datasets meets it); its first ``keep`` bytes."""
    try:
        with gzip.open(path, "rb") as file:
            head = file.read(keep) if keep else b""
            while file.read(1 << 24):
                pass
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:  # not gzip data, truncated, damaged
        raise ConfigError(f"{path} cannot be decompressed: it is corrupt or truncated ({err})") from None
    return head


def _load_files(paths: list[str], data_cfg, cache_dir: Path) -> datasets.Dataset:
    kinds = {p: file_format(p) for p in paths}
    unsupported = [p for p, kind in kinds.items() if kind is None]
    if unsupported:
        raise ConfigError(
            f"data.files: {unsupported[0]!r} has a format blockbert does not read: accepted are "
            f"{', '.join(sorted(FORMATS))} (text and JSON also gzipped, {COMPRESSED})"
        )
    if len(set(kinds.values())) > 1:  # one datasets builder reads them all
        first = {kind: p for p, kind in reversed(kinds.items())}
        found = ", ".join(f"{kind} ({Path(p).name})" for kind, p in sorted(first.items()))
        raise ConfigError(f"data.files mixes formats: {found}; give files of one format per run (a glob, a list)")
    kind = kinds[paths[0]]
    for path in filter(_gzipped, paths):
        _read_through_gzip(path)
    kwargs = {}
    if kind == "text":
        sample_by = {"paragraph": "paragraph", "file": "document", "line": "line"}.get(data_cfg.documents)
        if sample_by is None:
            raise ConfigError(f"data.documents={data_cfg.documents!r} is unknown: accepted are paragraph, file, line")
        kwargs["sample_by"] = sample_by
    try:
        if kwargs.get("sample_by") == "paragraph":
            ds = _load_paragraphs(paths, cache_dir)
        else:
            ds = datasets.load_dataset(kind, data_files=paths, split="train", cache_dir=hub_cache(cache_dir), **kwargs)
    except datasets.exceptions.DatasetGenerationError as err:
        if isinstance(err.__cause__, UnicodeDecodeError):
            raise ConfigError(_not_utf8(paths) or f"data.files: a file is not UTF-8 text ({err.__cause__})") from None
        if kind == "json":  # older datasets fail on a column of mixed kinds, e.g. a list among strings
            unreadable = f"data.files: the JSON corpus cannot be read ({err.__cause__})"
            message = _not_json(paths)
            found = None if message else _non_text_in_json(paths, data_cfg.text_field)
            raise ConfigError(message or (_not_text_line(*found) if found else unreadable)) from None
        raise
    if kind == "text":
        return _text_column(ds, "text", "")
    return _text_column(ds, data_cfg.text_field, f"data.files={describe_source(data_cfg)}", paths)


def _load_paragraphs(paths: list[str], cache_dir: Path) -> datasets.Dataset:
    """Text files as paragraphs, one per row: blocks of lines separated by blank lines, a line of only whitespace
    counting as blank (WikiText's separator lines hold one space; ``datasets``' own paragraph mode splits on
    two newlines only). Cached by ``datasets`` under a fingerprint of the files' paths, sizes and times."""
    return datasets.Dataset.from_generator(
        paragraphs,
        features=datasets.Features({"text": datasets.Value("string")}),
        gen_kwargs={"paths": paths},
        cache_dir=hub_cache(cache_dir),
        fingerprint=fingerprint("paragraphs", PARAGRAPH_SEPARATOR, file_stats(paths)),
    )


def paragraphs(paths: list[str]):
    """The paragraphs of text files (:data:`PARAGRAPH_SEPARATOR`), as ``{"text": ...}`` rows, lines joined by
    newlines; read line by line, so a file of any size streams through."""
    for path in paths:
        lines: list[str] = []
        with _open(path) as file:  # universal newlines: CRLF and CR read as LF
            for line in file:
                if not line.isspace():
                    lines.append(line)
                elif lines:
                    yield {"text": "".join(lines).rstrip("\n")}
                    lines = []
        if lines:
            yield {"text": "".join(lines).rstrip("\n")}


def _not_utf8(paths: list[str]) -> str | None:
    """A line naming the first file that is not UTF-8 text, and where (datasets does not say which file)."""
    for path in paths:
        with _open(path, "rb") as file:
            found = first_non_utf8(file)
        if found:
            return (
                f"{path} is not UTF-8 text (byte {found[0]:#04x} at offset {found[1]}): "
                "convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8) or leave it out of data.files"
            )
    return None


def _not_json(paths: list[str]) -> str | None:
    """A line naming the first file that is neither JSON lines nor one JSON document, and where (datasets names
    neither the file nor the line). The whole file is parsed as one document only when its first line is not JSON
    (a document over several lines starts so): a JSON lines file of gigabytes with a bad line is not read whole."""
    for path in paths:
        error, on_first_line = _json_lines_error(path)
        if error and not (on_first_line and _is_one_json_document(path)):
            return (
                f"{path} is not JSON ({error}); a .json/.jsonl corpus holds one JSON object per line "
                '({"text": ...}) or one JSON document'
            )
    return None


def _open(path: str, mode: str = "rt"):
    """A corpus file, read through gzip when it is gzipped; text as UTF-8."""
    opener = gzip.open if _gzipped(path) else open
    return opener(path, mode, encoding="utf-8") if "t" in mode else opener(path, mode)


def _json_lines_error(path: str) -> tuple[str | None, bool]:
    """(what is wrong in the file's first line that is not JSON, and where, as Python says it: "Expecting value: line
    2 column 1"; whether that line is the first that is not blank); (None, False) if every line is JSON."""
    first = True
    with _open(path) as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                return f"{err.msg}: line {number} column {err.colno}", first
            first = False
    return None, False


def _is_one_json_document(path: str) -> bool:
    with _open(path) as file:
        try:
            json.load(file)
        except json.JSONDecodeError:
            return False
    return True


def _load_hub(data_cfg, cache_dir: Path, group: list[int]) -> datasets.Dataset:
    names = data_cfg.hub_name if not isinstance(data_cfg.hub_name, str) else [data_cfg.hub_name]
    configs = data_cfg.hub_config
    configs = [configs] * len(names) if configs is None or isinstance(configs, str) else list(configs)
    parts = []
    for name, config, rows in zip(names, configs, group):
        # no trust_remote_code: datasets >= 4.0 (pyproject.toml's floor) runs no loading scripts and dropped the keyword
        with from_the_hub(f"data.hub_name={name!r}", "give local files instead: data=text_files data.files=..."):
            ds = datasets.load_dataset(name, config, split=data_cfg.hub_split, cache_dir=hub_cache(cache_dir))
        parts.append(_group_rows(_text_column(ds, data_cfg.text_field, f"data.hub_name={name!r}"), rows))
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def _text_column(ds: datasets.Dataset, field: str, origin: str, paths: Sequence[str] = ()) -> datasets.Dataset:
    """Column ``field`` of ``ds`` (read from ``origin``: its ``paths``) as column ``text``, rows without text left out
    (empty, whitespace only, null). A column holding anything but strings and null is refused in one line: its Arrow
    type tells, and only then are rows read again, to name the first such value (:func:`_not_text`)."""
    if field not in ds.column_names:
        raise ConfigError(
            f"data.text_field={field!r} is not a column of the corpus: columns are {', '.join(ds.column_names)}"
        )
    feature = ds.features[field]
    if not (isinstance(feature, datasets.Value) and feature.dtype in TEXT_DTYPES):
        raise ConfigError(_not_text(ds, field, origin, paths))
    ds = ds.select_columns([field])
    if field != "text":
        ds = ds.rename_column(field, "text")
    return ds.filter(lambda t: bool(t and t.strip()), input_columns="text")


def _not_text(ds: datasets.Dataset, field: str, origin: str, paths: Sequence[str]) -> str:
    """The line refusing column ``field`` of ``ds`` for a value that is not text: the first such, by its file and
    line (a JSON corpus, read again: the JSON kinds as written) or by its row (of its parquet file, of a hub
    dataset)."""
    kind = file_format(paths[0]) if paths else None
    found = _non_text_in_json(paths, field) if kind == "json" else None
    if found:
        return _not_text_line(*found)
    row = None
    for start, batch in enumerate(ds.select_columns([field]).iter(batch_size=1000)):
        row = next((start * 1000 + i for i, value in enumerate(batch[field]) if not _is_text(value)), None)
        if row is not None:
            break
    if row is None:  # not met: a column of another type holding only strings and null
        return f"{origin}: data.text_field={field!r} holds {ds.features[field]}, not text: give a field of strings"
    record, number = ds[row], row + 1
    if kind == "parquet":  # the dataset's rows are the files' in order
        import pyarrow.parquet as pq

        for path in paths:
            rows = pq.ParquetFile(path).metadata.num_rows
            if row < rows:
                origin, number = path, row + 1
                break
            row -= rows
    return _not_text_line(origin, field, record[field], f"row {number}", record)


def _non_text_in_json(paths: Sequence[str], field: str) -> tuple | None:
    """(file, ``field``, value, where, row) of the first row of JSON corpus files whose ``field`` holds a value that
    is not text; None if there is none. Reads up to that row."""
    for path in paths:
        for where, row in _json_rows(path):
            if isinstance(row, dict) and not _is_text(row.get(field)):
                return path, field, row[field], where, row
    return None


def _json_rows(path: str):
    """(where, row) of a JSON corpus file: ("line N", object) of JSON lines, ("row N", item) of one JSON document
    that is a list (an item that is no object read as {"text": item}, as datasets does). What is not JSON is passed
    over: :func:`_not_json` names it."""
    with _open(path) as file:
        one_document = file.read(1 << 12).lstrip("\ufeff \t\r\n").startswith("[")
    with _open(path) as file:
        if one_document:
            try:
                items = json.load(file)
            except ValueError:
                return
            for number, item in enumerate(items if isinstance(items, list) else [], 1):
                yield f"row {number}", item if isinstance(item, dict) else {"text": item}
            return
        for number, line in enumerate(file, 1):
            try:
                row = json.loads(line.lstrip("\ufeff")) if line.strip() else None
            except ValueError:
                continue
            if row is not None:
                yield f"line {number}", row


WORDS = (
    "the a model block attention sequence token head layer memory time train data long short query key value "
    "paper result shows uses each two three many small large fast slow first last network language word "
    "sentence document reads writes learns predicts masked hidden state vector matrix sparse dense shift "
    "river city north south music game player team story book author history science people year world"
).split()


def generated_corpus(cache_dir: Path, documents: int, seed: int = 1234) -> Path:
    """Write (once) a synthetic corpus: documents of a few sentences, blank-line separated.

    Sentences follow simple templates, so a tiny model can learn something measurable in minutes.
    """
    return build_file(
        cache_dir / "corpora" / f"generated-{documents}-{seed}.txt",
        lambda tmp: tmp.write_text(generated_text(documents, seed), encoding="utf-8"),
    )


def generated_text(documents: int, seed: int = 1234) -> str:
    """The synthetic corpus's text (:func:`generated_corpus`)."""
    rng = random.Random(seed)
    docs = []
    for _ in range(documents):
        topic = rng.sample(WORDS, 6)
        sentences = []
        for _ in range(rng.randint(3, 12)):
            words = [rng.choice(topic if rng.random() < 0.6 else WORDS) for _ in range(rng.randint(5, 16))]
            sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", "!", "?"]))
        docs.append("\n".join(sentences))
    return "\n\n".join(docs) + "\n"
