"""bert_tf2.beam_predict against bert_tf2.predict on one machine, in one run.

Both score the same --rows reviews of the built-in corpus (its texts repeated), each as its
command line runs them, in a fresh process: predict one CSV file; beam_predict the same rows as
--workers CSV files, with --workers local worker processes (FnApiRunner, multi_processing).
For each it reports

  rows/s with start-up     rows / the command's wall time (Python, TensorFlow and Beam start,
                           model loads, reading, writing)
  rows/s without start-up  (rows - small_rows) / (wall time - wall time of a --small_rows run):
                           what one more row costs once everything has started
  start-up                 wall time - rows / (rows/s without start-up): what the run costs
                           besides its rows (Python, TensorFlow and Beam start, model loads)
  peak memory              the largest resident set (RSS, sampled every 0.1 s) of each process
                           that predicts: predict's, or each beam_predict worker's; beside it
                           the launcher's (which loads the model once to check it), and the
                           largest sum over all the command's processes at one time

The model is the quickstart's: its encoder (2 layers, hidden 128, the shipped weights) under a
new classification head, exported as bert_tf2.train exports it (the head's weights do not change
the speed), unless --saved_model names another export. It prints a markdown table and writes it
as the "## Batch prediction on Apache Beam" section of docs/benchmarks.md.

  .venv/bin/python -m benchmarks.beam_benchmark
  .venv/bin/python -m benchmarks.beam_benchmark --rows=20000 --small_rows=2000 --output=
"""

import csv
import functools
import glob
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Sequence

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import app, flags
import psutil  # installed with tf-models-official (requirements.txt)

from benchmarks import report
from bert_tf2 import data

SECTION_TITLE = "## Batch prediction on Apache Beam"
CONFIGS = report.REPO_ROOT / "configs"
SEQ_LENGTH = 128  # the quickstart's

FLAGS = flags.FLAGS
flags.DEFINE_integer("rows", 100000, "Reviews each tool scores.", lower_bound=1)
flags.DEFINE_integer("small_rows", 10000, "Reviews of the short runs whose time is taken off "
                     "for the rate without start-up.", lower_bound=1)
flags.DEFINE_integer("workers", 2, "beam_predict's worker processes (and input files).",
                     lower_bound=1)
flags.DEFINE_integer("batch_size", 64, "--batch_size of both tools.", lower_bound=1)
flags.DEFINE_string("saved_model", None, "The export both run; default: the quickstart's "
                    "encoder under a new head, built in a scratch directory.")
flags.DEFINE_string("output", str(report.BENCHMARKS_MD),
                    "Markdown file whose section is written ('' to only print).")


def quickstart_export(scratch: str) -> str:
    """The quickstart's encoder and preprocessing under a new binary head, exported."""
    from bert_tf2 import export, hub_modules, model  # pylint: disable=g-import-not-at-top
    modules = hub_modules.build_hub_modules(
        os.path.join(scratch, "hub"), vocab_file=str(CONFIGS / "vocab_snownlp.txt"),
        bert_config_file=str(CONFIGS / "bert_tiny_zh.json"),
        init_checkpoint=str(CONFIGS / "bert_tiny_zh_snownlp" / "encoder"), seq_length=SEQ_LENGTH)
    classifier = model.build_classifier_for(report.train_cli_defaults().model, modules.encoder)
    return export.export_text_classifier(
        model.build_text_classifier(model.load_preprocessor(modules.preprocess), classifier,
                                    seq_length=SEQ_LENGTH),
        os.path.join(scratch, "export"))


@functools.lru_cache(maxsize=1)
def corpus_texts() -> List[str]:
    return [text for split in data.builtin_corpus_splits().values() for text in split.texts]


def write_reviews(path: str, count: int, start: int = 0) -> None:
    """A CSV file 'text' of `count` reviews, from the `start`-th of the corpus repeated."""
    texts = corpus_texts()
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["text"])
        writer.writerows([texts[(start + i) % len(texts)]] for i in range(count))


class PeakMemory:
    """Samples the resident memory of a process and its descendants until stopped: the peak
    of each, by whether its command line is a Beam SDK worker's, and of their sum."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.peaks: Dict[int, int] = {}
        self.total = 0
        self.workers = set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._done.wait(0.1):
            try:
                processes = [self.root] + self.root.children(recursive=True)
            except psutil.Error:
                continue
            total = 0
            for process in processes:
                try:
                    rss = process.memory_info().rss
                    command = process.cmdline()
                    if ("sdk_worker_main" in " ".join(command)
                            and "python" in os.path.basename(command[0])):  # not its sh -c
                        self.workers.add(process.pid)
                except psutil.Error:
                    continue
                total += rss
                self.peaks[process.pid] = max(self.peaks.get(process.pid, 0), rss)
            self.total = max(self.total, total)

    def stop(self) -> Dict[str, object]:
        """{'main': the root's peak, 'workers': each worker's peak (none: []), 'total': the
        largest sum at one time}."""
        self._done.set()
        self._thread.join()
        return {"main": self.peaks.get(self.root.pid, 0),
                "workers": sorted((self.peaks[pid] for pid in self.workers), reverse=True),
                "total": self.total}


def timed(command: Sequence[str]) -> Dict[str, float]:
    """Runs `command`; its wall seconds and peak memory. A failure stops the benchmark."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=report.REPO_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    memory = PeakMemory(process.pid)
    _, stderr = process.communicate()
    seconds = time.perf_counter() - start
    peaks = memory.stop()
    if process.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    return {"seconds": seconds, **peaks, "last_line": stderr.strip().splitlines()[-1]}


def run_predict(saved_model: str, scratch: str, rows: int) -> Dict[str, float]:
    source = os.path.join(scratch, f"predict-{rows}.csv")
    write_reviews(source, rows)
    output = os.path.join(scratch, f"predict-{rows}.jsonl")
    result = timed([sys.executable, "-m", "bert_tf2.predict", f"--saved_model={saved_model}",
                    f"--input={source}", f"--output={output}",
                    f"--batch_size={FLAGS.batch_size}", "--noprogress", "--overwrite"])
    _check_rows([output], rows)
    return result


def run_beam(saved_model: str, scratch: str, rows: int) -> Dict[str, float]:
    directory = os.path.join(scratch, f"beam-{rows}")
    os.makedirs(directory, exist_ok=True)
    share = -(-rows // FLAGS.workers)
    for worker in range(FLAGS.workers):
        count = min(share, rows - worker * share)
        write_reviews(os.path.join(directory, f"part-{worker}.csv"), count, worker * share)
    prefix = os.path.join(scratch, f"beam-{rows}-out", "p")
    result = timed([sys.executable, "-m", "bert_tf2.beam_predict",
                    f"--saved_model={saved_model}", f"--input={directory}/part-*.csv",
                    f"--output={prefix}",
                    f"--batch_size={FLAGS.batch_size}", "--overwrite",
                    f"--direct_num_workers={FLAGS.workers}",
                    "--direct_running_mode=multi_processing"])
    _check_rows(glob.glob(f"{prefix}-*-of-*"), rows)
    return result


def _check_rows(paths: List[str], rows: int) -> None:
    """Every row answered once: a benchmark of a run that lost rows would measure nothing."""
    written = sum(1 for path in paths for _ in open(path, encoding="utf-8"))
    if written != rows:
        sys.exit(f"expected {rows} output rows, found {written} in {paths}")


def steady_rate(big: Dict[str, float], small: Dict[str, float]) -> Optional[float]:
    """Rows/s once started: the extra rows of the big run over its extra time; None when the
    big run took no longer (other work on the machine swamped the difference)."""
    extra = big["seconds"] - small["seconds"]
    return (FLAGS.rows - FLAGS.small_rows) / extra if extra > 0 else None


def row(name: str, big: Dict[str, float], small: Dict[str, float]) -> List[str]:
    steady = steady_rate(big, small)
    mib = lambda value: f"{value / 2**20:,.0f} MiB"  # noqa: E731
    return [name, f"{big['seconds']:.1f} s", f"{small['seconds']:.1f} s",
            f"{FLAGS.rows / big['seconds']:,.0f}",
            f"{steady:,.0f}" if steady else "not measurable",
            f"{big['seconds'] - FLAGS.rows / steady:.1f} s" if steady else "-",
            " + ".join(map(mib, big["workers"])) if big["workers"] else mib(big["main"]),
            mib(big["main"]) if big["workers"] else "-", mib(big["total"])]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.small_rows >= FLAGS.rows:
        raise app.UsageError("--small_rows must be below --rows")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        saved_model = FLAGS.saved_model or quickstart_export(scratch)
        results = {}
        for name, run in (("bert_tf2.predict", run_predict),
                          (f"bert_tf2.beam_predict, {FLAGS.workers} workers", run_beam)):
            results[name] = [run(saved_model, scratch, rows)
                             for rows in (FLAGS.small_rows, FLAGS.rows)]
    publish(results, load, os.getloadavg())


def publish(results, load_before, load_after) -> None:
    lines = [f"| command | wall time, {FLAGS.rows:,} rows | {FLAGS.small_rows:,} rows | "
             "rows/s with start-up | rows/s without start-up | start-up | peak memory of "
             "each predicting process | beam_predict launcher | all processes at once |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, (small, big) in results.items():
        lines.append("| " + " | ".join(row(name, big, small)) + " |")
    steady = [steady_rate(big, small) for small, big in results.values()]
    ratio = (f"{steady[1] / steady[0]:.2f}x" if all(steady) else
             "not measurable (a big run took no longer than its small one: the machine was "
             "too busy)")
    model = (f"--saved_model={FLAGS.saved_model}" if FLAGS.saved_model else
             "the quickstart's encoder (2 layers, hidden 128, shipped weights) under a new "
             "head, exported as bert_tf2.train exports it")
    command = report.command("benchmarks.beam_benchmark", FLAGS,
                             ("rows", "small_rows", "workers", "batch_size", "saved_model"))
    (_, predict_big), (_, beam_big) = results.values()
    section = "\n".join([
        SECTION_TITLE, "",
        f"`{command}` on {report.machine_line()}. {FLAGS.rows:,} reviews of the built-in "
        f"corpus (repeated), --batch_size={FLAGS.batch_size}, {model}. predict reads them as "
        f"one CSV file; beam_predict as {FLAGS.workers} CSV files with "
        f"--direct_num_workers={FLAGS.workers} --direct_running_mode=multi_processing "
        f"(FnApiRunner). Rows/s without start-up: ({FLAGS.rows:,} - {FLAGS.small_rows:,}) / "
        f"(wall time - wall time of a {FLAGS.small_rows:,}-row run). Load average (1 min) "
        f"before/after: {load_before[0]:.1f}/{load_after[0]:.1f} (other work shares the "
        "cores).", "",
        *lines, "",
        f"beam_predict against predict, without start-up: {ratio}; with start-up: "
        f"{predict_big['seconds'] / beam_big['seconds']:.2f}x.", ""])
    report.publish(section, FLAGS.output, SECTION_TITLE)


if __name__ == "__main__":
    app.run(main)
