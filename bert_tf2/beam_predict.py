"""Batch prediction on Apache Beam: every file of a pattern, scored by as many workers as run.

  python -m bert_tf2.beam_predict --saved_model=E/1 --input='reviews/*.csv' \
      --text_column=评论 --output=out/predictions
  python -m bert_tf2.beam_predict ... --direct_num_workers=2 \
      --direct_running_mode=multi_processing

The flags are bert_tf2.predict's, read the same way, except:

  --input   a file pattern that Beam's file systems read (a local glob, gs://, hdfs://, ...);
            every matching file is read as predict reads one file (`predict.read_texts`).
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
the export once and its threads share it; Beam batches the rows (`READ_AHEAD_BATCHES` x
--batch_size at most), and each batch is predicted as predict predicts a window: sorted by
length, --batch_size texts per call of the export's `serving_default` signature.

Nothing is lost silently. A row that cannot be read stops the job with predict's one-line
`file:line: what is wrong` error, or with --skip_bad_rows goes to the dead letter
PREFIX.bad-rows-SSSSS-of-NNNNN as {"file", "line", "error"} (a file that cannot be read to its
end, for text not in --encoding, is one dead-letter row whose error says so). Both counts are
Beam metrics (namespace `METRICS_NAMESPACE`) and the job's last line on stderr. The export,
the pattern, the first file's columns and the output prefix are checked before the pipeline
starts; existing shards of the prefix are refused, or with --overwrite deleted first.
"""

import dataclasses
import logging
import math
import os
import re
import sys
import time
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import app, flags
import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference import base as inference
from apache_beam.options import pipeline_options as beam_options

from bert_tf2 import cli
from bert_tf2 import compat
from bert_tf2 import config as config_lib
from bert_tf2 import data
from bert_tf2 import predict

FLAGS = flags.FLAGS
# Without --runner: Beam's local runner proper. (Its "DirectRunner" may hand the pipeline to
# the Prism runner, which downloads a binary at run time.)
DEFAULT_RUNNER = "FnApiRunner"
METRICS_NAMESPACE = "bert_tf2.beam_predict"
ANSWERED, BAD_ROWS = "rows_answered", "bad_rows"
SHARDS = "-SSSSS-of-NNNNN"
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
        """predict's reader over one file (`stream`, opened by Beam's file systems)."""
        return predict.read_texts(path, input_format=self.input_format,
                                  text_column=self.text_column,
                                  text_b_column=self.text_b_column,
                                  column_names=self.column_names, bad_rows=bad_rows,
                                  stream=stream, encoding=self.encoding)


# ---------------------------------------------------------------------------------------------
# The model in RunInference
# ---------------------------------------------------------------------------------------------

class SavedModelHandler(inference.ModelHandler):
    """RunInference's handler of an exported model: Rows in, predict's output rows out.

    `load_model` is a `predict.Predictor` (it registers the TF Text ops before loading); Beam
    loads it once per worker process and shares it between the process's threads.
    `run_inference` predicts a batch with `predict.predict_in_batches` and answers each row
    with `predict.output_row`, "file" first.
    """

    def __init__(self, saved_model: str, batch_size: int, top_k: Optional[int] = None):
        window = batch_size * READ_AHEAD_BATCHES
        super().__init__(min_batch_size=1, max_batch_size=window)
        self.saved_model = saved_model
        self.batch_size = batch_size
        self.top_k = top_k

    def load_model(self) -> predict.Predictor:
        return predict.Predictor(self.saved_model)

    def run_inference(self, batch: Sequence[Row], model: predict.Predictor,
                      inference_args=None) -> List[Dict[str, object]]:
        answers = []
        for rows, probabilities, labels in predict.predict_in_batches(
                model, batch, self.batch_size, text_of=lambda row: row.text,
                read_ahead=math.ceil(len(batch) / self.batch_size)):
            for row, probability, label in zip(rows, probabilities, labels):
                answers.append({"file": row.file, **predict.output_row(
                    model, row.line, row.text, probability, label, self.top_k)})
        return answers

    def get_num_bytes(self, batch: Sequence[Row]) -> int:
        return sum(len(row.text) if isinstance(row.text, str) else sum(map(len, row.text))
                   for row in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


# ---------------------------------------------------------------------------------------------
# Reading, and the dead letter
# ---------------------------------------------------------------------------------------------

class _DeadLetters(data.BadRows):
    """data.BadRows that also keeps each skipped row's error, for the dead-letter output."""

    def __init__(self, skip: bool):
        super().__init__(skip)
        self.errors: List[data.DataError] = []

    def __call__(self, error: data.DataError) -> None:
        super().__call__(error)  # raises unless --skip_bad_rows
        self.errors.append(error)

    def drain(self, path: str) -> Iterator[Dict[str, object]]:
        while self.errors:
            yield dead_letter(path, self.errors.pop(0))


def dead_letter(path: str, error: Exception) -> Dict[str, object]:
    """{"file", "line", "error"} for a DataError that reads 'PATH:LINE: what is wrong' (a
    file-level one, 'PATH: what is wrong', has line null)."""
    match = re.match(re.escape(path) + r":(?:(\d+):)? (.*)", str(error), re.DOTALL)
    if not match:
        return {"file": path, "line": None, "error": str(error)}
    return {"file": path, "line": int(match[1]) if match[1] else None, "error": match[2]}


class ReadRows(beam.DoFn):
    """A file's rows as Rows; with --skip_bad_rows, its unreadable rows as dead letters
    (the BAD_ROWS output), counted in the BAD_ROWS metric."""

    def __init__(self, options: ReadOptions):
        super().__init__()
        self.options = options
        self.bad_rows = beam.metrics.Metrics.counter(METRICS_NAMESPACE, BAD_ROWS)

    def process(self, path: str):
        dead = _DeadLetters(skip=self.options.skip_bad_rows)
        try:
            with FileSystems.open(path) as stream:
                for line, text in self.options.rows(path, stream, dead):
                    yield from self._dead_letters(path, dead)
                    yield Row(path, line, text)
        except data.DataError as error:
            if not self.options.skip_bad_rows or isinstance(error, data.MissingColumn):
                raise WorkerUserError(f"{_USER_ERROR_MARK}{error}") from error
            dead.errors.append(data.DataError(f"{error}; the rest of the file was not read"))
        yield from self._dead_letters(path, dead)

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
                   files: Sequence[str], model: predict.Predictor, output_format: str) -> None:
    """Reads `files`, predicts every row, writes the answers and the dead letter."""
    fields = ("file",) + predict.output_fields(model.task, model.pairs)
    read = (pipeline
            | "Files" >> beam.Create(sorted(files))
            | "ReadRows" >> beam.ParDo(ReadRows(ReadOptions.of(config))).with_outputs(
                BAD_ROWS, main="rows"))
    header = (None if output_format == "jsonl" else
              predict.output_line(dict(zip(fields, fields)), output_format, fields))
    _ = (read.rows
         | "SpreadRows" >> beam.Reshuffle()  # one big file is predicted by every worker
         | "Predict" >> inference.RunInference(
             SavedModelHandler(config.saved_model, config.batch_size, config.top_k))
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

def check_model(config: config_lib.PredictConfig) -> predict.Predictor:
    """The export, loaded here once so that a missing or broken one stops the run now."""
    try:
        model = predict.Predictor(config.saved_model)
    except cli.UserError:
        raise
    except Exception as error:  # pylint: disable=broad-except
        raise predict.SavedModelError(
            f"--saved_model={config.saved_model}: cannot be loaded ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); export it again, or pass "
            "another version") from error
    try:
        model.check_text_b_column(config.text_b_column)
    except app.UsageError as error:
        raise cli.UserError(f"--saved_model={config.saved_model}: {error}") from error
    return model


def input_files(config: config_lib.PredictConfig) -> List[str]:
    """Every file --input matches (at least one), none of them an output shard."""
    if config.input == predict.STDIO:
        raise cli.UserError("--input: pass a file pattern (a file, a glob, gs://...); "
                            "beam_predict does not read stdin, bert_tf2.predict does")
    try:
        (matched,) = FileSystems.match([config.input])
    except Exception as error:  # pylint: disable=broad-except  (Beam's BeamIOError and others)
        raise cli.UserError(f"--input={config.input}: cannot be listed: {error}") from error
    files = sorted(metadata.path for metadata in matched.metadata_list)
    if not files:
        raise cli.UserError(f"--input={config.input}: no file matches this pattern")
    if os.path.isdir(files[0]):
        raise cli.UserError(f"--input={config.input} is a directory: pass a pattern of the "
                            f"files in it, e.g. {files[0].rstrip('/')}/*.csv")
    ours = [path for path in files if _is_shard(path, config.output)]
    if ours:
        raise cli.UserError(f"--input={config.input} matches {ours[0]}, a shard of --output="
                            f"{config.output}; choose another --output, or a narrower --input")
    return files


def _is_shard(path: str, prefix: str) -> bool:
    return bool(re.fullmatch(re.escape(prefix) + f"(?:{re.escape(BAD_ROWS_SUFFIX)})?" +
                             r"-\d{5,}-of-\d{5,}", path))


def check_first_file(path: str, options: ReadOptions) -> None:
    """Reads `path` up to its first row, so that a wrong --text_column, --text_b_column or
    --input_format stops the run here, not in a worker. Without --skip_bad_rows anything
    that would stop the job there (a bad first rows, an empty file, ...) stops it here."""
    input_format = (predict.input_format_of(path) if options.input_format == "auto" else
                    options.input_format)
    if input_format == "text" and options.text_b_column:
        raise cli.UserError(f"{path}: plain text holds one text a line; a pair model reads "
                            "CSV, TSV or JSONL (--input_format) with --text_column and "
                            "--text_b_column")
    try:
        with FileSystems.open(path) as stream:
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
    if os.path.isdir(config.output):
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
    files = input_files(config)
    replaced = existing_shards(config)
    output_format = config.format or "jsonl"
    start = time.perf_counter()
    model = check_model(config)
    check_seconds = time.perf_counter() - start
    check_first_file(files[0], ReadOptions.of(config))
    if replaced:  # --overwrite: no stale shard may sit among the new ones
        FileSystems.delete(replaced)
    start = time.perf_counter()
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, config, files, model, output_format)
    del model
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as error:  # pylint: disable=broad-except
        message = user_error_in(error)
        if message is None:
            raise
        raise cli.UserError(message) from error
    seconds = time.perf_counter() - start
    counts = _counters(result)
    summary = {"files": len(files), "output": config.output, "rows": counts[ANSWERED],
               "bad_rows": counts[BAD_ROWS], "seconds": seconds,
               "model_check_seconds": check_seconds}
    print(f"beam_predict: {counts[ANSWERED]} rows of {len(files)} files answered into "
          f"{config.output}{SHARDS}; {counts[BAD_ROWS]} rows in the dead letter "
          f"{config.output}{BAD_ROWS_SUFFIX}{SHARDS}; {seconds:.1f} s", file=sys.stderr)
    return summary


def _counters(result) -> Dict[str, int]:
    """This job's ANSWERED and BAD_ROWS metrics, summed over its steps."""
    counters = result.metrics().query(
        beam.metrics.MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]
    totals = {ANSWERED: 0, BAD_ROWS: 0}
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
    run(config_lib.PredictConfig.from_flags(FLAGS), argv[1:])


if __name__ == "__main__":
    # The pipeline's classes must be bert_tf2.beam_predict's, not __main__'s: worker processes
    # unpickle them by that name.
    from bert_tf2 import beam_predict  # pylint: disable=import-self
    cli.run("beam_predict", beam_predict.main, beam_predict.define_flags,
            flags_parser=beam_predict.parse_flags)
