"""Batch prediction: texts from a file or stdin through an exported SavedModel, streamed.

  python -m bert_tf2.predict --saved_model=E/1 --input=reviews.csv --text_column=评论 \
      --output=predictions.csv
  cat texts.txt | python -m bert_tf2.predict --saved_model=E > predictions.jsonl

Input (--input, '-' for stdin; --input_format, else by extension, as every command reads files:
`data.file_format`): CSV/TSV with a header (.csv, .tsv; the text in --text_column; other
columns are ignored), JSONL (.jsonl, .json), or plain text with one text per line (.txt, any
other name, stdin) -- unless --column_names names the columns of a headerless file, which makes
.txt (and stdin) tab-separated, as in train and evaluate. gzip, bzip2 and xz files are
decompressed as they are read, their format named by the extension before `.gz` (.csv.gz).
UTF-8 with or without a BOM, or --encoding; CSV fields may be quoted and hold commas and
newlines (TSV fields are everything between tabs, quotes included). A reading flag that
cannot apply (--column_names with plain text or JSONL, --text_b_column with plain text) is
refused.

Output (--output, '-' for stdout; --format, else by extension, else JSONL): one row per input
row, in input order, with the input's line number, the text, P(positive) and the served label:

  {"line": 1, "text": "很好看", "probability": 0.93, "label": 1}

For a multi-class model: the class name, its probability and the distribution (the --top_k
most probable classes, or all); for a multi-label model, the classes that are on:

  {"line": 1, "text": "...", "label": "体育", "probability": 0.91,
   "probabilities": {"体育": 0.91, "财经": 0.06, "科技": 0.03}}
  {"line": 1, "text": "...", "labels": ["体育", "财经"], "probabilities": {...}}

A model of sentence pairs reads a second text from --text_b_column and writes it as "text_b".
CSV/TSV outputs hold the distribution as a JSON object in their "probabilities" column.

Every row is answered: blank lines and empty texts get a probability like any other text. A row
that cannot be read (bad JSON, too many CSV fields, a text that is not a string) stops the run
with the file name and line number, or with --skip_bad_rows is skipped, counted and logged.
Input is read a window of READ_AHEAD_BATCHES batches (--batch_size) at a time, never loaded
whole; each window is predicted sorted by text length (the model pads a batch to its longest
text) and written in input order. A file output is written to a hidden temporary file and
renamed into place only when the run succeeds (`io_utils.atomic_file`; on gs:// the object
appears whole, when it is complete); it may not be the input, and an existing one is replaced
only with --overwrite (both checked before the model loads). A run to stdout that stops early
(a closed pipe, Ctrl-C, an error) ends with status 1 and a last line on stderr saying how many
rows were written.

--saved_model, --input and --output may be URLs of any file system TensorFlow has (gs://, or
ram:// in tests), read and written through `bert_tf2.io_utils`.

The model is called through its `serving_default` signature, exactly as TF Serving calls it
(a .tflite file of bert_tf2.export_lite through the same signature in LiteRT: `LitePredictor`);
`load_predictor` and `predict_in_batches` are also what bert_tf2.evaluate uses.
"""

import concurrent.futures
import contextlib
import csv
import io
import itertools
import json
import os
import struct
import sys
import threading
import time
from typing import (BinaryIO, Callable, Dict, Iterable, Iterator, List, Optional, Sequence,
                    TextIO, Tuple, TypeVar)

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import flags, logging
import numpy as np

from bert_tf2 import cli
from bert_tf2 import config as config_lib
from bert_tf2 import data
from bert_tf2 import flags as project_flags
from bert_tf2 import io_utils

FLAGS = flags.FLAGS
STDIO = "-"
_T = TypeVar("_T")


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

class SavedModelError(cli.UserError, FileNotFoundError):
    """--saved_model is not an export that can be run: missing, half-written, or another
    kind of SavedModel; the message says which and what to pass."""


def resolve_saved_model(path: str) -> str:
    """`path` if it holds a SavedModel, else the highest numeric version under it (a local
    path or a URL: `io_utils`)."""
    if io_utils.isfile(io_utils.join(path, "saved_model.pb")):
        return path
    versions = [version for version in io_utils.existing_versions(path)
                if io_utils.isfile(io_utils.join(path, str(version), "saved_model.pb"))]
    if not versions:
        raise SavedModelError(
            f"--saved_model={path}: no saved_model.pb there, nor in a numeric version "
            f"directory under it{'' if io_utils.exists(path) else ' (it does not exist)'}; "
            "pass an export_dir/<version> that bert_tf2.train wrote, or the export_dir")
    return io_utils.join(path, str(versions[-1]))


class Predictor:
    """An exported model's `serving_default` signature: texts -> (probabilities, labels).

    `task`, `pairs` and `class_names` say what the model is, read off its signature and its
    assets/classes.txt.
    """

    def __init__(self, saved_model: str):
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
        import tensorflow_text  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
        from bert_tf2 import export  # pylint: disable=g-import-not-at-top

        self._tf = tf
        self.path = resolve_saved_model(saved_model)
        if not io_utils.isfile(io_utils.join(self.path, "variables", "variables.index")):
            raise SavedModelError(f"--saved_model: {self.path} is a half-written export (no "
                                  "variables/variables.index beside its saved_model.pb); "
                                  "export it again, or pass another version")
        # Kept: the signature's variables live as long as it does (and `export.weights_of`
        # reads the classifier's weights off it).
        self.loaded = tf.saved_model.load(self.path)
        self._serve = self.loaded.signatures.get("serving_default")
        self.inputs = sorted(self._serve.structured_input_signature[1]) if self._serve else []
        if export.TEXT_INPUT not in self.inputs:
            raise SavedModelError(
                f"--saved_model: {self.path} is not a text classifier that bert_tf2.train "
                f"exported: its serving_default signature takes {self.inputs or 'nothing'}, not "
                f"['{export.TEXT_INPUT}'] (a TF Hub preprocess or encoder module?); pass the "
                "export_dir/<version> of a training run")
        self.pairs = export.TEXT_B_INPUT in self.inputs
        outputs = self._serve.structured_outputs
        self.task = ("binary" if export.PROBABILITY_OUTPUT in outputs else
                     "multilabel" if export.LABELS_OUTPUT in outputs else "multiclass")
        self._outputs = _output_names(self.task)
        self.class_names = export.read_class_names(self.path)

    def check_text_b_column(self, text_b_column: Optional[str]) -> None:
        """A UserError unless --text_b_column is given exactly for a model of pairs."""
        if self.pairs != bool(text_b_column):
            raise cli.UserError(f"--saved_model: {self.path} classifies "
                                 + ("pairs of texts: pass --text_b_column" if self.pairs else
                                    "single texts: leave --text_b_column unset"))

    def __call__(self, texts: Sequence[object]) -> Tuple[np.ndarray, np.ndarray]:
        """Probabilities and labels for n >= 0 texts ((text, text_b) pairs for a pair model);
        a single str (a single (text, text_b) tuple) is one text (pair), answered as a batch
        of one. Texts that are not str are refused (`lite.TextsError`).

        binary: P(positive) float32 [n] and the 0/1 label int64 [n]; multiclass: float32
        [n, classes] and the class id int64 [n]; multilabel: float32 and 0/1 int64 [n, classes].
        """
        columns = self.columns(texts)
        # "replace" only matters for lone surrogates (a JSON "\ud800" escape): they become "?".
        feeds = {name: self._tf.constant([text.encode("utf-8", "replace") for text in column],
                                         self._tf.string)
                 for name, column in zip(self.inputs, columns)}
        outputs = self._serve(**feeds)
        return tuple(outputs[name].numpy() for name in self._outputs)

    def columns(self, texts: object) -> List[List[str]]:
        """[texts] of a single-text model; [texts, texts_b] of a pair model's (text, text_b)
        pairs. A lone str (a lone pair) is a batch of one; a lite.TextsError for the rest."""
        from bert_tf2 import lite  # pylint: disable=g-import-not-at-top
        if not self.pairs:
            return [lite.text_batch(texts)]
        if isinstance(texts, (str, bytes)) or not hasattr(texts, "__iter__"):
            raise lite.TextsError(f"{self.path} classifies pairs of texts: pass a (text, "
                                  f"text_b) tuple or a sequence of them, not a "
                                  f"{type(texts).__name__}")
        pairs = [texts] if isinstance(texts, tuple) and self._is_pair(texts) else list(texts)
        for i, pair in enumerate(pairs):
            if not self._is_pair(pair):
                raise lite.TextsError(f"texts[{i}] is {type(pair).__name__} {pair!r:.40}, not "
                                      "a (text, text_b) pair of str: "
                                      f"{self.path} classifies pairs of texts")
        return [[pair[0] for pair in pairs], [pair[1] for pair in pairs]]

    @staticmethod
    def _is_pair(item: object) -> bool:
        return (isinstance(item, (tuple, list, np.ndarray)) and len(item) == 2
                and all(isinstance(text, str) for text in item))


def _output_names(task: str) -> Tuple[str, str]:
    """The serving_default outputs a Predictor returns: probabilities and labels."""
    from bert_tf2 import export  # pylint: disable=g-import-not-at-top
    return {"binary": (export.PROBABILITY_OUTPUT, export.LABEL_OUTPUT),
            "multiclass": (export.PROBABILITIES_OUTPUT, export.LABEL_ID_OUTPUT),
            "multilabel": (export.PROBABILITIES_OUTPUT, export.LABELS_OUTPUT)}[task]


class LitePredictor(Predictor):
    """A TFLite file of bert_tf2.export_lite behind the Predictor interface (same answers,
    computed by `bert_tf2.lite.LiteClassifier`; one call at a time, as its interpreter needs)."""

    def __init__(self, path: str):  # pylint: disable=super-init-not-called
        from bert_tf2 import lite  # pylint: disable=g-import-not-at-top
        if not io_utils.isfile(path):
            raise SavedModelError(f"--saved_model={path}: no such TFLite file; pass one that "
                                  "bert_tf2.export_lite wrote, or an export_dir")
        self.path = path
        try:
            self._classifier = lite.LiteClassifier(path)
        except (KeyError, ValueError, RuntimeError, IndexError, struct.error) as error:
            raise SavedModelError(f"--saved_model={path}: not a TFLite file that "
                                  f"bert_tf2.export_lite wrote ({error})") from error
        self.task, self.pairs = self._classifier.task, self._classifier.pairs
        self.class_names = self._classifier.class_names
        self._outputs = _output_names(self.task)
        self._lock = threading.Lock()

    def __call__(self, texts: Sequence[object]) -> Tuple[np.ndarray, np.ndarray]:
        columns = self.columns(texts)
        with self._lock:
            outputs = self._classifier.predict(*columns)
        return tuple(outputs[name] for name in self._outputs)


def load_predictor(saved_model: str) -> Predictor:
    """A LitePredictor for a .tflite file, else a Predictor of the SavedModel."""
    from bert_tf2 import lite  # pylint: disable=g-import-not-at-top
    return (LitePredictor(saved_model) if lite.is_lite_model(saved_model)
            else Predictor(saved_model))


# Batches read ahead and sorted by length before they are predicted (see predict_in_batches).
READ_AHEAD_BATCHES = 32
# Calls of the model running at once: while one batch is in the encoder, the next is tokenized.
CALLS_IN_FLIGHT = 2


def predict_in_batches(predictor: Callable[[Sequence[str]], Tuple[np.ndarray, np.ndarray]],
                       items: Iterable[_T], batch_size: int, *,
                       text_of: Callable[[_T], object] = lambda item: item,
                       total: Optional[int] = None, progress: bool = False,
                       read_ahead: int = READ_AHEAD_BATCHES,
                       ) -> Iterator[Tuple[List[_T], np.ndarray, np.ndarray]]:
    """Yields (items, probabilities, labels) batch by batch, in `items`' order.

    Reads `read_ahead` batches at a time and predicts them sorted by text length, so that each
    call holds texts of similar length and pads little (the exported model pads a batch to its
    longest text); then yields them in input order. `items` is read only as needed, a window
    at a time. `progress` shows a tqdm bar on stderr, only when stderr is a terminal and the
    run takes more than 2 seconds (so short runs and logs stay clean).
    """
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    iterator = iter(items)
    with tqdm(total=total, unit="text", file=sys.stderr, delay=2.0, dynamic_ncols=True,
              disable=None if progress else True) as bar:
        while True:
            window = list(itertools.islice(iterator, batch_size * max(read_ahead, 1)))
            if not window:
                return
            probabilities, labels = _predict_sorted(predictor, [text_of(i) for i in window],
                                                    batch_size, bar)
            for start in range(0, len(window), batch_size):
                end = start + batch_size
                yield window[start:end], probabilities[start:end], labels[start:end]


def _predict_sorted(predictor, texts: Sequence[object], batch_size: int,
                    bar) -> Tuple[np.ndarray, np.ndarray]:
    """`predictor`'s answers for `texts` in their order, asked in batches of similar length."""
    order = sorted(range(len(texts)), key=lambda i: _length(texts[i]))
    batches = [[texts[i] for i in order[start:start + batch_size]]
               for start in range(0, len(order), batch_size)]
    answers = []
    with concurrent.futures.ThreadPoolExecutor(CALLS_IN_FLIGHT) as pool:
        for answer in pool.map(predictor, batches):
            answers.append(answer)
            bar.update(len(answer[0]))
    position = np.empty(len(order), np.int64)
    position[order] = np.arange(len(order))
    return tuple(np.concatenate(column)[position] for column in zip(*answers))


def _length(text: object) -> int:
    """Characters of a text, or of both texts of a pair."""
    return sum(map(len, text)) if isinstance(text, tuple) else len(text)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def check_reading_flags(path: str, input_format: str = "auto",
                        column_names: Optional[Sequence[str]] = None,
                        text_b_column: Optional[str] = None) -> str:
    """The format `path` is read in (`data.file_format`), or a UserError for a reading flag
    that cannot apply to it: --column_names or --text_b_column with plain text, --column_names
    with JSONL (whose rows name their fields)."""
    file_format = data.file_format(path, input_format, column_names)
    if file_format == "text" and text_b_column:
        raise cli.UserError(f"{path}: plain text holds one text a line; a pair model reads "
                            "CSV, TSV or JSONL (by extension, --input_format, or --column_names "
                            "for a headerless tab-separated file) with --text_column and "
                            "--text_b_column")
    if file_format == "text" and column_names:
        raise cli.UserError(f"{path}: --input_format=text reads one text a line, which has no "
                            "columns: drop --column_names, or pass --input_format=tsv (or csv)")
    if file_format == "jsonl" and column_names:
        raise cli.UserError(f"{path}: JSONL rows name their fields; drop --column_names (and "
                            "name the field with --text_column)")
    return file_format


def read_texts(path: str, *, input_format: str = "auto", text_column: str = "text",
               text_b_column: Optional[str] = None,
               column_names: Optional[Sequence[str]] = None,
               bad_rows: Optional[data.BadRows] = None,
               stream: Optional[BinaryIO] = None,
               encoding: str = "utf-8") -> Iterator[Tuple[int, object]]:
    """Yields (line number, text) for every input row, in order, reading as it goes.

    The format is `data.file_format`'s, as every command reads files: by extension (after a
    compression one: `reviews.csv.gz` is CSV, decompressed as it is read), where `.txt`, no
    extension and stdin are plain text unless `column_names` names their tab-separated columns.
    Plain text: every line is a text, blank ones included (only the line ending is removed);
    `column_names` is not used (`check_reading_flags` refuses it for a command's one input).
    CSV/TSV/JSONL: the --text_column of each row (with `text_b_column`, the pair (text,
    text_b)); an empty text is still a text. A missing column stops the run even with
    --skip_bad_rows (it is a wrong flag, not a bad row). `column_names` names the columns of
    a headerless CSV/TSV.
    """
    bad_rows = bad_rows or data.BadRows(skip=False)
    input_format = data.file_format(path, input_format, column_names)
    if input_format == "text":
        if text_b_column:
            raise data.DataError(f"{path}: plain text holds one text a line; a pair model "
                                 "reads CSV, TSV or JSONL with --text_column and "
                                 "--text_b_column")
        for line_number, line in enumerate(data.iter_lines(path, stream=stream,
                                                           encoding=encoding), start=1):
            yield line_number, line.rstrip("\n").rstrip("\r")
        return
    columns = [(text_column, "--text_column")] + (
        [(text_b_column, "--text_b_column")] if text_b_column else [])
    for line_number, row in data.iter_rows(path, file_format=input_format, stream=stream,
                                           on_bad_row=bad_rows, column_names=column_names,
                                           encoding=encoding):
        texts = [data.column_value(row, column, path, line_number, flag)
                 for column, flag in columns]
        wrong = [(column, text) for (column, _), text in zip(columns, texts)
                 if not isinstance(text, str)]
        if wrong:
            bad_rows(data.DataError(f"{path}:{line_number}: column {wrong[0][0]!r} must be "
                                    f"text, got {wrong[0][1]!r}"))
            continue
        yield line_number, tuple(texts) if text_b_column else texts[0]


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def output_format_of(path: str) -> str:
    """The output format for `path` when --format is unset: by extension, else JSONL."""
    extension = os.path.splitext(path)[1].lower()
    return {".csv": "csv", ".tsv": "tsv"}.get(extension, "jsonl")


# Characters that json.dumps(ensure_ascii=False) leaves raw but that str.splitlines() and some
# JSON readers take for line breaks; escaped, every output row stays on one physical line.
_LINE_BREAKS_IN_JSON = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028",
                                      "\u2029": "\\u2029"})


def _json_line(row: Dict[str, object]) -> str:
    return json.dumps(row, ensure_ascii=False).translate(_LINE_BREAKS_IN_JSON) + "\n"


def output_fields(task: str, pairs: bool) -> Tuple[str, ...]:
    """The fields of an output row, in order (the CSV/TSV header)."""
    texts = ("line", "text", "text_b") if pairs else ("line", "text")
    return texts + {"binary": ("probability", "label"),
                    "multiclass": ("label", "probability", "probabilities"),
                    "multilabel": ("labels", "probabilities")}[task]


def output_row(predictor: Predictor, line: int, text: object, probabilities: np.ndarray,
               label: np.ndarray, top_k: Optional[int] = None) -> Dict[str, object]:
    """One output row: the line, the text(s) and what the model answered for them."""
    row = {"line": line}
    row.update(zip(("text", "text_b"), text) if predictor.pairs else [("text", text)])
    names = predictor.class_names
    if predictor.task == "binary":
        return {**row, "probability": _probability(probabilities), "label": int(label)}
    ranked = np.argsort(-probabilities, kind="stable")[:top_k]
    distribution = {names[i]: _probability(probabilities[i]) for i in ranked}
    if predictor.task == "multiclass":
        return {**row, "label": names[int(label)],
                "probability": _probability(probabilities[int(label)]),
                "probabilities": distribution}
    return {**row, "labels": [name for name, on in zip(names, label) if on],
            "probabilities": distribution}


def _row_writer(out: TextIO, output_format: str,
                fields: Sequence[str]) -> Callable[[Dict[str, object]], None]:
    if output_format == "jsonl":
        return lambda row: out.write(_json_line(row))
    writer = _csv_writer(out, output_format, fields)
    writer.writeheader()
    return lambda row: writer.writerow(_csv_cells(row))


def output_line(row: Dict[str, object], output_format: str, fields: Sequence[str]) -> str:
    """`row` as the text it is in an output file, line ending included: a JSONL line, or a
    CSV/TSV row under the header `fields` (a header is `output_line(dict(zip(fields,
    fields)), ...)`). What `run` writes, row by row; bert_tf2.beam_predict writes it too."""
    if output_format == "jsonl":
        return _json_line(row)
    buffer = io.StringIO()
    _csv_writer(buffer, output_format, fields).writerow(_csv_cells(row))
    return buffer.getvalue()


def _csv_writer(out: TextIO, output_format: str, fields: Sequence[str]) -> csv.DictWriter:
    return csv.DictWriter(out, fieldnames=fields, lineterminator="\n",
                          delimiter="\t" if output_format == "tsv" else ",")


def _csv_cells(row: Dict[str, object]) -> Dict[str, object]:
    """Lists and distributions go into one cell each, as JSON."""
    return {key: json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list))
            else value for key, value in row.items()}


@contextlib.contextmanager
def _open_output(path: str, stdout: Optional[TextIO]) -> Iterator[TextIO]:
    """stdout for '-'; else a temporary file beside `path`, renamed onto it on success."""
    if path == STDIO:
        yield stdout if stdout is not None else sys.stdout
        return
    # backslashreplace: a lone surrogate (from a JSON escape) is written as its \\uXXXX.
    with io_utils.atomic_file(path, errors="backslashreplace", newline="") as out:
        yield out


def check_output(config: config_lib.PredictConfig) -> None:
    """Refuses, before any work, an --output that would lose data or cannot be written: the
    --input file itself (or a link to it), a directory, an existing file without --overwrite,
    a place that cannot be written."""
    if config.output == STDIO:
        return
    compression = data.COMPRESSIONS.get(os.path.splitext(config.output)[1].lower())
    if compression:
        raise cli.UserError(f"--output={config.output}: predict writes uncompressed text; "
                            f"write to stdout and compress that (--output=- | "
                            f"{compression.name} > {config.output})")
    if config.input != STDIO and io_utils.same_path(config.input, config.output):
        raise cli.UserError(f"--output={config.output} is the --input file: writing the "
                            "predictions there would replace the texts; choose another --output")
    io_utils.check_writable_file(config.output, "--output", overwrite=config.overwrite)


class _Written:
    """How many output rows have been written so far."""

    def __init__(self):
        self.rows = 0

    def counting(self, write: Callable[[Dict[str, object]], None]
                 ) -> Callable[[Dict[str, object]], None]:
        def counted(row: Dict[str, object]) -> None:
            write(row)
            self.rows += 1
        return counted


@contextlib.contextmanager
def _said_if_cut_short(output: str, stdout: Optional[TextIO]) -> Iterator[_Written]:
    """Yields the run's row counter; a run the block does not finish ends saying how many rows
    reached `output` (`_incomplete`)."""
    written = _Written()
    try:
        yield written
    except BaseException as error:  # pylint: disable=broad-except
        ending = _incomplete(error, written.rows, output, stdout)
        if ending is error:
            raise
        raise ending from error


def _incomplete(error: BaseException, count: int, output: str,
                stdout: Optional[TextIO]) -> BaseException:
    """What ends a run that `error` stopped after `count` rows: a UserError (one line, status
    1; 130 after Ctrl-C) that says how much of the output there is, or `error` itself, with
    that said."""
    note = (f"only the first {count} rows were written to stdout: the output is incomplete"
            if output == STDIO else f"nothing was written to {output}")
    if isinstance(error, BrokenPipeError):
        if stdout is None:  # Python's last flush of the closed stdout would fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return cli.UserError(f"stdout was closed (broken pipe); {note}")
    if isinstance(error, KeyboardInterrupt):
        return cli.Interrupted(f"interrupted; {note}")
    if isinstance(error, cli.UserError):
        error.args = (f"{error}; {note}",)
    else:
        print(f"predict: {note}", file=sys.stderr)  # before the traceback of a bug
    return error


def check_top_k(predictor: Predictor, top_k: Optional[int]) -> None:
    """A UserError for a --top_k that a binary model would ignore (it has no ranking)."""
    if top_k and predictor.task == "binary":
        raise cli.UserError(f"--top_k={top_k}: {predictor.path} is a binary model, whose rows "
                            "hold P(positive) and the label, no classes to rank; drop --top_k")


def _probability(value: np.float32) -> float:
    """The float32 probability as the shortest decimal that reads back as the same float32."""
    return float(str(np.float32(value)))


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------

def run(config: config_lib.PredictConfig, *, stdin: Optional[BinaryIO] = None,
        stdout: Optional[TextIO] = None) -> Dict[str, object]:
    """Predicts every row of --input into --output; returns counts and timings.

    `stdin` (binary) and `stdout` (text) replace the process's own for '-' (tests use this).
    """
    check_output(config)
    check_reading_flags("<stdin>" if config.input == STDIO else config.input,
                        config.input_format,
                        data.parse_names(config.column_names, "--column_names"),
                        config.text_b_column)
    output_format = config.format or (output_format_of(config.output)
                                      if config.output != STDIO else "jsonl")
    start = time.perf_counter()
    predictor = load_predictor(config.saved_model)
    load_seconds = time.perf_counter() - start
    predictor.check_text_b_column(config.text_b_column)
    check_top_k(predictor, config.top_k)

    bad_rows = data.BadRows(skip=config.skip_bad_rows)
    if config.input == STDIO:
        source, stream = "<stdin>", stdin if stdin is not None else sys.stdin.buffer
    else:
        source, stream = config.input, None
    column_names = data.parse_names(config.column_names, "--column_names")
    rows = read_texts(source, input_format=config.input_format, text_column=config.text_column,
                      text_b_column=config.text_b_column, column_names=column_names,
                      bad_rows=bad_rows, stream=stream, encoding=config.encoding)
    count = 0
    start = time.perf_counter()
    with _said_if_cut_short(config.output, stdout) as written, \
            _open_output(config.output, stdout) as out:
        write = written.counting(_row_writer(out, output_format,
                                             output_fields(predictor.task, predictor.pairs)))
        for batch, probabilities, labels in predict_in_batches(
                predictor, rows, config.batch_size, text_of=lambda row: row[1],
                progress=config.progress):
            for (line_number, text), probability, label in zip(batch, probabilities, labels):
                write(output_row(predictor, line_number, text, probability, label,
                                 config.top_k))
            count += len(batch)
            if config.output == STDIO:
                out.flush()  # downstream readers of a pipe see each batch as it is done
    seconds = time.perf_counter() - start
    summary = {"saved_model": predictor.path, "input": source, "output": config.output,
               "rows": count, "skipped_rows": bad_rows.count, "seconds": seconds,
               "texts_per_second": count / seconds if seconds > 0 else float("inf"),
               "load_seconds": load_seconds}
    skipped = f"; {bad_rows.count} bad rows skipped" if bad_rows.count else ""
    print(f"predict: {count} texts in {seconds:.2f} s ({summary['texts_per_second']:.1f} "
          f"texts/s){skipped}; model loaded in {load_seconds:.1f} s", file=sys.stderr)
    if not count:
        logging.warning("%s: no rows to predict", source)
    return summary


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines every flag `PredictConfig.from_flags` reads."""
    project_flags.define_inference_flags(flag_values)
    project_flags.define_row_reading_flags(flag_values)
    project_flags.define_prediction_flags(flag_values)


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    sys.stdout.reconfigure(encoding="utf-8", errors="backslashreplace")
    run(config_lib.PredictConfig.from_flags(FLAGS))


if __name__ == "__main__":
    cli.run("predict", main, define_flags,
            other_commands_flags=config_lib.PREDICT_OTHER_FLAGS)
