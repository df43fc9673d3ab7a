"""TFLite export against the SavedModel: size, latency, throughput, accuracy per quantization.

  bash scripts/quickstart.sh
  .venv/bin/python -m benchmarks.lite_benchmark --saved_model=runs/quickstart/export

Exports --saved_model with every --quantization of bert_tf2.export_lite (int8 calibrated on the
built-in corpus's training texts), then for the SavedModel (in-process, its serving_default
signature) and each file (bert_tf2.lite.LiteClassifier): its size, p50 of one review at a time
(--reviews reviews of the test split, with 1 and 2 threads), texts/s in batches of 64 over the
whole test split (2 threads), accuracy on the test split, and the share of labels equal to the
SavedModel's. Writes the table as the "## TFLite export" section of docs/benchmarks.md.
"""

import os
import statistics
import sys
import tempfile
import time

import bert_tf2  # noqa: F401
from absl import app, flags
import numpy as np

from benchmarks import report

FLAGS = flags.FLAGS
TITLE = "## TFLite export"
QUANTIZATIONS = ("none", "dynamic", "float16", "int8")


def define_flags() -> None:
    flags.DEFINE_string("saved_model", None, "The export to convert (export_dir[/VERSION]).")
    flags.DEFINE_integer("reviews", 200, "Reviews timed one at a time for the p50.")
    flags.DEFINE_integer("texts", 0, "Test reviews batched for throughput, accuracy and "
                         "agreement; 0: the whole test split.")
    flags.DEFINE_string("model_name", "", "What --saved_model is, for the section's title and "
                        "text; empty: the quickstart's model.")
    flags.DEFINE_string("output", str(report.BENCHMARKS_MD), "Markdown file to write the "
                        "section into; empty: print only.")


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)


def _p50_ms(call, texts) -> float:
    call(texts[:1])  # warm-up
    times = []
    for text in texts:
        start = time.perf_counter()
        call([text])
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _batched(call, texts, batch: int = 64):
    """(probabilities of every text, texts/s) in batches of `batch` (sorted by length, as
    bert_tf2.predict sends them)."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    sorted_texts = [texts[i] for i in order]
    call(sorted_texts[:batch])
    start = time.perf_counter()
    parts = [call(sorted_texts[i:i + batch]) for i in range(0, len(texts), batch)]
    seconds = time.perf_counter() - start
    probabilities = np.empty(len(texts), np.float32)
    probabilities[order] = np.concatenate(parts)
    return probabilities, len(texts) / seconds


def _measures(size, p50s, throughput, probabilities, labels, reference):
    predicted = (probabilities >= 0.5).astype(int)
    return {"size": size, "p50s": p50s, "throughput": throughput,
            "accuracy": np.mean(predicted == labels),
            "agreement": np.mean(predicted == reference) if reference is not None else 1.0}


def _row(name, m) -> str:
    p50s = ["-" if p50 is None else f"{p50:.2f} ms" for p50 in m["p50s"]]
    return (f"| {name} | {m['size'] / 1e6:.2f} MB | {p50s[0]} | {p50s[1]} | "
            f"{m['throughput']:,.0f} | {100 * m['accuracy']:.2f}% | "
            f"{100 * m['agreement']:.2f}% |")


def _summary(saved, dynamic) -> str:
    """`dynamic` against the float SavedModel: size, one-review latency, labels, accuracy."""
    fastest = min(p for p in dynamic["p50s"] if p is not None)
    return (f"`dynamic` against the SavedModel: {saved['size'] / dynamic['size']:.1f}x smaller; "
            f"one review p50 {fastest:.2f} ms (its better thread count) against "
            f"{saved['p50s'][1]:.2f} ms, {saved['p50s'][1] / fastest:.1f}x; labels equal to the "
            f"SavedModel's on {100 * dynamic['agreement']:.2f}% of the test split; accuracy "
            f"{100 * (dynamic['accuracy'] - saved['accuracy']):+.2f} points.")


def main(argv):
    del argv
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_text  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    from bert_tf2 import data, export_lite, lite, predict  # pylint: disable=g-import-not-at-top
    load_average = os.getloadavg()[0]
    saved_model = predict.resolve_saved_model(FLAGS.saved_model)
    test = data.builtin_corpus_splits()["test"]
    count = FLAGS.texts or len(test.texts)
    texts, labels = list(test.texts[:count]), np.asarray(test.labels[:count])
    one = texts[:FLAGS.reviews]
    loaded = tf.saved_model.load(saved_model)
    serve = loaded.signatures["serving_default"]

    def saved_call(batch):
        return serve(text=tf.constant(batch))["probability"].numpy()

    probabilities, throughput = _batched(saved_call, texts)
    reference = (probabilities >= 0.5).astype(int)
    # TF's thread pools are fixed once it has run: the SavedModel runs with its default ones
    # (all cores), shown in the 2-thread column.
    p50s = [None, _p50_ms(saved_call, one)]
    saved = _measures(_size(saved_model), p50s, throughput, probabilities, labels, None)
    rows, measured = [_row("SavedModel (float32, TF in-process)", saved)], {}
    with tempfile.TemporaryDirectory(prefix="lite_benchmark_") as scratch:
        for quantization in QUANTIZATIONS:
            path = os.path.join(scratch, f"{quantization}.tflite")
            export_lite.export_lite(saved_model, path, quantization)
            p50s = []
            for count in (1, 2):
                classifier = lite.LiteClassifier(path, num_threads=count)
                p50s.append(_p50_ms(lambda b: classifier.predict(b)["probability"], one))
            probabilities, throughput = _batched(
                lambda b: classifier.predict(b)["probability"], texts)
            measured[quantization] = _measures(_size(path), p50s, throughput, probabilities,
                                               labels, reference)
            rows.append(_row(f"TFLite `{quantization}`", measured[quantization]))
    header = ("| model | size | p50 one review, 1 thread | 2 threads | texts/s, batches of 64 "
              "(2 threads) | test accuracy | labels equal to the SavedModel's |\n"
              "|---|---:|---:|---:|---:|---:|---:|")
    title = f"{TITLE}: {FLAGS.model_name}" if FLAGS.model_name else TITLE
    model = FLAGS.model_name or "The quickstart's model (`bash scripts/quickstart.sh`)"
    section = "\n".join([
        title, "",
        f"`{report.command('benchmarks.lite_benchmark', FLAGS, ['saved_model', 'reviews', 'texts', 'model_name'])}` "
        f"on {report.machine_line()}, load average (1 min) at the start "
        f"{load_average:.1f} (other work shares the cores). {model}, the built-in "
        f"corpus's test split ({len(texts):,} reviews); p50 over "
        f"{len(one)} reviews one at a time. The SavedModel runs with TF's default thread pools "
        "(all cores: the 2-thread column).", "",
        header, *rows, "", _summary(saved, measured["dynamic"]), ""])
    report.publish(section, FLAGS.output, title)
    sys.stdout.flush()


if __name__ == "__main__":
    define_flags()
    app.run(main)
