"""Serving speed: the exported model padding each request to its texts, against fixed padding.

Builds a model and exports it twice: TF Hub's recipe, the encoder module as saved with every
text padded to seq_length (bert_zh_preprocess's packing; the baseline), and bert_tf2's
default, as `bert_tf2.train` exports it: each length-sorted sub-batch padded to its longest
text, the encoder rebuilt to compute its last layer at [CLS] alone. The model is, by --encoder:

  quickstart  the quickstart's (configs/bert_tiny_zh.json, the shipped pretrained encoder);
  bert_base   Google's Chinese BERT-base sizes and vocab (--bert_base_dir), random weights.

Each has a fresh head: speed does not depend on the weights. It then measures, in process,
through each SavedModel's `serving_default` signature (the function TF Serving's runtime
executes), each export under each of THREAD_SETTINGS in a fresh process:

  latency     one review per call, p50 and p99 over --calls calls of real reviews;
  throughput  reviews/s at batch 8, 64 and 256;
  predict     `bert_tf2.predict` texts/s on a file of --predict_rows real reviews;
  memory      the peak resident memory one large request adds (in a fresh process): 10,000
              reviews for the quickstart model, 1,000 for BERT-base.

The reviews are the built-in corpus's (test split, repeated as needed). It prints a markdown
table and writes it as the encoder's section of docs/benchmarks.md:

  .venv/bin/python -m benchmarks.serving_benchmark
  .venv/bin/python -m benchmarks.serving_benchmark --encoder=bert_base
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, NamedTuple, Optional, Sequence

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import app, flags, logging
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the export's preprocessing needs its ops)

from benchmarks import report
from bert_tf2 import config as config_lib
from bert_tf2 import data, export, hub_modules, model, predict

FLAGS = flags.FLAGS
flags.DEFINE_enum("encoder", "quickstart", ["quickstart", "bert_base"],
                  "The model measured: the quickstart's, or BERT-base sizes (random weights).")
flags.DEFINE_string("bert_base_dir",
                    str(report.BERT_ZH_LAYOUT),
                    "For --encoder=bert_base: a directory with Google's Chinese BERT "
                    "bert_config.json and vocab.txt (its weights are not needed).")
flags.DEFINE_integer("seq_length", 128, "The model's seq_length (the quickstart's).")
flags.DEFINE_integer("calls", None, "Single-review calls timed for the latency percentiles "
                     "(default: the encoder's).")
flags.DEFINE_integer("predict_rows", None, "Rows of the file bert_tf2.predict reads "
                     "(default: the encoder's).")
flags.DEFINE_string("output", str(report.BENCHMARKS_MD),
                    "Markdown file whose section for the encoder is written ('' to only print).")
flags.DEFINE_string("memory_probe", None, "Internal: measure one large request of "
                    "this SavedModel and print the peak memory it adds, in MiB.")
flags.DEFINE_string("measure", None, "Internal: measure this SavedModel under "
                    "--inter_op_threads/--intra_op_threads and print the results as JSON.")
flags.DEFINE_integer("inter_op_threads", 0, "Internal: TensorFlow's inter-op threads.")
flags.DEFINE_integer("intra_op_threads", 0, "Internal: TensorFlow's intra-op threads.")
flags.DEFINE_string("scratch", None, "Internal: where the predict input file goes.")

CONFIGS = report.REPO_ROOT / "configs"
BATCH_SIZES = (8, 64, 256)
# TensorFlow's thread pools (inter-op, intra-op): its defaults (0: one thread per core each),
# and one thread per op with one op per core at a time, which TF Serving takes as
# --tensorflow_inter_op_parallelism=<cores> --tensorflow_intra_op_parallelism=1.
THREAD_SETTINGS = {"defaults": (0, 0), "ops-per-core": (os.cpu_count() or 1, 1)}


class Encoder(NamedTuple):
    """A measured model: its files, its section of docs/benchmarks.md and its run's sizes."""
    title: str
    description: str  # what the section says the model is
    vocab_file: str
    bert_config_file: str
    init_checkpoint: Optional[str]  # None: random weights
    calls: int
    predict_rows: int
    memory_request: int  # reviews in the request whose peak memory is measured


def encoder_spec(name: str) -> Encoder:
    if name == "quickstart":
        return Encoder(
            title="## Serving: padding to the request against padding to seq_length",
            description="The quickstart-sized model (2 layers, hidden 128, shipped weights)",
            vocab_file=str(CONFIGS / "vocab_snownlp.txt"),
            bert_config_file=str(CONFIGS / "bert_tiny_zh.json"),
            init_checkpoint=str(CONFIGS / "bert_tiny_zh_snownlp" / "encoder"),
            calls=300, predict_rows=100000, memory_request=10000)
    base_dir = FLAGS.bert_base_dir
    missing = [f for f in ("bert_config.json", "vocab.txt")
               if not os.path.isfile(os.path.join(base_dir, f))]
    if missing:
        raise app.UsageError(f"--bert_base_dir={base_dir} has no {' or '.join(missing)}: point "
                             "it at an unpacked chinese_L-12_H-768_A-12 checkpoint directory")
    return Encoder(
        title="## Serving BERT-base: padding to the request against padding to seq_length",
        description=("Google's Chinese BERT-base sizes and vocab (12 layers, hidden 768, 21,128 "
                     "tokens; random weights, which do not change the speed)"),
        vocab_file=os.path.join(base_dir, "vocab.txt"),
        bert_config_file=os.path.join(base_dir, "bert_config.json"), init_checkpoint=None,
        calls=100, predict_rows=1000, memory_request=1000)


def reviews(count: int) -> List[str]:
    texts = list(data.builtin_corpus_splits()["test"].texts)
    return [texts[i % len(texts)] for i in range(count)]


def build_exports(encoder: Encoder, scratch: str) -> Dict[str, str]:
    """{'fixed' | 'dynamic': SavedModel path} of `encoder`'s model."""
    modules = hub_modules.build_hub_modules(
        os.path.join(scratch, "hub"), vocab_file=encoder.vocab_file,
        bert_config_file=encoder.bert_config_file, init_checkpoint=encoder.init_checkpoint,
        seq_length=FLAGS.seq_length)
    preprocessor = model.load_preprocessor(modules.preprocess)
    classifiers = {"fixed": model.build_classifier(modules.encoder),  # the module as saved
                   "dynamic": model.build_classifier_for(report.train_cli_defaults().model,
                                                         modules.encoder)}
    return {name: export.export_text_classifier(
                model.build_text_classifier(preprocessor, classifier,
                                            seq_length=FLAGS.seq_length,
                                            dynamic_padding=name == "dynamic"),
                os.path.join(scratch, name))
            for name, classifier in classifiers.items()}


def latency_ms(serve, texts: Sequence[str]) -> Dict[str, float]:
    for text in texts[:20]:  # warm up
        serve(text=tf.constant([text]))
    times = []
    for text in texts:
        start = time.perf_counter()
        serve(text=tf.constant([text]))
        times.append((time.perf_counter() - start) * 1000)
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))}


def throughput(serve, texts: Sequence[str], batch_size: int, seconds: float = 8.0) -> float:
    """Reviews/s over consecutive batches of `texts`, for about `seconds`."""
    batches = [tf.constant(texts[i:i + batch_size])
               for i in range(0, len(texts) - batch_size + 1, batch_size)]
    serve(text=batches[0])
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        serve(text=batches[done // batch_size % len(batches)])
        done += batch_size
    return done / (time.perf_counter() - start)


def predict_rate(saved_model: str, input_file: str, output_file: str) -> float:
    from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
    flag_values = absl_flags.FlagValues()
    predict.define_flags(flag_values)
    flag_values(["predict", f"--saved_model={saved_model}", f"--input={input_file}",
                 f"--output={output_file}", "--overwrite", "--noprogress"])
    return predict.run(config_lib.PredictConfig.from_flags(flag_values))["texts_per_second"]


def peak_memory_mib(saved_model: str) -> float:
    """What one large request adds to the peak resident memory, in a fresh process."""
    return float(_in_fresh_process(f"--memory_probe={saved_model}"))


def probe_memory(saved_model: str, request_size: int) -> None:
    """Prints the peak resident memory one request of `request_size` reviews adds, in MiB.

    Linux's peak (VmHWM) is reset to the current resident memory just before the request
    (`/proc/self/clear_refs`), so loading the model does not hide the request's own peak.
    """
    serve = tf.saved_model.load(saved_model).signatures["serving_default"]
    texts = tf.constant(reviews(request_size))
    serve(text=texts[:8])
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    serve(text=texts)
    print((_status_kib("VmHWM") - before) / 1024)


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:"))


def measure_in_subprocess(saved_model: str, scratch: str, threads) -> Dict[str, object]:
    """`measure` in a fresh process whose thread pools are `threads` (inter-op, intra-op)."""
    results = json.loads(_in_fresh_process(
        f"--measure={saved_model}", f"--scratch={scratch}", f"--inter_op_threads={threads[0]}",
        f"--intra_op_threads={threads[1]}"))
    results["throughput"] = {int(b): rate for b, rate in results["throughput"].items()}
    return results


def _in_fresh_process(*args: str) -> str:
    """The last line this benchmark prints when run with `args` (and this run's model and
    sizes)."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.serving_benchmark", *args,
         f"--seq_length={FLAGS.seq_length}", f"--encoder={FLAGS.encoder}",
         f"--bert_base_dir={FLAGS.bert_base_dir}", f"--calls={FLAGS.calls}",
         f"--predict_rows={FLAGS.predict_rows}"],
        cwd=report.REPO_ROOT, capture_output=True, text=True, check=True)
    return result.stdout.strip().splitlines()[-1]


def measure(saved_model: str, scratch: str) -> Dict[str, object]:
    serve = tf.saved_model.load(saved_model).signatures["serving_default"]
    rng = np.random.default_rng(0)
    texts = reviews(4096)
    singles = [texts[i] for i in rng.permutation(len(texts))[:FLAGS.calls]]
    input_file = os.path.join(scratch, "predict_input.txt")
    if not os.path.exists(input_file):
        with open(input_file, "w", encoding="utf-8") as f:
            f.writelines(" ".join(text.split()) + "\n" for text in reviews(FLAGS.predict_rows))
    return {"latency": latency_ms(serve, singles),
            "throughput": {b: throughput(serve, texts, b) for b in BATCH_SIZES},
            "predict": predict_rate(saved_model, input_file,
                                    os.path.join(scratch, "predictions.jsonl")),
            "memory_mib": peak_memory_mib(saved_model)}


def markdown(encoder: Encoder, results: Dict[tuple, Dict[str, object]]) -> str:
    """The section: one row per (export, thread setting), results keyed so."""
    exports = {"fixed": "TF Hub's recipe: the module as saved, every text padded to "
                        "seq_length (the baseline)",
               "dynamic": "bert_tf2's default: each length-sorted sub-batch padded to its "
                          "longest text, the last layer at [CLS] alone"}
    lines = ["| export | threads (inter-op, intra-op) | 1 review: p50 | p99 | batch 8 | "
             f"batch 64 | batch 256 | predict | {encoder.memory_request:,}-review request |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (name, setting), result in results.items():
        rate = result["throughput"]
        lines.append(f"| {exports[name]} | {setting} {THREAD_SETTINGS[setting]} | "
                     f"{result['latency']['p50']:.2f} ms | {result['latency']['p99']:.2f} ms | "
                     + " | ".join(f"{_rate(rate[b])}/s" for b in BATCH_SIZES)
                     + f" | {_rate(result['predict'])} texts/s"
                     + f" | +{result['memory_mib']:,.0f} MiB |")
    command = report.command("benchmarks.serving_benchmark", FLAGS,
                             ("encoder", "seq_length", "calls", "predict_rows"))
    return (f"{encoder.title}\n\n`{command}` on "
            f"{report.machine_line()}. {encoder.description}, seq_length {FLAGS.seq_length}, "
            "called in process through each export's `serving_default` signature on the "
            "built-in corpus's test reviews (median 48 characters), each export under each of "
            "two settings of TensorFlow's thread pools (set in a fresh process per row): its "
            "defaults, and one thread per op with as many ops at a time as cores. `predict` is "
            f"`bert_tf2.predict` on a {FLAGS.predict_rows:,}-row file of them (read ahead and "
            "sorted by length before each call); memory is what one "
            f"{encoder.memory_request:,}-review request adds to the process's peak resident "
            "memory (Linux's VmHWM, reset just before it).\n\n" + "\n".join(lines) + "\n\n"
            + ratios(results) + "\n")


def _rate(per_second: float) -> str:
    """A rate with a decimal where it is small (BERT-base on a CPU) and without one above."""
    return f"{per_second:,.1f}" if per_second < 100 else f"{per_second:,.0f}"


def ratios(results: Dict[tuple, Dict[str, object]]) -> str:
    """Each export at its best thread setting per column: the new packing over the baseline."""
    def best(name, value):
        return max(value(result) for (export_name, _), result in results.items()
                   if export_name == name)

    columns = {f"batch {b}": (lambda r, b=b: r["throughput"][b]) for b in BATCH_SIZES}
    columns["one review (1/p50)"] = lambda r: 1.0 / r["latency"]["p50"]
    columns["predict"] = lambda r: r["predict"]
    return ("bert_tf2's default export against the baseline, each at its best thread "
            "setting: " + ", ".join(f"{label} {best('dynamic', value) / best('fixed', value):.1f}x"
                                    for label, value in columns.items()) + ".")


def main(argv):
    del argv
    encoder = encoder_spec(FLAGS.encoder)
    FLAGS.calls = FLAGS.calls or encoder.calls
    FLAGS.predict_rows = FLAGS.predict_rows or encoder.predict_rows
    if FLAGS.memory_probe:
        probe_memory(FLAGS.memory_probe, encoder.memory_request)
        return
    if FLAGS.measure:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.intra_op_threads)
        print(json.dumps(measure(FLAGS.measure, FLAGS.scratch)))
        return
    with tempfile.TemporaryDirectory(prefix="bert_tf2_serving_bench_") as scratch:
        exports = build_exports(encoder, scratch)
        results = {}
        for name, path in exports.items():
            for setting, threads in THREAD_SETTINGS.items():
                results[name, setting] = measure_in_subprocess(path, scratch, threads)
                logging.info("%s, %s: %s", name, setting, json.dumps(results[name, setting]))
    report.publish(markdown(encoder, results), FLAGS.output, encoder.title)


if __name__ == "__main__":
    app.run(main)
