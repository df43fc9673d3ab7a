"""Serving speed: the exported model padding each request to its texts, against fixed padding.

Builds the quickstart's model (configs/bert_tiny_zh.json, the shipped pretrained encoder; a
fresh head, since speed does not depend on its weights) and exports it twice, the way
`bert_tf2.train` exports: padding every text to seq_length (TF Hub's bert_zh_preprocess
packing, the baseline) and padding each length-sorted sub-batch to its longest text (the
default). It then measures, in process, through each SavedModel's `serving_default` signature
(the function TF Serving's runtime executes):

  latency     one review per call, p50 and p99 over --calls calls of real reviews;
  throughput  reviews/s at batch 8, 64 and 256;
  predict     `bert_tf2.predict` texts/s on a file of --predict_rows real reviews;
  memory      the peak resident memory a single 10,000-review request adds (in a fresh process).

The reviews are the built-in corpus's (test split, repeated as needed). It prints a markdown
table and writes it as its section of docs/benchmarks.md:

  .venv/bin/python -m benchmarks.serving_benchmark
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Sequence

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import app, flags, logging
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the export's preprocessing needs its ops)

from benchmarks import report
from bert_tf2 import config as config_lib
from bert_tf2 import data, export, hub_modules, model, predict

FLAGS = flags.FLAGS
flags.DEFINE_integer("seq_length", 128, "The model's seq_length (the quickstart's).")
flags.DEFINE_integer("calls", 300, "Single-review calls timed for the latency percentiles.")
flags.DEFINE_integer("predict_rows", 20000, "Rows of the file bert_tf2.predict reads.")
flags.DEFINE_string("output", str(report.BENCHMARKS_MD),
                    "Markdown file whose serving section is written ('' to only print).")
flags.DEFINE_string("memory_probe", None, "Internal: measure one 10,000-review request of "
                    "this SavedModel and print the peak memory it adds, in MiB.")

TITLE = "## Serving: padding to the request against padding to seq_length"
CONFIGS = report.REPO_ROOT / "configs"
BATCH_SIZES = (8, 64, 256)
MEMORY_REQUEST = 10000


def reviews(count: int) -> List[str]:
    texts = list(data.builtin_corpus_splits()["test"].texts)
    return [texts[i % len(texts)] for i in range(count)]


def build_exports(scratch: str) -> Dict[str, str]:
    """{'fixed' | 'dynamic': SavedModel path} of the quickstart-sized model."""
    modules = hub_modules.build_hub_modules(
        os.path.join(scratch, "hub"), vocab_file=str(CONFIGS / "vocab_snownlp.txt"),
        bert_config_file=str(CONFIGS / "bert_tiny_zh.json"),
        init_checkpoint=str(CONFIGS / "bert_tiny_zh_snownlp" / "encoder"),
        seq_length=FLAGS.seq_length)
    preprocessor = model.load_preprocessor(modules.preprocess)
    classifier = model.build_classifier(modules.encoder)
    return {name: export.export_text_classifier(
                model.build_text_classifier(preprocessor, classifier,
                                            seq_length=FLAGS.seq_length,
                                            dynamic_padding=name == "dynamic"),
                os.path.join(scratch, name))
            for name in ("fixed", "dynamic")}


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
    """What one 10,000-review request adds to the peak resident memory, in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.serving_benchmark", f"--memory_probe={saved_model}",
         f"--seq_length={FLAGS.seq_length}"], cwd=report.REPO_ROOT, capture_output=True,
        text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def probe_memory(saved_model: str) -> None:
    """Prints the peak resident memory one 10,000-review request adds, in MiB.

    Linux's peak (VmHWM) is reset to the current resident memory just before the request
    (`/proc/self/clear_refs`), so loading the model does not hide the request's own peak.
    """
    serve = tf.saved_model.load(saved_model).signatures["serving_default"]
    texts = tf.constant(reviews(MEMORY_REQUEST))
    serve(text=texts[:8])
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    serve(text=texts)
    print((_status_kib("VmHWM") - before) / 1024)


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:"))


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


def markdown(results: Dict[str, Dict[str, object]]) -> str:
    rows = {"fixed": "padded to seq_length (TF Hub's packing; the baseline)",
            "dynamic": "padded to each length-sorted sub-batch (the default)"}
    lines = ["| export | 1 review: p50 | p99 | batch 8 | batch 64 | batch 256 | predict | "
             "10,000-review request |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, result in results.items():
        rate = result["throughput"]
        lines.append(f"| {rows[name]} | {result['latency']['p50']:.2f} ms | "
                     f"{result['latency']['p99']:.2f} ms | "
                     + " | ".join(f"{rate[b]:,.0f}/s" for b in BATCH_SIZES)
                     + f" | {result['predict']:,.0f} texts/s | +{result['memory_mib']:,.0f} MiB |")
    fixed, dynamic = results["fixed"], results["dynamic"]
    ratios = ", ".join(f"batch {b} {dynamic['throughput'][b] / fixed['throughput'][b]:.1f}x"
                       for b in BATCH_SIZES)
    threads = (tf.config.threading.get_inter_op_parallelism_threads(),
               tf.config.threading.get_intra_op_parallelism_threads())
    return (f"{TITLE}\n\n`.venv/bin/python -m benchmarks.serving_benchmark` on "
            f"{report.machine_line()}; TensorFlow's thread pools at their defaults "
            f"(inter-op {threads[0]}, intra-op {threads[1]}: 0 means one thread per core). The "
            f"quickstart-sized model (2 layers, hidden 128, seq_length {FLAGS.seq_length}), "
            "called in process through each export's `serving_default` signature on the "
            "built-in corpus's test reviews (median 48 characters); `predict` is "
            f"`bert_tf2.predict` on a {FLAGS.predict_rows:,}-row file of them (read ahead and "
            "sorted by length before each call); memory is what one 10,000-review request adds "
            "to the process's peak resident memory (Linux's VmHWM, reset just before it). Padding to the request against "
            f"padding to seq_length: {ratios}.\n\n" + "\n".join(lines) + "\n")


def main(argv):
    del argv
    if FLAGS.memory_probe:
        probe_memory(FLAGS.memory_probe)
        return
    with tempfile.TemporaryDirectory(prefix="bert_tf2_serving_bench_") as scratch:
        exports = build_exports(scratch)
        results = {}
        for name, path in exports.items():
            results[name] = measure(path, scratch)
            logging.info("%s: %s", name, json.dumps(results[name]))
    section = markdown(results)
    print(section)
    if FLAGS.output:
        report.write_section(FLAGS.output, TITLE, section)


if __name__ == "__main__":
    app.run(main)
