"""The tiny fixtures the tests share: a vocab, hub modules, one trained-and-exported run.

They live under one directory. Under pytest, the session fixtures in conftest.py build each
piece the first time a test asks for it, in a temporary directory that the pytest-xdist
workers share: a piece is built once, by whichever worker needs it first (the others wait for
it or find it there). Under Bazel, building them in every test target (each its own pytest
session) would repeat their build in every target, so the action //tests:tiny_fixtures runs this
file once,

    python tests/tiny_fixtures.py OUTPUT_DIR

and the test targets find OUTPUT_DIR through the environment variable BERT_TF2_TINY_FIXTURES
(set by pytest_runner.py), where every piece is then already built.

Everything is kept small (1-layer, 16-wide encoders; a 2-layer one where a test needs layers
that differ) so the suite stays fast on 2 CPU cores.
"""

import fcntl
import json
import os
import pathlib
import shutil
import sys
from typing import Callable, Dict

if __name__ == "__main__":  # As a script (the Bazel action): import from the repository root.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import bert_tf2  # noqa: F401,E402  (selects Keras 2 before TensorFlow loads)
import tf_keras  # noqa: E402
from absl import flags  # noqa: E402

ENV_VAR = "BERT_TF2_TINY_FIXTURES"
TINY_SEQ_LENGTH = 32
ENCODER_SEED = 0
TRAIN_RUN_ROWS = {"train": 160, "dev": 160, "test": 160}


# Every batch padded to --seq_length, without length buckets: a single input shape, so a run
# builds simpler pipelines and traces its functions once, which is faster. For the tests whose
# subject is not the input pipeline.
FIXED_SHAPE_ARGS = ("--nodynamic_padding", "--nobucket_by_length")


def write_bert_config(path: pathlib.Path, vocab_size: int, **sizes) -> str:
    """A Google-style bert_config.json for a 1-layer, 16-wide BERT; `sizes` override.

    Its weights are drawn with BERT's initializer scaled to the width: 0.3 x sqrt(16) is about
    what a trained BERT-base has, 0.04 x sqrt(768). With BERT's own 0.02 a 16-wide encoder
    gives every text nearly the same [CLS] vector, so tests that compare probabilities to 1e-5
    could not tell one review from another (`tests/test_hub_modules.py` checks they can).
    """
    config = dict(attention_probs_dropout_prob=0.1, hidden_act="gelu", hidden_dropout_prob=0.1,
                  hidden_size=16, initializer_range=0.3, intermediate_size=32,
                  max_position_embeddings=128, num_attention_heads=2, num_hidden_layers=1,
                  type_vocab_size=2, vocab_size=vocab_size)
    config.update(sizes)
    path.write_text(json.dumps(config), encoding="utf-8")
    return str(path)


def write_jsonl(path: pathlib.Path, examples, n: int, stride: int = 1) -> str:
    """The first `n` of every `stride`-th example, as the JSONL `train` reads; returns `path`."""
    with open(path, "w", encoding="utf-8") as f:
        for text, label in list(zip(examples.texts, examples.labels))[::stride][:n]:
            f.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")
    return str(path)


def corpus_data_flags(root: pathlib.Path, corpus_splits, sizes, stride: int = 1):
    """--train_data/--eval_data/--test_data flags for slices of the built-in corpus's splits.

    `sizes` maps a split (train, dev, test) to its number of rows; the files go under `root`.
    """
    flag_names = {"train": "train_data", "dev": "eval_data", "test": "test_data"}
    return [f"--{flag_names[split]}="
            f"{write_jsonl(root / f'{split}.jsonl', corpus_splits[split], n, stride)}"
            for split, n in sizes.items()]


def parse_train_flags(*args: str) -> flags.FlagValues:
    """A private FlagValues with every train flag, parsed from `args` as on a command line."""
    from bert_tf2 import train
    return _parse_flags(train, "train", args)


def train_config(*args: str):
    """The `config.TrainConfig` that `python -m bert_tf2.train ARGS` would run."""
    from bert_tf2 import config
    return config.TrainConfig.from_flags(parse_train_flags(*args))


def distill_config(*args: str):
    """The `config.DistillConfig` that `python -m bert_tf2.distill ARGS` would run."""
    from bert_tf2 import config, distill
    return config.DistillConfig.from_flags(_parse_flags(distill, "distill", args))


def predict_config(*args: str):
    """The `config.PredictConfig` that `python -m bert_tf2.predict ARGS` would run."""
    from bert_tf2 import config, predict
    return config.PredictConfig.from_flags(_parse_flags(predict, "predict", args))


def evaluate_config(*args: str):
    """The `config.EvaluateConfig` that `python -m bert_tf2.evaluate ARGS` would run."""
    from bert_tf2 import config, evaluate
    return config.EvaluateConfig.from_flags(_parse_flags(evaluate, "evaluate", args))


def lite_export_config(*args: str):
    """The `config.LiteExportConfig` that `python -m bert_tf2.export_lite ARGS` would run."""
    from bert_tf2 import config, export_lite
    return config.LiteExportConfig.from_flags(_parse_flags(export_lite, "export_lite", args))


def _parse_flags(cli_module, name: str, args) -> flags.FlagValues:
    flag_values = flags.FlagValues()
    cli_module.define_flags(flag_values)
    flag_values([name, *args])
    return flag_values


def tiny_train_args(modules, model_dir, export_dir, *extra: str):
    """Command-line arguments for a few-step training run of the tiny modules."""
    return [f"--preprocess_handle={modules.preprocess}", f"--encoder_handle={modules.encoder}",
            f"--model_dir={model_dir}", f"--export_dir={export_dir}",
            f"--seq_length={TINY_SEQ_LENGTH}", "--batch_size=16", "--eval_batch_size=64",
            "--train_steps=8", "--learning_rate=1e-3", *extra]


class Crash(Exception):
    """Stands in for the process dying: `fit` is left without running its end-of-train hooks."""


class CrashAtStep(tf_keras.callbacks.Callback):
    """Crashes a run (`train.run(config, callbacks=[...])`) once the optimizer has taken `step`
    steps, before that step's backup."""

    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) == self.step:
            raise Crash(f"crash at step {self.step}")


# ---------------------------------------------------------------------------------------------
# The pieces. Each takes the fixtures' root directory and builds its piece there unless it is
# already there (built earlier in this session, by another pytest-xdist worker, or by the
# Bazel action).
# ---------------------------------------------------------------------------------------------

def _once(path: pathlib.Path, build: Callable[[pathlib.Path], None]) -> None:
    """`build(scratch)` renamed to `path`, unless `path` exists; one process at a time.

    `path` appears whole (a rename), so a process that finds it can use it; one that finds it
    missing waits on `path`'s lock file while another builds it, then finds it.
    """
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            scratch = path.parent / f".{path.name}.tmp"
            shutil.rmtree(scratch, ignore_errors=True)  # left by a build that failed
            scratch.unlink(missing_ok=True)
            build(scratch)
            os.replace(scratch, path)


def vocab_file(root: pathlib.Path, corpus_splits) -> str:
    """A vocab of the characters in 3,000 training reviews (those seen twice or more)."""
    from bert_tf2 import vocab
    path = root / "vocab.txt"
    _once(path, lambda scratch: vocab.write_vocab(
        vocab.build_vocab(corpus_splits["train"].texts[:3000], min_count=2), str(scratch)))
    return str(path)


def _bert_config(root: pathlib.Path, name: str, vocab: str, **sizes) -> str:
    """`root/name/bert_config.json`: the tiny config for `vocab`, with `sizes` overridden."""
    from bert_tf2 import hub_modules as hub_modules_lib
    path = root / name / "bert_config.json"
    _once(path, lambda scratch: write_bert_config(scratch, hub_modules_lib.count_vocab(vocab),
                                                  **sizes))
    return str(path)


def _preprocess(root: pathlib.Path, vocab: str) -> str:
    """The tiny preprocessing module, `root/preprocess`: one for every tiny encoder."""
    from bert_tf2 import hub_modules as hub_modules_lib
    path = root / "preprocess"
    _once(path, lambda scratch: hub_modules_lib.export_preprocess(
        str(scratch), vocab_file=vocab, normalization="bert_original",
        seq_length=TINY_SEQ_LENGTH))
    return str(path)


def _modules(root: pathlib.Path, name: str, vocab: str, **sizes):
    """The tiny preprocessing module, and an encoder module of `_bert_config(root, name, vocab,
    **sizes)` in root/name/encoder."""
    from bert_tf2 import hub_modules as hub_modules_lib
    config = _bert_config(root, name, vocab, **sizes)
    encoder = root / name / "encoder"

    def build(scratch: pathlib.Path) -> None:
        # The same weights in every build, so a test sees the same encoder here, under Bazel
        # and in CI.
        tf_keras.utils.set_random_seed(ENCODER_SEED)
        hub_modules_lib.export_encoder(
            str(scratch), bert_config=hub_modules_lib.read_bert_config(config), vocab_file=vocab)
    _once(encoder, build)
    return hub_modules_lib.HubModules(preprocess=_preprocess(root, vocab), encoder=str(encoder))


def bert_config_file(root: pathlib.Path, vocab: str) -> str:
    """The tiny modules' bert_config.json."""
    return _bert_config(root, "tiny", vocab)


def hub_modules(root: pathlib.Path, vocab: str):
    """The tiny preprocessing and encoder modules (with dropout, as a real BERT has)."""
    return _modules(root, "tiny", vocab)


def dropout_free_modules(root: pathlib.Path, vocab: str):
    """The tiny modules without dropout: runs that should compute the same (one seed twice,
    two strategies) then do. The preprocessing module is the one `hub_modules` has."""
    return _modules(root, "dropout_free", vocab, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)


def two_layer_modules(root: pathlib.Path, vocab: str):
    """The tiny modules with a 2-layer encoder: one layer can train while the other is frozen
    (--trainable_encoder_layers=1). The preprocessing module is the one `hub_modules` has."""
    return _modules(root, "two_layer", vocab, num_hidden_layers=2)


def training_run(root: pathlib.Path, modules, corpus_splits) -> Dict[str, object]:
    """One tiny run of `train.run` on a slice of the built-in corpus, with its outputs.

    `metrics` is the metrics `train.run` returned (kept in returned_metrics.json, next to the
    run's own model_dir/metrics.json, so that a prebuilt run can be checked against it too).
    """
    def train_and_export(scratch: pathlib.Path) -> None:
        from bert_tf2 import train
        scratch.mkdir()
        result = train.run(train_config(
            *tiny_train_args(modules, scratch / "model", scratch / "export"),
            *corpus_data_flags(scratch, corpus_splits, TRAIN_RUN_ROWS)))
        (scratch / "returned_metrics.json").write_text(json.dumps(result.metrics),
                                                       encoding="utf-8")

    run = root / "run"
    _once(run, train_and_export)
    return {"metrics": json.loads((run / "returned_metrics.json").read_text(encoding="utf-8")),
            "model_dir": str(run / "model"), "export_dir": str(run / "export"),
            "saved_model": str(run / "export" / "1")}


def build_all(root: pathlib.Path) -> None:
    """Every piece, as the Bazel action builds them for all test targets."""
    from bert_tf2 import data
    corpus_splits = data.builtin_corpus_splits()
    vocab = vocab_file(root, corpus_splits)
    training_run(root, hub_modules(root, vocab), corpus_splits)
    dropout_free_modules(root, vocab)
    two_layer_modules(root, vocab)
    for lock in root.rglob(".*.lock"):  # only this process used them
        lock.unlink()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUTPUT_DIR")
    output_dir = pathlib.Path(sys.argv[1])
    output_dir.mkdir(parents=True, exist_ok=True)
    build_all(output_dir)
