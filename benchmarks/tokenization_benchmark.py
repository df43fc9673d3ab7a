"""Tokenization throughput on the built-in corpus: ours against the usual BERT tokenizers.

The original BERT tokenizer's ids are only useful at a speed that does not hold training back;
this measures texts/s for each way of getting them, on the same texts and vocab, in one run:

  bert_original layer in tf.data     our layer mapped over batches, parallel calls (training)
  bert_original preprocess module    the exported SavedModel (tokenize + pack to seq_length)
  bert_original raw ops              our layer's graph on one batch at a time, no tf.data
  tf_hub layer in tf.data            Model Garden's BertTokenizer (TF Hub's preprocessing)
  HF tokenizers                      BertWordPieceTokenizer.encode_batch (Rust, its own threads)
  keras-bert Tokenizer               pure Python
  Google FullTokenizer               the original, pure Python (bert-tensorflow)

Each number is the best of --repeats passes over all ~17.4k texts. It prints a markdown table
and writes it as the "## Tokenization throughput" section of docs/benchmarks.md, leaving the
other sections alone. Needs the real Chinese vocab (skips with a message when it is absent).

  .venv/bin/python -m benchmarks.tokenization_benchmark
"""

import os
import tempfile
import time
from typing import Callable, Dict, List, Sequence

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import app, flags
import tensorflow as tf
import tensorflow_hub as hub

from benchmarks import report
from bert_tf2 import data, hub_modules, tokenization

REPO_ROOT = report.REPO_ROOT
SECTION_TITLE = "## Tokenization throughput"
COMMAND = ".venv/bin/python -m benchmarks.tokenization_benchmark"

FLAGS = flags.FLAGS
flags.DEFINE_string("vocab_file",
                    str(report.BERT_ZH_LAYOUT / "vocab.txt"),
                    "The Chinese BERT vocab.txt.")
flags.DEFINE_integer("batch_size", 512, "Texts per batch for the in-graph tokenizers.")
flags.DEFINE_integer("seq_length", 128, "seq_length of the exported preprocess module.")
flags.DEFINE_integer("repeats", 3, "Passes over the corpus per tokenizer; the best counts.")
flags.DEFINE_string("output", str(report.BENCHMARKS_MD),
                    "Markdown file whose throughput section is written ('' to only print).")


def corpus_texts() -> List[str]:
    return [text for split in data.builtin_corpus_splits().values() for text in split.texts]


def mapped_over_tf_data(fn: Callable, texts: Sequence[str], batch_size: int) -> Callable[[], None]:
    dataset = (tf.data.Dataset.from_tensor_slices(list(texts)).batch(batch_size)
               .map(fn, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))

    def run():
        for _ in dataset:
            pass
    return run


def graph_batch_by_batch(fn: Callable, texts: Sequence[str], batch_size: int
                         ) -> Callable[[], None]:
    graph_fn = tf.function(fn, input_signature=[tf.TensorSpec([None], tf.string)])
    batches = [tf.constant(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]

    def run():
        for batch in batches:
            graph_fn(batch)
    return run


def python_text_by_text(encode: Callable[[str], object], texts: Sequence[str]
                        ) -> Callable[[], None]:
    def run():
        for text in texts:
            encode(text)
    return run


def hf_batch(vocab_file: str, texts: Sequence[str]) -> Callable[[], None]:
    from tokenizers import BertWordPieceTokenizer  # pylint: disable=g-import-not-at-top
    tokenizer = BertWordPieceTokenizer(vocab_file, clean_text=True, handle_chinese_chars=True,
                                       strip_accents=True, lowercase=True)
    texts = list(texts)
    return lambda: tokenizer.encode_batch(texts, add_special_tokens=False)


def keras_bert_tokenizer(vocab_file: str, texts: Sequence[str]) -> Callable[[], None]:
    from keras_bert import Tokenizer  # pylint: disable=g-import-not-at-top
    token_dict = {token: index for index, token in
                  enumerate(tokenization.read_vocab(vocab_file))}
    return python_text_by_text(Tokenizer(token_dict).encode, texts)


def google_full_tokenizer(vocab_file: str, texts: Sequence[str]) -> Callable[[], None]:
    from bert import tokenization as google  # pylint: disable=g-import-not-at-top
    google.preserve_token = lambda token, vocab: False  # The default; its flag is never parsed.
    tokenizer = google.FullTokenizer(vocab_file, do_lower_case=True)
    return python_text_by_text(
        lambda text: tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text)), texts)


def hf_threads() -> str:
    if os.environ.get("TOKENIZERS_PARALLELISM", "").lower() in ("0", "false"):
        return "1"
    return os.environ.get("RAYON_NUM_THREADS") or str(os.cpu_count())


def build_runs(vocab_file: str, texts: Sequence[str], module_dir: str) -> Dict[str, Callable]:
    batch_size = FLAGS.batch_size
    ours = tokenization.make_tokenizer(vocab_file)
    tf_hub_style = tokenization.make_tokenizer(vocab_file, "tf_hub")
    hub_modules.export_preprocess(module_dir, vocab_file=vocab_file,
                                  normalization="bert_original", seq_length=FLAGS.seq_length)
    preprocessor = hub.load(module_dir)
    return {
        f"bert_original layer in tf.data (batch {batch_size}, parallel map)":
            mapped_over_tf_data(ours, texts, batch_size),
        f"bert_original preprocess module in tf.data (+ pack to {FLAGS.seq_length})":
            mapped_over_tf_data(preprocessor, texts, batch_size),
        f"bert_original raw ops (tf.function, batch {batch_size}, no tf.data)":
            graph_batch_by_batch(ours, texts, batch_size),
        f"tf_hub layer in tf.data (batch {batch_size}, parallel map)":
            mapped_over_tf_data(tf_hub_style, texts, batch_size),
        f"HF tokenizers encode_batch ({hf_threads()} threads)": hf_batch(vocab_file, texts),
        "keras-bert Tokenizer.encode (Python)": keras_bert_tokenizer(vocab_file, texts),
        "Google FullTokenizer (Python, bert-tensorflow)": google_full_tokenizer(vocab_file,
                                                                                texts),
    }


def best_throughputs(runs: Dict[str, Callable], n_texts: int, repeats: int) -> Dict[str, float]:
    """Texts/s, best of `repeats`; rounds interleave the tokenizers so load hits all alike."""
    for run in runs.values():
        run()  # Warm-up: tracing, thread pools, caches.
    best = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = max(best[name], n_texts / (time.perf_counter() - start))
    return best


def tf_hub_mismatch_rate(vocab_file: str, texts: Sequence[str]) -> float:
    """Fraction of texts whose ids from the tf_hub normalization differ from bert_original's."""
    ours = tokenization.make_tokenizer(vocab_file)
    tf_hub_style = tokenization.make_tokenizer(vocab_file, "tf_hub")
    differing = 0
    for start in range(0, len(texts), FLAGS.batch_size):
        batch = tf.constant(texts[start:start + FLAGS.batch_size])
        differing += sum(a != b for a, b in zip(ours(batch).merge_dims(1, 2).to_list(),
                                                tf_hub_style(batch).merge_dims(1, 2).to_list()))
    return differing / len(texts)


def markdown_section(throughputs: Dict[str, float], n_texts: int, mismatch_rate: float) -> str:
    reference = next(value for name, value in throughputs.items() if name.startswith("HF"))
    rows = "\n".join(f"| {name} | {value:,.0f} | {value / reference:.2f}x |"
                     for name, value in throughputs.items())
    return (f"{SECTION_TITLE}\n\n"
            f"`{COMMAND}` on {report.machine_line()}: the {n_texts:,} texts of the built-in "
            f"corpus (all three splits), real Chinese vocab, best of {FLAGS.repeats} passes.\n\n"
            "| tokenizer | texts/s | vs HF tokenizers |\n|---|---:|---:|\n"
            f"{rows}\n\n"
            f"The tf_hub normalization gives other ids than bert_original (= the original BERT "
            f"tokenizer) for {mismatch_rate:.1%} of these texts.\n")


def main(argv):
    del argv
    if not os.path.isfile(FLAGS.vocab_file):
        print(f"Skipped: the real Chinese vocab is not at {FLAGS.vocab_file} "
              "(it ships in ../shared beside the checkout; or pass --vocab_file).")
        return
    texts = corpus_texts()
    with tempfile.TemporaryDirectory() as scratch:
        runs = build_runs(FLAGS.vocab_file, texts, os.path.join(scratch, "preprocess"))
        throughputs = best_throughputs(runs, len(texts), FLAGS.repeats)
    section = markdown_section(throughputs, len(texts),
                               tf_hub_mismatch_rate(FLAGS.vocab_file, texts))
    report.publish(section, FLAGS.output, SECTION_TITLE)


if __name__ == "__main__":
    app.run(main)
