"""Training throughput: what length bucketing, the dtype policies and XLA buy.

Every case trains the classifier exactly as the `train` CLI builds it
(`train.compile_classifier`, `train.distributed_dataset`): a case *is* a set of changes to the
run's `config.TrainConfig`.
It trains on the built-in corpus's training split for --warmup_steps (tracing, XLA compiles,
tf.data start-up; not timed) and then --steps optimizer steps, and reports examples/s over the
timed steps. Modules are built fresh with random weights (speed does not depend on them).

  --suite=cpu   the quickstart model (configs/bert_tiny_zh.json, 2 layers, hidden 128) at
                seq_length 256: every batch padded to 256 / each batch padded to its longest
                member / bucketed by length; then float32 against mixed_bfloat16 (bucketed).
  --suite=recipe  the quickstart model at seq_length 128 trained the way the keras-bert recipe
                this project replaces trains it (keras_bert.get_model with the same sizes,
                [CLS] -> Dense(1, sigmoid), Adam, every example tokenized by keras-bert's Python
                Tokenizer and padded to seq_length; its tokenizing time counts), beside
                bert_tf2's default pipeline and bert_tf2 with every batch padded.
  --suite=recipe_base  the same three rows with a BERT-base-sized encoder (12 layers, hidden
                768) over the quickstart vocab: the size users fine-tune, where the work per
                position outweighs each step's fixed costs.
  --suite=gpu   a BERT-base-sized encoder (12 layers, hidden 768) at seq_length 128, every batch
                padded to 128 so the work per example is known: float32, mixed_float16 and
                mixed_float16 + XLA, with the model FLOPs utilisation against the GPU's peak.

It prints a markdown table and writes it as that suite's section of docs/benchmarks.md:

  .venv/bin/python -m benchmarks.training_benchmark --suite=cpu
  .venv/bin/python -m benchmarks.training_benchmark --suite=recipe
  .venv/bin/python -m benchmarks.training_benchmark --suite=recipe_base
  .venv/bin/python -m benchmarks.training_benchmark --suite=gpu   # on a GPU machine
"""

import json
import os
import tempfile
import time
from typing import Dict, List, NamedTuple, Optional

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import app, flags, logging
import numpy as np
import tensorflow as tf
import tf_keras

from benchmarks import report
from bert_tf2 import config as config_lib
from bert_tf2 import data, distribution, hub_modules, model as model_lib, train

FLAGS = flags.FLAGS
flags.DEFINE_enum("suite", "cpu", ["cpu", "recipe", "recipe_base", "gpu"],
                  "Which set of cases to run (see above).")
flags.DEFINE_integer("steps", None, "Timed optimizer steps per case (default: 40 for cpu, "
                     "120 for recipe, 40 for recipe_base, 200 for gpu).")
flags.DEFINE_integer("warmup_steps", None, "Untimed steps before them (default: 10 for cpu "
                     "and recipe, 3 for recipe_base, 30 for gpu).")
flags.DEFINE_string("output", str(report.BENCHMARKS_MD),
                    "Markdown file whose section for the suite is written ('' to only print).")

QUICKSTART_VOCAB = report.REPO_ROOT / "configs" / "vocab_snownlp.txt"
QUICKSTART_CONFIG = report.REPO_ROOT / "configs" / "bert_tiny_zh.json"
# BERT-base's sizes (Google's bert_config.json for chinese_L-12_H-768_A-12) over our vocab.
BERT_BASE_SIZES = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072, max_position_embeddings=512)
# Dense float16/bfloat16 tensor-core peaks (NVIDIA's data sheets), by device name.
GPU_PEAK_FLOPS = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12}

FIXED = {"input.dynamic_padding": False, "input.bucket_by_length": False}
DYNAMIC = {"input.dynamic_padding": True, "input.bucket_by_length": False}
BUCKETED = {"input.dynamic_padding": True, "input.bucket_by_length": True}
KERAS_BERT = None  # a case trained by keras_bert_examples_per_second, not by bert_tf2
# The encoder module as saved: every position of its last layer computed, as keras-bert does.
AS_SAVED = {"model.rebuild_encoder_under_policy": False}


class Suite(NamedTuple):
    title: str
    bert_config: Dict[str, object]
    seq_length: int
    batch_size: int
    steps: int
    warmup_steps: int
    cases: Dict[str, Optional[Dict[str, object]]]  # row -> TrainConfig.replace changes
    note: str


def cpu_suite() -> Suite:
    config = json.loads(QUICKSTART_CONFIG.read_text(encoding="utf-8"))
    return Suite(
        title="## Training throughput on the CPU", bert_config=config, seq_length=256,
        batch_size=32, steps=40, warmup_steps=10,
        cases={
            "float32, every batch padded to seq_length (`--nodynamic_padding "
            "--nobucket_by_length`)": FIXED,
            "float32, each batch padded to its longest member (`--nobucket_by_length`)":
                DYNAMIC,
            "float32, bucketed by length (`--bucket_by_length`, the default)": BUCKETED,
            "mixed_bfloat16, bucketed by length": {**BUCKETED,
                                                   "runtime.mixed_precision": "mixed_bfloat16"},
        },
        note=("The quickstart model (configs/bert_tiny_zh.json: 2 layers, hidden 128), random "
              "weights, seq_length 256, batch 32, on the built-in corpus's training split. "
              f"This CPU {'has' if distribution.cpu_has_bfloat16() else 'has no'} bfloat16 "
              "units (AVX512_BF16 / AMX)."))


def recipe_suite(base_sizes: bool = False) -> Suite:
    """The keras-bert recipe's row beside bert_tf2's; at the quickstart's sizes or BERT-base's."""
    config = json.loads(QUICKSTART_CONFIG.read_text(encoding="utf-8"))
    if base_sizes:
        config.update(BERT_BASE_SIZES)
        sizes = ("A BERT-base-sized encoder (12 layers, hidden 768, 12 heads; the quickstart "
                 "vocab of 4,452 tokens)")
    else:
        sizes = "The quickstart model's sizes (configs/bert_tiny_zh.json: 2 layers, hidden 128)"
    bound = padding_bound(data.builtin_corpus_splits()["train"], 128)
    return Suite(
        title=("## Training throughput against the keras-bert recipe"
               + (", BERT-base sizes" if base_sizes else "")), bert_config=config,
        seq_length=128, batch_size=32, steps=40 if base_sizes else 120,
        warmup_steps=3 if base_sizes else 10,
        cases={
            "keras-bert recipe: `get_model`, [CLS] -> `Dense(1, sigmoid)`, keras-bert's "
            "Python tokenizer, every example padded to 128": KERAS_BERT,
            "bert_tf2, every batch padded to 128, the encoder module as saved "
            "(`--nodynamic_padding --nobucket_by_length --norebuild_encoder_under_policy`)":
                {**FIXED, **AS_SAVED},
            "bert_tf2, every batch padded to 128 (`--nodynamic_padding "
            "--nobucket_by_length`)": FIXED,
            "bert_tf2 bucketed, each batch padded to its longest, the encoder module as "
            "saved (`--norebuild_encoder_under_policy`)": {**BUCKETED, **AS_SAVED},
            "bert_tf2 default (in-graph tokenizer, bucketed, each batch padded to its "
            "longest; the encoder rebuilt, its last layer computed at [CLS] alone)": BUCKETED,
        },
        note=(f"{sizes}, random weights, seq_length 128, batch 32, on the built-in corpus's "
              "training split, float32. The keras-bert row's time includes tokenizing its "
              "examples in Python, as the recipe does before `fit`; bert_tf2 tokenizes in its "
              "tf.data pipeline, inside the timed steps. How far padding less can go on this "
              f"data: padding every review to 128 positions is {bound:.2f}x the positions of "
              "padding none (its reviews' own lengths in characters, [CLS] and [SEP] included, "
              "capped at 128): the most that any padding scheme can save on the per-position "
              "work. By default bert_tf2 also rebuilds the encoder module as a BertEncoder "
              "whose last layer computes the [CLS] position alone, the one the classifier "
              "reads (same pooled output): the rows marked 'module as saved' compute every "
              "position, as keras-bert does."))


def padding_bound(examples: data.Examples, seq_length: int) -> float:
    """seq_length over the mean packed length of `examples` (one character is one token)."""
    lengths = np.minimum([len(text) + 2 for text in examples.texts], seq_length)
    return seq_length / float(np.mean(lengths))


def keras_bert_examples_per_second(suite: Suite, train_examples: data.Examples) -> float:
    """The recipe's training throughput: keras-bert's model, tokenizer and fixed padding."""
    os.environ.setdefault("TF_KERAS", "1")  # keras-bert on tf.keras (tf_keras here)
    import keras_bert  # pylint: disable=g-import-not-at-top

    tf_keras.backend.clear_session()
    sizes, seq_length = suite.bert_config, suite.seq_length
    with open(QUICKSTART_VOCAB, encoding="utf-8") as f:
        token_dict = {line.rstrip("\n"): i for i, line in enumerate(f)}
    count = (suite.warmup_steps + suite.steps) * suite.batch_size
    texts = [train_examples.texts[i % len(train_examples)] for i in range(count)]
    start = time.perf_counter()
    tokenizer = keras_bert.Tokenizer(token_dict)
    ids, segments = zip(*(tokenizer.encode(text, max_len=seq_length) for text in texts))
    tokenizing = time.perf_counter() - start
    inputs, sequence = keras_bert.get_model(
        token_num=len(token_dict), head_num=sizes["num_attention_heads"],
        transformer_num=sizes["num_hidden_layers"], embed_dim=sizes["hidden_size"],
        feed_forward_dim=sizes["intermediate_size"], seq_len=seq_length,
        pos_num=sizes["max_position_embeddings"], dropout_rate=0.1, training=False,
        trainable=True)
    cls = tf_keras.layers.Lambda(lambda x: x[:, 0])(sequence)
    classifier = tf_keras.Model(inputs, tf_keras.layers.Dense(1, activation="sigmoid")(cls))
    classifier.compile(optimizer=tf_keras.optimizers.Adam(1e-5), loss="binary_crossentropy",
                       metrics=["accuracy"])
    timer = _Timer(suite.warmup_steps)
    classifier.fit([np.array(ids), np.array(segments)],
                   np.array([train_examples.labels[i % len(train_examples)]
                             for i in range(count)]),
                   batch_size=suite.batch_size, epochs=1, shuffle=False, callbacks=[timer],
                   verbose=0)
    timed_tokenizing = tokenizing * suite.steps / (suite.warmup_steps + suite.steps)
    return suite.steps * suite.batch_size / (timer.end - timer.start + timed_tokenizing)


def gpu_suite() -> Suite:
    vocab_size = hub_modules.count_vocab(str(QUICKSTART_VOCAB))
    config = dict(json.loads(QUICKSTART_CONFIG.read_text(encoding="utf-8")),
                  vocab_size=vocab_size, **BERT_BASE_SIZES)
    return Suite(
        title="## Training throughput on a GPU", bert_config=config, seq_length=128,
        batch_size=64, steps=200, warmup_steps=30,
        cases={
            "float32 (TF32 matmuls)": {**FIXED, "runtime.mixed_precision": "float32"},
            "mixed_float16": {**FIXED, "runtime.mixed_precision": "mixed_float16"},
            "mixed_float16 + XLA (`--jit_compile`)": {
                **FIXED, "runtime.mixed_precision": "mixed_float16",
                "runtime.jit_compile": True},
        },
        note=("A BERT-base-sized encoder (12 layers, hidden 768, 12 heads; the quickstart vocab "
              "of 4,452 tokens), random weights, seq_length 128 with every batch padded to 128, "
              "batch 64. MFU: model FLOPs (forward and backward matmuls, attention included) "
              "per second against the GPU's dense float16 peak."))


class _Timer(tf_keras.callbacks.Callback):
    """Seconds from the end of the last warm-up step to the end of training."""

    def __init__(self, warmup_steps: int):
        super().__init__()
        self.warmup_steps = warmup_steps
        self.start = self.end = None

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.warmup_steps:
            self.start = time.perf_counter()

    def on_train_end(self, logs=None):
        self.end = time.perf_counter()


def examples_per_second(config: config_lib.TrainConfig, train_examples: data.Examples,
                        suite: Suite) -> float:
    """Trains one case for warmup + timed steps; examples/s over the timed ones."""
    tf_keras.backend.clear_session()
    with distribution.dtype_policy(config.runtime.mixed_precision):
        strategy = distribution.get_strategy(config.runtime.distribution_strategy)
        preprocessor = model_lib.load_preprocessor(config.modules.preprocess_handle)
        total_steps = suite.warmup_steps + suite.steps
        classifier = train.compile_classifier(config.modules.encoder_handle, config.model,
                                              config.optimizer, config.runtime, strategy,
                                              total_steps)
        dataset = train.distributed_dataset(strategy, preprocessor, train_examples,
                                            config.trainer.batch_size, config.input,
                                            training=True, seed=config.seed)
        timer = _Timer(suite.warmup_steps)
        classifier.fit(dataset, epochs=1, steps_per_epoch=total_steps, callbacks=[timer],
                       verbose=0)
    return suite.steps * config.trainer.batch_size / (timer.end - timer.start)


def train_flops_per_example(config: Dict[str, object], seq_length: int) -> float:
    """Matmul FLOPs of one training example: 3x (forward + backward) the forward pass."""
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    dense = layers * (4 * hidden * hidden + 2 * hidden * config["intermediate_size"])
    forward = 2 * dense * seq_length + layers * 4 * seq_length * seq_length * hidden
    return 3 * (forward + 2 * hidden * hidden)  # + the pooler


def gpu_name() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    return (tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
            if gpus else "no GPU")


def gpu_peak() -> Optional[float]:
    """The first GPU's dense float16 peak in FLOP/s, or None for a GPU not in the table."""
    name = gpu_name()
    return next((peak for key, peak in GPU_PEAK_FLOPS.items() if key in name), None)


def run_suite(suite: Suite, scratch: str) -> List[Dict[str, object]]:
    config_file = os.path.join(scratch, "bert_config.json")
    with open(config_file, "w", encoding="utf-8") as f:
        json.dump(suite.bert_config, f)
    modules = hub_modules.build_hub_modules(os.path.join(scratch, "hub"),
                                            vocab_file=str(QUICKSTART_VOCAB),
                                            bert_config_file=config_file,
                                            seq_length=suite.seq_length)
    train_examples = data.builtin_corpus_splits()["train"]
    # The train CLI's defaults, on these modules, sizes and batch.
    base = report.train_cli_defaults().replace(
        **{"model_dir": scratch, "modules.preprocess_handle": modules.preprocess,
           "modules.encoder_handle": modules.encoder, "input.seq_length": suite.seq_length,
           "trainer.batch_size": suite.batch_size})
    rows = []
    for name, changes in suite.cases.items():
        throughput = (keras_bert_examples_per_second(suite, train_examples)
                      if changes is KERAS_BERT else
                      examples_per_second(base.replace(**changes), train_examples, suite))
        logging.info("%s: %.1f examples/s", name, throughput)
        rows.append({"case": name, "examples_per_s": throughput})
    return rows


def markdown_section(suite: Suite, rows: List[Dict[str, object]]) -> str:
    command = report.command("benchmarks.training_benchmark", FLAGS,
                             ("suite", "steps", "warmup_steps"))
    base = rows[0]["examples_per_s"]
    peak = gpu_peak() if FLAGS.suite == "gpu" else None
    flops = train_flops_per_example(suite.bert_config, suite.seq_length)
    header = "| case | examples/s | vs first row |"
    rule = "|---|---:|---:|"
    if peak:
        header += " MFU |"
        rule += "---:|"
    lines = []
    for row in rows:
        line = f"| {row['case']} | {row['examples_per_s']:,.1f} | " \
               f"{row['examples_per_s'] / base:.2f}x |"
        if peak:
            line += f" {row['examples_per_s'] * flops / peak:.1%} |"
        lines.append(line)
    device = f" on {gpu_name()}" if FLAGS.suite == "gpu" else ""
    return (f"{suite.title}\n\n`{command}` on {report.machine_line()}{device}: "
            f"{suite.steps} timed optimizer steps per row after {suite.warmup_steps} untimed "
            f"ones. {suite.note}\n\n{header}\n{rule}\n" + "\n".join(lines) + "\n")


def main(argv):
    del argv
    suite = {"cpu": cpu_suite, "recipe": recipe_suite,
             "recipe_base": lambda: recipe_suite(base_sizes=True),
             "gpu": gpu_suite}[FLAGS.suite]()
    if FLAGS.suite == "gpu" and not tf.config.list_physical_devices("GPU"):
        print("Skipped: --suite=gpu needs a GPU and TensorFlow sees none.")
        return
    suite = suite._replace(steps=FLAGS.steps or suite.steps,
                           warmup_steps=FLAGS.warmup_steps or suite.warmup_steps)
    with tempfile.TemporaryDirectory(prefix="bert_tf2_bench_") as scratch:
        rows = run_suite(suite, scratch)
    section = markdown_section(suite, rows)
    report.publish(section, FLAGS.output, suite.title)


if __name__ == "__main__":
    app.run(main)
