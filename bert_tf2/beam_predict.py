"""Batch prediction on Apache Beam: every file of a pattern, scored by as many workers as run.

  python -m bert_tf2.beam_predict --saved_model=E/1 --input='reviews/*.csv' \
      --text_column=评论 --output=out/predictions
  python -m bert_tf2.beam_predict ... --direct_num_workers=2 \
      --direct_running_mode=multi_processing

The flags are bert_tf2.predict's, read the same way, except:

  --input   a file pattern that Beam's file systems read (a local glob, gs://, hdfs://, ...);
            every matching file is read as predict reads one file (`predict.read_texts`: its
            format by `data.file_format`, gzip/bzip2/xz decompressed by `data.iter_lines`).
            A file that this tool wrote (an output shard or dead letter) is refused, and so is
            an --output whose shards --input would match (the next run would score them).
  --output  a prefix: the rows go to sharded files PREFIX-SSSSS-of-NNNNN (JSONL, or CSV/TSV
            by --format), each row predict's row with "file", the input file it came from,
            first. Rows are grouped by file and line only in the sense that each carries them:
            shards hold them in no particular order.

Every other flag is a Beam pipeline option, passed to Beam as given (--runner, --project,
--region, --temp_location, --direct_num_workers, --flink_master, --requirements_file, ...);
a flag that is neither is refused. Without --runner the pipeline runs on Beam's FnApiRunner,
in this process (or in --direct_num_workers local worker processes): nothing is started or
downloaded. (--runner=DirectRunner first tries Beam's Prism runner, which downloads a binary.)

The model runs in Beam's RunInference through `SavedModelHandler`: each worker process loads
the export once and its threads share it (the default runner's, in this process, use the one
loaded to check it; with worker processes the check runs in a child process, so that this one
never holds TensorFlow). The rows of each file are cut into windows of `READ_AHEAD_BATCHES` x
--batch_size rows, which are spread over the workers (one Beam element a window, not a row),
and each window is predicted as predict predicts one: sorted by length, --batch_size texts
per call of the export's `serving_default` signature.

Nothing is lost silently. A row that cannot be read stops the job with predict's one-line
`file:line: what is wrong` error, or with --skip_bad_rows goes to the dead letter
PREFIX.bad-rows-SSSSS-of-NNNNN as {"file", "line", "error", "lines_not_read"}. A bad row is
skipped alone ("lines_not_read": 0); a file that cannot be read on from a line (text not in
--encoding, corrupt compressed data, a malformed header) is one dead-letter row whose
"lines_not_read" counts the lines lost with it, that line included. The counts (rows
answered, dead-letter rows, files not read to their end, lines not read) are Beam metrics
(namespace `METRICS_NAMESPACE`) and the job's last line on stderr. The export, the pattern,
the first file's columns and the output prefix are checked before the pipeline starts;
existing shards of the prefix are refused, or with --overwrite deleted first. A job that fails
leaves no beam-temp-* folder of its own beside the output.
"""

import concurrent.futures
import dataclasses
import glob
import importlib.util
import logging
import math
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import flags


def _quiet_beam_noise() -> None:
    """Drops warnings that Beam logs on every run and that say nothing about it:
    "Failed to import GCSFileSystem" and "apitools not found", where the google namespace is
    installed (by TensorFlow's dependencies) but Beam's gcp extra is not (gs:// and BigQuery
    are then not there: `input_files` says what to install for gs://; with apache-beam[gcp]
    installed the imports work and nothing is dropped); and RunInference's "Resource module is
    not available" at each model load (apache_beam.ml.inference.base fails to import its
    model_manager and then measures no memory, which this tool does not use). Worker
    processes (--direct_running_mode=multi_processing) import Beam before any of this code:
    they log their own start-up lines."""
    try:
        gcs_installed = importlib.util.find_spec("google.cloud.storage") is not None
    except ImportError:
        gcs_installed = False
    if not gcs_installed:
        logging.getLogger("apache_beam.io.filesystems").addFilter(
            lambda record: not record.getMessage().startswith("Failed to import GCSFileSystem"))
    noise = ("Resource module is not available",) + (
        ("apitools not found",) if importlib.util.find_spec("apitools") is None else ())
    logging.getLogger().addFilter(lambda record: not record.getMessage().startswith(noise))


_quiet_beam_noise()
# pylint: disable=g-import-not-at-top,wrong-import-position
import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes, FileSystem
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference import base as inference
from apache_beam.options import pipeline_options as beam_options

from bert_tf2 import cli
from bert_tf2 import compat
from bert_tf2 import config as config_lib
from bert_tf2 import data
from bert_tf2 import io_utils
from bert_tf2 import predict
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
# Without --runner: Beam's local runner proper. (Its "DirectRunner" may hand the pipeline to
# the Prism runner, which downloads a binary at run time.)
DEFAULT_RUNNER = "FnApiRunner"
METRICS_NAMESPACE = "bert_tf2.beam_predict"
ANSWERED, BAD_ROWS = "rows_answered", "bad_rows"
# Files whose reading stopped at a line (their dead-letter row says why), and the lines lost.
UNREADABLE_FILES, LINES_NOT_READ = "unreadable_files", "lines_not_read"
COUNTERS = (ANSWERED, BAD_ROWS, UNREADABLE_FILES, LINES_NOT_READ)
SHARDS = "-SSSSS-of-NNNNN"
# The name of a shard (or dead-letter shard) of any prefix, this tool's or another Beam job's.
_SHARD_NAME = re.compile(r".*-\d{5,}-of-\d{5,}")
# The dead letter is PREFIX.bad-rows-SSSSS-of-NNNNN, not PREFIX-bad-rows-...: Beam's text sink
# deletes the files PREFIX-*-of-NNNNN as it finalizes the output, and a reader's PREFIX-* glob
# would take dead letters for predictions.
BAD_ROWS_SUFFIX = ".bad-rows"
# Marks a user's mistake met in a worker, so that the launcher can end with its one line.
_USER_ERROR_MARK = "[beam_predict user error] "
# Beam batches this many --batch_size batches at most; each is predicted sorted by length.
READ_AHEAD_BATCHES = predict.READ_AHEAD_BATCHES


class Row(NamedTuple):
    """One row to predict: where it is and its text (a (text, text_b) pair for pairs)."""

    file: str
    line: int
    text: object


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """How the workers read the input files: predict's reading flags."""

    input_format: str
    text_column: str
    text_b_column: Optional[str]
    column_names: Optional[Tuple[str, ...]]
    encoding: str
    skip_bad_rows: bool

    @classmethod
    def of(cls, config: config_lib.PredictConfig) -> "ReadOptions":
        return cls(config.input_format, config.text_column, config.text_b_column or None,
                   data.parse_names(config.column_names, "--column_names"), config.encoding,
                   config.skip_bad_rows)

    def rows(self, path: str, stream, bad_rows: data.BadRows) -> Iterator[Tuple[int, object]]:
        """predict's reader over one file (`stream`, `open_raw(path)`)."""
        return predict.read_texts(path, input_format=self.input_format,
                                  text_column=self.text_column,
                                  text_b_column=self.text_b_column,
                                  column_names=self.column_names, bad_rows=bad_rows,
                                  stream=stream, encoding=self.encoding)

    def check_flags(self, path: str) -> None:
        """A UserError for a reading flag that cannot apply to `path` (predict's check)."""
        predict.check_reading_flags(path, self.input_format, self.column_names,
                                    self.text_b_column)


def open_raw(path: str):
    """`path` through Beam's file systems, its bytes as stored: `data.iter_lines` decompresses
    what is compressed (by its first bytes), as for every other command."""
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


# ---------------------------------------------------------------------------------------------
# Paths on Beam's file systems, and the export read through them
# ---------------------------------------------------------------------------------------------

def check_beam_path(path: str, flag: str) -> None:
    """Refuses a URL that lost a slash (`gs:/b/x`) and a scheme no Beam file system serves
    (gs:// without apache-beam[gcp]), in one line naming `flag`."""
    io_utils.check_not_mangled(path, flag)
    try:
        FileSystems.get_filesystem(path)
    except (ValueError, IOError) as error:  # IOError: Beam's BeamIOError
        raise cli.UserError(f"{flag}={path}: {_beam_cause(path, error)}") from error


def _beam_cause(path: str, error: BaseException) -> str:
    """What a Beam file system error says, in one line; for a scheme without one, what to
    install."""
    details = getattr(error, "exception_details", None)  # BeamIOError's, by path
    while isinstance(details, dict) and details:  # the innermost cause
        error = next(iter(details.values()))
        details = getattr(error, "exception_details", None)
    first_line = (str(error).splitlines() or [type(error).__name__])[0]
    if "Unable to get filesystem" in first_line or "No filesystem found" in first_line:
        scheme = io_utils.scheme(path)
        return (f"Beam has no file system for {scheme}:// here"
                + (" (it comes with apache-beam[gcp]: pip install 'bert_tf2[gcp]')"
                   if scheme == "gs" else ""))
    return first_line


def _is_directory(path: str) -> bool:
    """A local directory, or a URL with objects under `path/` (what a store calls one)."""
    if not io_utils.is_remote(path):
        return os.path.isdir(path)
    (matched,) = FileSystems.match([path.rstrip("/") + "/**"], limits=[1])
    return bool(matched.metadata_list)


def load_export(saved_model: str) -> predict.Predictor:
    """The export `saved_model` names (a version, or the export_dir: its highest), loaded.

    A local path is loaded as predict loads it. A URL (gs://, any file system Beam has) is
    read through Beam's FileSystems, never TensorFlow's own gs:// client, so a worker needs
    Beam's credentials only: the version is copied into a local temporary directory, loaded,
    and the copy deleted (TensorFlow then holds the model in memory; a worker killed later
    leaves nothing on its disk). Beam calls this once per worker process
    (`SavedModelHandler`)."""
    if not io_utils.is_remote(saved_model):
        return predict.Predictor(saved_model)
    try:
        version = _export_version(saved_model.rstrip("/"))
        with tempfile.TemporaryDirectory(prefix="bert_tf2-export-") as local:
            _copy_directory(version, local)
            try:
                model = predict.Predictor(local)
            except predict.SavedModelError as error:
                raise predict.SavedModelError(str(error).replace(local, version)) from error
    except (cli.UserError, predict.SavedModelError):
        raise
    except Exception as error:  # pylint: disable=broad-except  (Beam's and its clients')
        raise predict.SavedModelError(f"--saved_model={saved_model}: cannot be read: "
                                      f"{_beam_cause(saved_model, error)}") from error
    model.path = version  # for messages: where the model came from
    return model


def _export_version(url: str) -> str:
    """`url` if it holds a saved_model.pb, else its highest numeric version that does."""
    (here,) = FileSystems.match([FileSystems.join(url, "saved_model.pb")])
    if here.metadata_list:
        return url
    (matched,) = FileSystems.match([FileSystems.join(url, "*", "saved_model.pb")])
    versions = sorted(int(name) for name in (m.path[len(url):].strip("/").split("/")[0]
                                             for m in matched.metadata_list)
                      if name.isdigit())
    if not versions:
        raise predict.SavedModelError(
            f"--saved_model={url}: no saved_model.pb there, nor in a numeric version "
            "directory under it; pass an export_dir/<version> that bert_tf2.train wrote, or "
            "the export_dir")
    return FileSystems.join(url, str(versions[-1]))


def _copy_directory(url: str, local: str) -> None:
    """Copies every file under `url` into the local directory `local`, through Beam's
    FileSystems."""
    (matched,) = FileSystems.match([FileSystems.join(url, "**")])
    for metadata in matched.metadata_list:
        relative = metadata.path[len(url):].lstrip("/")
        if not relative or relative.endswith("/"):  # a store's directory marker
            continue
        target = os.path.join(local, *relative.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open_raw(metadata.path) as source, open(target, "wb") as copy:
            shutil.copyfileobj(source, copy, 1 << 20)


# ---------------------------------------------------------------------------------------------
# The model in RunInference
# ---------------------------------------------------------------------------------------------

# The export check_model loaded in this process, by path: the default runner's workers are
# threads of this process, and use it rather than load it again.
_CHECKED_MODELS: Dict[str, predict.Predictor] = {}


class SavedModelHandler(inference.ModelHandler):
    """RunInference's handler of an exported model: windows of Rows in, predict's output rows
    (a list per window) out.

    The rows reach it in windows (lists) of READ_AHEAD_BATCHES x --batch_size rows, made
    before they are spread over the workers: Beam moves, pickles and batches one element per
    window, not one per row, and each window is predicted as predict predicts one
    (`predict.predict_in_batches`: sorted by length, --batch_size texts per call), each row
    answered with `predict.output_row`, "file" first. `load_model` is a `predict.Predictor`
    (it registers the TF Text ops before loading) that `load_export` loads (from gs://, a copy
    staged through Beam's FileSystems); Beam loads it once per worker process and shares it
    between the process's threads (in the launcher's process, the one check_model loaded).
    """

    def __init__(self, saved_model: str, batch_size: int, top_k: Optional[int] = None):
        super().__init__(min_batch_size=1, max_batch_size=1)  # one window a call
        self.saved_model = saved_model
        self.batch_size = batch_size
        self.top_k = top_k

    def load_model(self) -> predict.Predictor:
        return _CHECKED_MODELS.get(self.saved_model) or load_export(self.saved_model)

    def run_inference(self, batch: Sequence[List[Row]], model: predict.Predictor,
                      inference_args=None) -> List[List[Dict[str, object]]]:
        return [self._answers(window, model) for window in batch]

    def _answers(self, window: List[Row], model: predict.Predictor) -> List[Dict[str, object]]:
        answers = []
        for rows, probabilities, labels in predict.predict_in_batches(
                model, window, self.batch_size, text_of=lambda row: row.text,
                read_ahead=math.ceil(len(window) / self.batch_size)):
            for row, probability, label in zip(rows, probabilities, labels):
                answers.append({"file": row.file, **predict.output_row(
                    model, row.line, row.text, probability, label, self.top_k)})
        return answers

    def get_num_bytes(self, batch: Sequence[List[Row]]) -> int:
        return sum(len(row.text) if isinstance(row.text, str) else sum(map(len, row.text))
                   for window in batch for row in window)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


# ---------------------------------------------------------------------------------------------
# Reading, and the dead letter
# ---------------------------------------------------------------------------------------------

class _DeadLetters(data.BadRows):
    """data.BadRows that also keeps each skipped row's error (and the lines lost with it: 0
    for a row skipped alone), for the dead-letter output."""

    def __init__(self, skip: bool):
        super().__init__(skip)
        self.errors: List[Tuple[data.DataError, int]] = []

    def __call__(self, error: data.DataError) -> None:
        super().__call__(error)  # raises unless --skip_bad_rows
        self.errors.append((error, 0))

    def drain(self, path: str) -> Iterator[Dict[str, object]]:
        while self.errors:
            yield dead_letter(path, *self.errors.pop(0))


def dead_letter(path: str, error: Exception, lines_not_read: int = 0) -> Dict[str, object]:
    """{"file", "line", "error", "lines_not_read"} for a DataError that reads 'PATH:LINE: what
    is wrong' (a file-level one, 'PATH: what is wrong', has line null)."""
    line, message = _line_of(path, error)
    return {"file": path, "line": line, "error": message, "lines_not_read": lines_not_read}


def _line_of(path: str, error: Exception) -> Tuple[Optional[int], str]:
    """The line a DataError 'PATH:LINE: what is wrong' names (None for 'PATH: ...'), and what
    is wrong."""
    match = re.match(re.escape(path) + r":(?:(\d+):)? (.*)", str(error), re.DOTALL)
    if not match:
        return None, str(error)
    return (int(match[1]) if match[1] else None), match[2]


class ReadRows(beam.DoFn):
    """A file's rows as Rows; with --skip_bad_rows, its unreadable rows as dead letters
    (the BAD_ROWS output), counted in the BAD_ROWS metric."""

    def __init__(self, options: ReadOptions):
        super().__init__()
        self.options = options
        self.bad_rows = beam.metrics.Metrics.counter(METRICS_NAMESPACE, BAD_ROWS)
        self.unreadable_files = beam.metrics.Metrics.counter(METRICS_NAMESPACE,
                                                             UNREADABLE_FILES)
        self.lines_not_read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, LINES_NOT_READ)

    def process(self, path: str):
        dead = _DeadLetters(skip=self.options.skip_bad_rows)
        try:
            with open_raw(path) as stream:
                for line, text in self.options.rows(path, stream, dead):
                    yield from self._dead_letters(path, dead)
                    yield Row(path, line, text)
        except data.DataError as error:
            if not self.options.skip_bad_rows or isinstance(error, data.MissingColumn):
                raise WorkerUserError(f"{_USER_ERROR_MARK}{error}") from error
            lost = self._lines_lost(path, error)
            dead.errors.append((data.DataError(
                f"{error}; the rest of the file was not read"
                + (f" ({lost} lines)" if lost else "")), lost))
        yield from self._dead_letters(path, dead)

    def _lines_lost(self, path: str, error: data.DataError) -> int:
        """The lines of `path` from the one `error` names to the end (0 for an error of the
        whole file, such as an empty one), counted in the UNREADABLE_FILES and
        LINES_NOT_READ metrics."""
        line, _ = _line_of(path, error)
        if line is None:
            return 0
        with open_raw(path) as stream:
            lost = max(data.count_lines(path, stream) - line + 1, 1)
        self.unreadable_files.inc()
        self.lines_not_read.inc(lost)
        return lost

    def _dead_letters(self, path: str, dead: _DeadLetters):
        for letter in dead.drain(path):
            self.bad_rows.inc()
            yield beam.pvalue.TaggedOutput(BAD_ROWS, letter)


class WorkerUserError(RuntimeError):
    """A user's mistake met in a worker; `user_error_in` finds its message in the job's
    failure."""


def user_error_in(failure: BaseException) -> Optional[str]:
    """The one-line message of a WorkerUserError somewhere in a failed job's error, if any."""
    match = re.search(re.escape(_USER_ERROR_MARK) + r"(.*)", str(failure))
    if not match:
        return None
    return re.sub(r" \[while running '.*'\]$", "", match[1]).strip()


class ToLines(beam.DoFn):
    """Output rows as the bytes of their output lines, counted in the ANSWERED metric."""

    def __init__(self, output_format: str, fields: Sequence[str]):
        super().__init__()
        self.output_format = output_format
        self.fields = tuple(fields)
        self.answered = beam.metrics.Metrics.counter(METRICS_NAMESPACE, ANSWERED)

    def process(self, row: Dict[str, object]):
        self.answered.inc()
        # backslashreplace: a lone surrogate (from a JSON escape) is written as its \\uXXXX.
        yield predict.output_line(row, self.output_format, self.fields).encode(
            "utf-8", "backslashreplace")


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------

def build_pipeline(pipeline: beam.Pipeline, config: config_lib.PredictConfig,
                   files: Sequence[str], model: "ModelFacts", output_format: str) -> None:
    """Reads `files`, predicts every row of `model` (a Predictor, or its ModelFacts), writes
    the answers and the dead letter."""
    fields = ("file",) + predict.output_fields(model.task, model.pairs)
    read = (pipeline
            | "Files" >> beam.Create(sorted(files))
            | "ReadRows" >> beam.ParDo(ReadRows(ReadOptions.of(config))).with_outputs(
                BAD_ROWS, main="rows"))
    header = (None if output_format == "jsonl" else
              predict.output_line(dict(zip(fields, fields)), output_format, fields))
    window = config.batch_size * READ_AHEAD_BATCHES
    _ = (read.rows
         | "Windows" >> beam.BatchElements(min_batch_size=window, max_batch_size=window)
         | "SpreadWindows" >> beam.Reshuffle()  # one big file is predicted by every worker
         | "Predict" >> inference.RunInference(
             SavedModelHandler(config.saved_model, config.batch_size, config.top_k))
         | "Answers" >> beam.FlatMap(lambda answers: answers)
         | "ToLines" >> beam.ParDo(ToLines(output_format, fields))
         | "Write" >> beam.io.WriteToText(config.output, shard_name_template=SHARDS,
                                          append_trailing_newlines=False, header=header))
    _ = (read[BAD_ROWS]
         | "DeadLetterLines" >> beam.Map(lambda letter: predict.output_line(
             letter, "jsonl", ()).encode("utf-8", "backslashreplace"))
         | "WriteDeadLetter" >> beam.io.WriteToText(config.output + BAD_ROWS_SUFFIX,
                                                    shard_name_template=SHARDS,
                                                    append_trailing_newlines=False))


def pipeline_options(args: Sequence[str]) -> beam_options.PipelineOptions:
    """Beam's options from the flags that are not beam_predict's; an unknown one is refused,
    and without --runner the runner is DEFAULT_RUNNER."""
    known, unknown = compat.parse_pipeline_options(args)
    if unknown:
        raise cli.UserError(f"{unknown[0]}: neither a beam_predict flag nor a Beam pipeline "
                            "option (see --helpfull, and Beam's pipeline options)")
    if not known.runner:
        args = [*args, f"--runner={DEFAULT_RUNNER}"]
    return beam_options.PipelineOptions(list(args))


# ---------------------------------------------------------------------------------------------
# Checks before the pipeline starts
# ---------------------------------------------------------------------------------------------

class ModelFacts(NamedTuple):
    """What the pipeline needs to know of the export: its task, and whether it reads pairs."""

    task: str
    pairs: bool


def check_beam_paths(config: config_lib.PredictConfig,
                     options: beam_options.PipelineOptions) -> None:
    """Refuses a path flag that no Beam file system serves, a URL that lost a slash, and,
    for Dataflow, whose workers share no disk with this machine, a local path."""
    paths = [("--input", config.input), ("--output", config.output),
             ("--saved_model", config.saved_model)]
    for flag, path in paths:
        if path != predict.STDIO:  # refused by input_files and existing_shards
            check_beam_path(path, flag)
    if options.view_as(beam_options.StandardOptions).runner == "DataflowRunner":
        local = next(((flag, path) for flag, path in paths if not io_utils.is_remote(path)),
                     None)
        if local:
            raise cli.UserError(f"{local[0]}={local[1]} is a local path, which Dataflow's "
                                "workers cannot read or write: pass a gs:// one (copy the "
                                "files there first, e.g. gcloud storage cp -r)")


def check_model_elsewhere(config: config_lib.PredictConfig) -> ModelFacts:
    """`check_model` in a child process, so that this one, which only runs the pipeline for
    worker processes that load their own copy, never holds TensorFlow and the model (about
    1 GB). Its UserError is raised here as it is."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as child:
        return child.submit(_facts_of_checked_model, config).result()


def _facts_of_checked_model(config: config_lib.PredictConfig) -> ModelFacts:
    model = check_model(config)
    return ModelFacts(model.task, model.pairs)


def check_model(config: config_lib.PredictConfig) -> predict.Predictor:
    """The export, loaded here once so that a missing or broken one stops the run now."""
    try:
        model = load_export(config.saved_model)
    except cli.UserError:
        raise
    except Exception as error:  # pylint: disable=broad-except
        raise predict.SavedModelError(
            f"--saved_model={config.saved_model}: cannot be loaded ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); export it again, or pass "
            "another version") from error
    model.check_text_b_column(config.text_b_column)
    return model


def input_files(config: config_lib.PredictConfig) -> List[str]:
    """Every file --input matches (at least one), none of them an output shard."""
    if config.input == predict.STDIO:
        raise cli.UserError("--input: pass a file pattern (a file, a glob, gs://...); "
                            "beam_predict does not read stdin, bert_tf2.predict does")
    try:
        (matched,) = FileSystems.match([config.input])
    except Exception as error:  # pylint: disable=broad-except  (Beam's BeamIOError and others)
        raise cli.UserError(f"--input={config.input}: cannot be listed: "
                            f"{_beam_cause(config.input, error)}") from error
    files = sorted(metadata.path for metadata in matched.metadata_list)
    if not files and not glob.has_magic(config.input) and _is_directory(config.input):
        files = [config.input]  # a store's directory, which matches no object itself
    if not files:
        raise cli.UserError(f"--input={config.input}: no file matches this pattern")
    if _is_directory(files[0]):
        raise cli.UserError(f"--input={config.input} is a directory: pass a pattern of the "
                            f"files in it, e.g. {files[0].rstrip('/')}/*.csv")
    ours = next((path for path in files if _written_by_us(path)), None)
    if ours:
        raise cli.UserError(f"--input={config.input} matches {ours}, an output shard or dead "
                            "letter of beam_predict, whose rows would be scored as texts: "
                            "narrow --input (e.g. to *.csv), or move that output away")
    return files


def _written_by_us(path: str) -> bool:
    """Whether `path` is an output shard or dead letter of this tool: named PREFIX-SSSSS-of-
    NNNNN, and empty or starting as its rows do (JSONL with "file" first, or a CSV/TSV header
    "file,line,..."); another job's shards of data are read."""
    if not _SHARD_NAME.fullmatch(path):
        return False
    with open_raw(path) as stream:
        head = stream.read(64)
    return not head or head.startswith((b'{"file": ', b"file,line,", b"file\tline\t"))


def check_output_outside_input(config: config_lib.PredictConfig) -> None:
    """Refuses an --output prefix whose shards or dead letters --input matches: the next run
    over the same pattern would score this run's output as texts."""
    pattern, prefix = config.input, config.output
    if "://" not in pattern:  # local: compare absolute paths, as the pattern is meant
        pattern = os.path.abspath(pattern) + ("*" if pattern.endswith(("/", "\\")) else "")
        prefix = os.path.abspath(prefix)
    matches = re.compile(FileSystem.translate_pattern(pattern)).fullmatch
    for name in (prefix, prefix + BAD_ROWS_SUFFIX):
        for shard in ("-00000-of-00001", "-00007-of-00012"):
            if matches(name + shard):
                raise cli.UserError(
                    f"--output={config.output}: --input={config.input} matches its shards "
                    f"({config.output}{shard if name == prefix else BAD_ROWS_SUFFIX + shard}), "
                    "so a later run over --input would score this run's output as texts: "
                    "write --output outside what --input matches")


def _is_shard(path: str, prefix: str) -> bool:
    return bool(re.fullmatch(re.escape(prefix) + f"(?:{re.escape(BAD_ROWS_SUFFIX)})?" +
                             r"-\d{5,}-of-\d{5,}", path))


def check_first_file(path: str, options: ReadOptions) -> None:
    """Reads `path` up to its first row, so that a wrong --text_column, --text_b_column or
    --input_format stops the run here, not in a worker. Without --skip_bad_rows anything
    that would stop the job there (a bad first rows, an empty file, ...) stops it here."""
    try:
        with open_raw(path) as stream:
            next(options.rows(path, stream, data.BadRows(skip=True)), None)
    except data.DataError:
        if not options.skip_bad_rows:
            raise
    except OSError as error:
        raise cli.UserError(f"{path}: cannot read file: {error}") from error


def existing_shards(config: config_lib.PredictConfig) -> List[str]:
    """The shards of the --output prefix that exist, refused without --overwrite; an --output
    that is no prefix is refused too."""
    if config.output == predict.STDIO or config.output.endswith(("/", "\\")):
        raise cli.UserError(f"--output={config.output}: pass a prefix for the output files, "
                            "e.g. out/predictions (they are written as "
                            f"out/predictions{SHARDS})")
    if _is_directory(config.output):
        raise cli.UserError(f"--output={config.output} is a directory: pass a prefix inside "
                            f"it, e.g. {config.output.rstrip('/')}/predictions")
    (matched,) = FileSystems.match([f"{config.output}*-of-*"])
    shards = sorted(m.path for m in matched.metadata_list if _is_shard(m.path, config.output))
    if shards and not config.overwrite:
        raise cli.UserError(f"--output={config.output}: {len(shards)} shards of it exist "
                            f"({shards[0]}, ...); pass --overwrite to replace them, or "
                            "choose another prefix")
    return shards


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------

def run(config: config_lib.PredictConfig, pipeline_args: Sequence[str] = ()
        ) -> Dict[str, object]:
    """Runs the job over every file of --input; returns counts and timings."""
    options = pipeline_options(pipeline_args)
    check_beam_paths(config, options)
    files = input_files(config)
    read_options = ReadOptions.of(config)
    for path in files:
        read_options.check_flags(path)
    replaced = existing_shards(config)
    check_output_outside_input(config)
    output_format = config.format or "jsonl"
    start = time.perf_counter()
    here = _workers_are_threads_here(options)
    model = check_model(config) if here else check_model_elsewhere(config)
    check_seconds = time.perf_counter() - start
    check_first_file(files[0], read_options)
    if replaced:  # --overwrite: no stale shard may sit among the new ones
        FileSystems.delete(replaced)
    start = time.perf_counter()
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, config, files, model, output_format)
    if here:
        _CHECKED_MODELS[config.saved_model] = model
    del model
    temp_folders = _temp_folders(config.output)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except BaseException as error:  # pylint: disable=broad-except
        _delete_new_temp_folders(config.output, temp_folders)
        message = user_error_in(error) if isinstance(error, Exception) else None
        if message is None:
            raise
        raise cli.UserError(message) from error
    finally:
        _CHECKED_MODELS.pop(config.saved_model, None)
    seconds = time.perf_counter() - start
    counts = _counters(result)
    summary = {"files": len(files), "output": config.output, "rows": counts[ANSWERED],
               "bad_rows": counts[BAD_ROWS], "unreadable_files": counts[UNREADABLE_FILES],
               "lines_not_read": counts[LINES_NOT_READ], "seconds": seconds,
               "model_check_seconds": check_seconds}
    print(f"beam_predict: {counts[ANSWERED]} rows of {len(files)} files answered into "
          f"{config.output}{SHARDS}; {counts[BAD_ROWS]} rows in the dead letter "
          f"{config.output}{BAD_ROWS_SUFFIX}{SHARDS}{_lost_files(counts)}; {seconds:.1f} s",
          file=sys.stderr)
    return summary


def _workers_are_threads_here(options: beam_options.PipelineOptions) -> bool:
    """Whether the pipeline's workers run in this process: Beam's local runner without
    --direct_running_mode=multi_processing."""
    runner = options.view_as(beam_options.StandardOptions).runner
    mode = options.view_as(beam_options.DirectOptions).direct_running_mode
    return runner in (DEFAULT_RUNNER, "DirectRunner") and mode != "multi_processing"


def _lost_files(counts: Dict[str, int]) -> str:
    """What the summary says of files not read to their end."""
    files = counts[UNREADABLE_FILES]
    if not files:
        return ""
    return (f", {files} of them for {'a file' if files == 1 else f'{files} files'} that "
            f"could not be read to the end: {counts[LINES_NOT_READ]} lines not read")


_TEMP_FOLDER = "beam-temp-{name}-[0-9a-f]{{32}}"  # where Beam's text sink writes, then moves


def _temp_folders(prefix: str) -> Set[str]:
    """The beam-temp-* folders of the output and dead-letter sinks of `prefix` that exist."""
    directory, base = FileSystems.split(prefix)
    names = re.compile("|".join(_TEMP_FOLDER.format(name=re.escape(name))
                                for name in (base, base + BAD_ROWS_SUFFIX)))
    if "://" not in prefix:  # local: list the folder itself, not all the files under it
        return {path for path in glob.glob(os.path.join(glob.escape(directory), "beam-temp-*"))
                if names.fullmatch(os.path.basename(path))}
    try:
        (matched,) = FileSystems.match([FileSystems.join(directory, "beam-temp-**")])
    except Exception:  # pylint: disable=broad-except  (nothing to list: nothing to delete)
        return set()
    folders = set()
    for metadata in matched.metadata_list:
        first = metadata.path[len(directory):].lstrip("/").split("/", 1)[0]
        if names.fullmatch(first):
            folders.add(FileSystems.join(directory, first))
    return folders


def _delete_new_temp_folders(prefix: str, before: Set[str]) -> None:
    """Deletes the beam-temp-* folders of `prefix` that a failed job left (not those that
    were there before it started: another job's may be in use)."""
    for folder in sorted(_temp_folders(prefix) - before):
        try:
            if "://" in folder:
                FileSystems.delete([folder + "/"])  # every object under it
            else:
                shutil.rmtree(folder)
        except Exception as error:  # pylint: disable=broad-except
            print(f"beam_predict: could not delete {folder}: {error}", file=sys.stderr)


def _counters(result) -> Dict[str, int]:
    """This job's COUNTERS metrics, summed over its steps."""
    counters = result.metrics().query(
        beam.metrics.MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]
    totals = dict.fromkeys(COUNTERS, 0)
    for counter in counters:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + value
    return totals


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """predict's flags, --input and --output read as a pattern and a prefix."""
    predict.define_flags(flag_values)
    flag_values["input"].help = ("Files to classify: a pattern Beam's file systems match "
                                 "(a path, a glob, gs://..., hdfs://...).")
    flag_values["output"].help = (f"Prefix of the output shards PREFIX{SHARDS}; the dead "
                                  f"letter is PREFIX{BAD_ROWS_SUFFIX}{SHARDS}.")


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> List[str]:
    """Parses beam_predict's flags out of `argv`; the rest (Beam's options) is returned,
    after the program name."""
    try:
        rest = flag_values(list(argv), known_only=True)
    except flags.Error as error:
        print(f"beam_predict: {error}", file=sys.stderr)
        sys.exit(1)
    return rest


def main(argv):
    logging.getLogger("apache_beam").setLevel(logging.WARNING)  # its INFO lines are many
    # A user's mistake ends the command in one line (cli); Beam would log it first, with the
    # worker's traceback. Other errors keep theirs.
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: _USER_ERROR_MARK not in record.getMessage())
    run(config_lib.PredictConfig.from_flags(FLAGS, tensorflow_paths=False), argv[1:])


if __name__ == "__main__":
    # The pipeline's classes must be bert_tf2.beam_predict's, not __main__'s: worker processes
    # unpickle them by that name.
    from bert_tf2 import beam_predict  # pylint: disable=import-self
    cli.run("beam_predict", beam_predict.main, beam_predict.define_flags,
            flags_parser=beam_predict.parse_flags)
