"""Static-shape input (--static_shapes, forced under the TPU strategy) against the dynamic one.

For each task one tiny classifier is built and compiled once; the same examples go through
both pipelines. Evaluation must give the same figures and count the same examples (every
batch of the static one full, its short batches filled with rows of weight 0), and training
the same loss and gradients on the same seed. The static pipeline's shapes are few: one per
length bucket at most.
"""

import json
import os
import subprocess
import sys

import bert_tf2  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf

from bert_tf2 import data, distribution, input_pipeline, train
from bert_tf2 import model as model_lib
from tests.conftest import REPO_ROOT
from tests.tiny_fixtures import TINY_SEQ_LENGTH, tiny_train_args, train_config

NUM_CLASSES = {"binary": 2, "multiclass": 3, "multilabel": 3}
EVAL_BATCH, TRAIN_BATCH = 8, 4


def _labels(task: str, count: int):
    rng = np.random.default_rng(7)
    if task == "binary":
        return tuple(int(x) for x in rng.integers(0, 2, count))
    if task == "multiclass":
        return tuple(int(x) for x in rng.integers(0, 3, count))
    return tuple(tuple(int(x) for x in row) for row in rng.integers(0, 2, (count, 3)))


def _examples(corpus_splits, task: str, count: int, offset: int = 0) -> data.Examples:
    texts = corpus_splits["dev"].texts[offset:offset + count]
    return data.Examples(tuple(texts), _labels(task, count), f"{task}-{count}")


@pytest.fixture(scope="module")
def preprocessor(dropout_free_modules):
    return model_lib.load_preprocessor(dropout_free_modules.preprocess)


@pytest.fixture(scope="module", params=sorted(NUM_CLASSES))
def classifier(request, dropout_free_modules):
    """(task, the task's classifier compiled as `train` compiles it, without dropout)."""
    task = request.param
    config = train_config(*tiny_train_args(dropout_free_modules, "/tmp/unused", ""),
                          f"--task={task}", "--dropout=0")
    return task, train.compile_classifier(
        dropout_free_modules.encoder, config.model, config.optimizer, config.runtime,
        tf.distribute.get_strategy(), total_steps=10, task=task,
        num_classes=NUM_CLASSES[task])


def _dataset(examples, preprocessor, *, static: bool, training: bool, batch_size: int):
    return input_pipeline.make_dataset(
        examples, batch_size=batch_size, preprocessor=preprocessor,
        seq_length=TINY_SEQ_LENGTH, training=training, seed=3, bucket_by_length=True,
        static_shapes=static)


@pytest.mark.parametrize("count", [1, 37])  # one example; a ragged split of several buckets
def test_static_evaluation_equals_dynamic_and_counts_every_example_once(
        classifier, preprocessor, corpus_splits, count):
    task, model = classifier
    examples = _examples(corpus_splits, task, count)
    results = {static: model.evaluate(
        _dataset(examples, preprocessor, static=static, training=False,
                 batch_size=EVAL_BATCH), return_dict=True, verbose=0)
        for static in (False, True)}
    assert results[True]["examples"] == results[False]["examples"] == count
    assert results[True].keys() == results[False].keys()
    for name, value in results[False].items():
        assert results[True][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (task, name)
    # The static batches are all full, and only the filling rows have weight 0.
    weights = []
    for inputs, labels, weight in _dataset(examples, preprocessor, static=True,
                                           training=False, batch_size=EVAL_BATCH):
        assert inputs["input_word_ids"].shape[0] == labels.shape[0] == EVAL_BATCH
        weights.extend(weight.numpy())
    assert sum(weights) == count and set(weights) <= {0.0, 1.0}


def test_static_training_gives_the_same_loss_and_gradients(classifier, preprocessor,
                                                          corpus_splits):
    task, model = classifier
    examples = _examples(corpus_splits, task, 40, offset=100)

    def steps(static):
        dataset = _dataset(examples, preprocessor, static=static, training=True,
                           batch_size=TRAIN_BATCH)
        results = []
        for inputs, labels in dataset.take(2):
            with tf.GradientTape() as tape:
                loss = model.compute_loss(inputs, labels, model(inputs, training=True))
            results.append((float(loss), tape.gradient(loss, model.trainable_variables),
                            inputs["input_word_ids"].shape))
        return results

    for (dynamic_loss, dynamic_grads, dynamic_shape), (static_loss, static_grads, shape) in zip(
            steps(False), steps(True)):
        assert shape[0] == TRAIN_BATCH and shape[1] in input_pipeline.length_buckets(
            TINY_SEQ_LENGTH)
        assert static_loss == pytest.approx(dynamic_loss, rel=1e-5), task
        for dynamic, static in zip(dynamic_grads, static_grads):
            np.testing.assert_allclose(tf.convert_to_tensor(static).numpy(),
                                       tf.convert_to_tensor(dynamic).numpy(),
                                       rtol=1e-4, atol=1e-6)


def test_a_static_run_traces_at_most_one_shape_per_bucket(preprocessor, corpus_splits):
    examples = _examples(corpus_splits, "binary", 120)
    buckets = input_pipeline.length_buckets(TINY_SEQ_LENGTH)

    @tf.function(reduce_retracing=False)
    def step(inputs):
        return tf.reduce_sum(inputs["input_word_ids"])

    shapes = set()
    for training in (True, False):
        dataset = _dataset(examples, preprocessor, static=True, training=training,
                           batch_size=EVAL_BATCH)
        for batch in dataset.take(40):
            step({name: tf.constant(x.numpy()) for name, x in batch[0].items()})
            shapes.add(tuple(batch[0]["input_word_ids"].shape))
    assert {shape[0] for shape in shapes} == {EVAL_BATCH}
    assert len(shapes) <= len(buckets)
    assert step.experimental_get_tracing_count() == len(shapes)


def test_the_last_step_of_each_replica_is_full(preprocessor, corpus_splits):
    # 13 examples in batches of 4: batches of 4, 4, 4 and 1 (filled), then with three
    # replicas on this pipeline two more batches of weight 0 make the last step whole.
    examples = _examples(corpus_splits, "binary", 13)
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=3)
    dataset = input_pipeline.make_dataset(
        examples, batch_size=4, preprocessor=preprocessor, seq_length=TINY_SEQ_LENGTH,
        training=False, bucket_by_length=False, static_shapes=True, input_context=context)
    weights = [batch[2].numpy() for batch in dataset]
    assert len(weights) % 3 == 0 and all(w.shape == (4,) for w in weights)
    assert sum(w.sum() for w in weights) == 13


# Each task's classifier evaluated on one device and mirrored over two logical CPUs (which
# TensorFlow takes only before it starts: a subprocess), with length buckets, on 37 examples
# in global batches of 8: some steps leave a replica a short batch or none.
_MIRRORED_EVALUATION = """
import json, sys, types
import bert_tf2
import tensorflow as tf
from bert_tf2 import data, distribution, train
from bert_tf2 import model as model_lib
from tests.tiny_fixtures import tiny_train_args, train_config

modules = types.SimpleNamespace(preprocess=sys.argv[1], encoder=sys.argv[2])
spec = json.loads(sys.argv[3])
strategies = {"one_device": tf.distribute.get_strategy(),
              "mirrored": distribution.get_strategy("mirrored")}
preprocessor = model_lib.load_preprocessor(modules.preprocess)
results = {}
for task, labels in spec["labels"].items():
    examples = data.Examples(tuple(spec["texts"]),
                             tuple(tuple(x) if isinstance(x, list) else x for x in labels), task)
    models = {}
    for name, strategy in strategies.items():
        config = train_config(*tiny_train_args(modules, "/tmp/unused", ""), f"--task={task}",
                              "--dropout=0", "--eval_batch_size=8")
        models[name] = train.compile_classifier(
            modules.encoder, config.model, config.optimizer, config.runtime, strategy, 10,
            task=task, num_classes=spec["num_classes"][task])
        for static in (False, True):
            input_config = config.replace(**{"input.static_shapes": static}).input
            dataset = train.distributed_dataset(strategy, preprocessor, examples, 8,
                                                input_config, training=False, seed=0)
            if name == "mirrored":
                models[name].set_weights(models["one_device"].get_weights())
            results[f"{task} {name} {static}"] = models[name].evaluate(
                dataset, return_dict=True, verbose=0)
print(json.dumps(results))
"""


def test_mirrored_evaluation_with_buckets_and_empty_replicas_counts_each_example_once(
        dropout_free_modules, corpus_splits):
    count = 37
    spec = {"texts": list(corpus_splits["dev"].texts[:count]),
            "labels": {task: list(_labels(task, count)) for task in NUM_CLASSES},
            "num_classes": NUM_CLASSES}
    env = {**os.environ, distribution.LOGICAL_CPUS_ENV: "2", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    result = subprocess.run([sys.executable, "-c", _MIRRORED_EVALUATION,
                             dropout_free_modules.preprocess, dropout_free_modules.encoder,
                             json.dumps(spec)], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    for task in NUM_CLASSES:
        baseline = results[f"{task} one_device False"]
        assert baseline["examples"] == count
        for case in ("one_device True", "mirrored False", "mirrored True"):
            for name, value in baseline.items():
                assert results[f"{task} {case}"][name] == pytest.approx(
                    value, rel=1e-5, abs=1e-6), (task, case, name)
