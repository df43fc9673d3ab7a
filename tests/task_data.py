"""Tiny task data and calls of an export, shared by the task tests (test_tasks, test_pairs)."""

import pathlib

import bert_tf2  # noqa: F401
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the export's preprocessing needs its ops)

from bert_tf2 import config, export
from tests import tiny_fixtures

TOPICS = ("体育", "财经", "科技")  # not in sorted order: the model's classes are sorted


def rows(corpus_splits, split: str, n: int, offset: int = 0):
    examples = corpus_splits[split]
    return [text.replace("\t", " ") for text in examples.texts[offset:offset + n]]


def write(path: pathlib.Path, lines) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def serve(saved_model: str, **texts):
    loaded = tf.saved_model.load(saved_model)
    outputs = loaded.signatures["serving_default"](
        **{name: tf.constant(values) for name, values in texts.items()})
    return loaded, {name: value.numpy() for name, value in outputs.items()}


def classify(loaded, **features):
    examples = [export.text_example(*texts).SerializeToString()
                for texts in zip(*features.values())]
    outputs = loaded.signatures["classify"](inputs=tf.constant(examples))
    return {name: value.numpy() for name, value in outputs.items()}


def predict_config(saved_model: str, *args: str) -> config.PredictConfig:
    return tiny_fixtures.predict_config(f"--saved_model={saved_model}", "--noprogress", *args)


def evaluate_config(saved_model: str, *args: str) -> config.EvaluateConfig:
    return tiny_fixtures.evaluate_config(f"--saved_model={saved_model}", *args)


def pair_files(root: pathlib.Path, corpus_splits, label_of):
    """'q1<TAB>q2<TAB>label' TSV files with a header: 64 training and 32 dev rows."""
    files = {}
    for split, n in (("train", 64), ("dev", 32)):
        first, second = (rows(corpus_splits, split, n), rows(corpus_splits, split, n, n))
        files[split] = write(root / f"{split}.tsv", ["q1\tq2\tlabel"] + [
            f"{a}\t{b}\t{label_of(i)}" for i, (a, b) in enumerate(zip(first, second))])
    return files


def pair_topics_export(root: pathlib.Path, modules, corpus_splits) -> str:
    """A tiny multi-class model of sentence pairs (TOPICS of pair_files' q1, q2), exported."""
    from bert_tf2 import train  # pylint: disable=g-import-not-at-top
    files = pair_files(root, corpus_splits, lambda i: TOPICS[i % 3])
    return train.run(tiny_fixtures.train_config(
        *tiny_fixtures.tiny_train_args(modules, root / "model", root / "export"),
        f"--train_data={files['train']}", "--task=multiclass", "--text_column=q1",
        "--text_b_column=q2", *tiny_fixtures.FIXED_SHAPE_ARGS)).export_path
