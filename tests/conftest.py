"""Shared fixtures: tiny vocab, tiny hub modules and one tiny trained-and-exported run.

Everything is built once per session and kept small (a 1-layer, 16-wide encoder) so the suite
stays fast on 2 CPU cores. Tests that need the real Google Chinese BERT files use
`real_layout_dir`, which skips with a reason when `../shared` is not beside the checkout.
"""

import json
import os
import pathlib

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import pytest
from absl import flags

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
REAL_LAYOUT_DIR = REPO_ROOT.parent / "shared" / "data" / "bert_zh_layout"
TINY_SEQ_LENGTH = 32


@pytest.fixture(scope="session")
def real_layout_dir() -> pathlib.Path:
    """The real Chinese BERT vocab/config/index files, or a skip saying why they are absent."""
    if not (REAL_LAYOUT_DIR / "vocab.txt").is_file():
        pytest.skip(f"real Chinese BERT layout not found at {REAL_LAYOUT_DIR} (it ships in "
                    "CI's ../shared, not in a fresh clone)")
    return REAL_LAYOUT_DIR


@pytest.fixture(scope="session")
def corpus_splits():
    from bert_tf2 import data
    return data.builtin_corpus_splits()


@pytest.fixture(scope="session")
def tiny_vocab_file(tmp_path_factory, corpus_splits) -> str:
    from bert_tf2 import vocab
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_vocab(vocab.build_vocab(corpus_splits["train"].texts[:3000], min_count=2),
                      str(path))
    return str(path)


def write_bert_config(path: pathlib.Path, vocab_size: int, **sizes) -> str:
    config = dict(attention_probs_dropout_prob=0.1, hidden_act="gelu", hidden_dropout_prob=0.1,
                  hidden_size=16, initializer_range=0.02, intermediate_size=32,
                  max_position_embeddings=128, num_attention_heads=2, num_hidden_layers=1,
                  type_vocab_size=2, vocab_size=vocab_size)
    config.update(sizes)
    path.write_text(json.dumps(config), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def tiny_bert_config_file(tmp_path_factory, tiny_vocab_file) -> str:
    with open(tiny_vocab_file, encoding="utf-8") as f:
        vocab_size = sum(1 for _ in f)
    return write_bert_config(tmp_path_factory.mktemp("config") / "bert_config.json",
                             vocab_size)


@pytest.fixture(scope="session")
def tiny_hub_modules(tmp_path_factory, tiny_vocab_file, tiny_bert_config_file):
    from bert_tf2 import hub_modules
    return hub_modules.build_hub_modules(
        str(tmp_path_factory.mktemp("hub") / "modules"), vocab_file=tiny_vocab_file,
        bert_config_file=tiny_bert_config_file, seq_length=TINY_SEQ_LENGTH)


@pytest.fixture(scope="session")
def dropout_free_modules(tmp_path_factory, tiny_vocab_file):
    """Tiny hub modules without dropout: runs that should compute the same (one seed twice,
    two strategies) then do."""
    from bert_tf2 import hub_modules
    root = tmp_path_factory.mktemp("dropout_free")
    with open(tiny_vocab_file, encoding="utf-8") as f:
        vocab_size = sum(1 for _ in f)
    config = write_bert_config(root / "bert_config.json", vocab_size, hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0)
    return hub_modules.build_hub_modules(str(root / "modules"), vocab_file=tiny_vocab_file,
                                         bert_config_file=config, seq_length=TINY_SEQ_LENGTH)


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
    flag_values = flags.FlagValues()
    train.define_flags(flag_values)
    flag_values(["train", *args])
    return flag_values


def tiny_train_args(modules, model_dir, export_dir, *extra: str):
    """Command-line arguments for a few-step training run of the tiny modules."""
    return [f"--preprocess_handle={modules.preprocess}", f"--encoder_handle={modules.encoder}",
            f"--model_dir={model_dir}", f"--export_dir={export_dir}",
            f"--seq_length={TINY_SEQ_LENGTH}", "--batch_size=16", "--eval_batch_size=64",
            "--train_steps=8", "--learning_rate=1e-3", *extra]


@pytest.fixture(scope="session")
def tiny_training_run(tmp_path_factory, tiny_hub_modules, corpus_splits):
    """One tiny run of `train.run` on a slice of the built-in corpus, with its outputs."""
    from bert_tf2 import train
    root = tmp_path_factory.mktemp("run")
    flag_values = parse_train_flags(
        *tiny_train_args(tiny_hub_modules, root / "model", root / "export"),
        *corpus_data_flags(root, corpus_splits, {"train": 160, "dev": 160, "test": 160}))
    metrics = train.run(flag_values)
    return {"metrics": metrics, "model_dir": str(root / "model"),
            "export_dir": str(root / "export"),
            "saved_model": os.path.join(root, "export", "1")}
