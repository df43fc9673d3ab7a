"""--trainable_encoder_layers: what trains, what stays frozen (to the bit), and the head-only run.

-1 (the default) is every other test file's run, unchanged.
"""

import contextlib
import logging
import re

import bert_tf2  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tensorflow_text  # noqa: F401  (the export's preprocessing needs its ops)
import tf_keras
from absl import flags

from bert_tf2 import cli, export, train
from bert_tf2 import model as model_lib
from tests.tiny_fixtures import (FIXED_SHAPE_ARGS, Crash, CrashAtStep, corpus_data_flags,
                                 tiny_train_args, train_config)

TRAINABLE_LOG = re.compile(r"--trainable_encoder_layers=(-?\d+): trainable: (\d+) variables, "
                           r"([\d,]+) parameters; frozen: (\d+) variables, ([\d,]+) parameters")
RESUMING = re.compile(r"Resuming from step (\d+)")
HEAD = {"classifier/kernel:0", "classifier/bias:0"}
TEXTS = ["这本书很好看，推荐！", "太差了", ""]
# 64 training examples: 4 steps an epoch at --batch_size=16.
RUN_ARGS = ("--train_steps=10", "--epochs=3", "--checkpoint_steps=2", *FIXED_SHAPE_ARGS)


@contextlib.contextmanager
def absl_log():
    """The list of absl INFO messages logged inside the block."""
    logger, text = logging.getLogger("absl"), []

    class Collect(logging.Handler):
        def emit(self, record):
            text.append(record.getMessage())

    handler, level = Collect(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield text
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def module_weights(handle: str) -> dict:
    return {v.name: v.numpy() for v in hub.load(handle).variables if v.dtype.is_floating}


def trainable_names(module: dict, layers: int) -> set:
    """The weights --trainable_encoder_layers=`layers` trains, by name, head included."""
    num_layers = len({re.search(r"layer_(\d+)/", name)[1] for name in module
                      if name.startswith("transformer/")})
    top = range(num_layers - layers, num_layers)
    return HEAD | {name for name in module if layers and (
        name.startswith("pooler_transform/")
        or any(name.startswith(f"transformer/layer_{i}/") for i in top))}


def parameters(module: dict, names) -> int:
    return sum(module[name].size for name in names)


def check_trains_only(result, module: dict, layers: int, log: str) -> None:
    """The run trained exactly what `layers` says; the frozen weights are the module's, to
    the bit; the log reports those counts; AdamW holds slots for the trainable weights only."""
    classifier = result.classifier
    weights = {w.name: w for w in classifier.weights if w.dtype.is_floating}
    expected = trainable_names(module, layers)
    assert {w.name for w in classifier.trainable_weights} == expected
    frozen = set(module) - expected
    for name in frozen:
        np.testing.assert_array_equal(weights[name].numpy(), module[name], err_msg=name)
    for name in expected - HEAD:  # they did train
        assert not np.array_equal(weights[name].numpy(), module[name]), name
    head_size = classifier.get_layer("classifier").count_params()
    assert TRAINABLE_LOG.findall(log) == [(
        str(layers), str(len(expected)),
        f"{parameters(module, expected - HEAD) + head_size:,}",
        str(len(frozen)), f"{parameters(module, frozen):,}")]
    optimizer = classifier.optimizer
    assert len(optimizer.variables()) == 1 + 2 * len(expected)  # the step count, m and v
    for weight in classifier.trainable_weights:
        assert all(optimizer.get_slot(weight, slot) is not None for slot in ("m", "v"))


def check_serves_what_it_trained(result) -> np.ndarray:
    """The export's serving_default gives what the run's text classifier computes; returns it."""
    served = tf.saved_model.load(result.export_path).signatures["serving_default"](
        text=tf.constant(TEXTS))
    assert served["probability"].dtype == tf.float32 and served["label"].dtype == tf.int64
    expected = result.text_classifier(tf.constant(TEXTS), training=False).numpy()[:, 0]
    np.testing.assert_allclose(served["probability"].numpy(), expected, atol=1e-6)
    return expected


# ---------------------------------------------------------------------------------------------
# The config and the model
# ---------------------------------------------------------------------------------------------

def test_flag_defaults_to_training_everything_and_top_layers_need_a_rebuild():
    assert train_config().model.trainable_encoder_layers == -1
    assert not train_config("--trainable_encoder_layers=0",
                            "--norebuild_encoder_under_policy").model.rebuild_encoder
    assert train_config("--trainable_encoder_layers=2",
                        "--norebuild_encoder_under_policy").model.rebuild_encoder
    with pytest.raises(cli.UserError, match=r"--trainable_encoder_layers=2 rebuilds the encoder "
                                            r".*drop --norebuild_encoder_under_policy"):
        train_config("--trainable_encoder_layers=2", "--mixed_precision=mixed_bfloat16",
                     "--norebuild_encoder_under_policy")
    with pytest.raises(flags.IllegalFlagValueError):
        train_config("--trainable_encoder_layers=-2")


@pytest.fixture
def set_policy():
    yield tf_keras.mixed_precision.set_global_policy
    tf_keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("policy, layers", [("float32", 0), ("float32", 1), ("float32", 2),
                                            ("mixed_bfloat16", 0), ("mixed_bfloat16", 1)])
def test_what_trains_is_what_the_flag_says(two_layer_modules, set_policy, policy, layers):
    config = train_config(*tiny_train_args(two_layer_modules, "/tmp/unused", ""),
                          f"--mixed_precision={policy}", f"--trainable_encoder_layers={layers}")
    set_policy(policy)
    classifier = model_lib.build_classifier_for(config.model, config.modules.encoder_handle)
    module = module_weights(two_layer_modules.encoder)
    expected = trainable_names(module, layers)
    assert {w.name for w in classifier.trainable_weights} == expected
    assert model_lib.describe_trainable(classifier).startswith(
        f"trainable: {len(expected)} variables")
    assert any(isinstance(layer, tf_keras.Model) for layer in classifier.layers)  # rebuilt


def test_more_layers_than_the_encoder_has_is_a_user_error(two_layer_modules):
    config = train_config(*tiny_train_args(two_layer_modules, "/tmp/unused", ""),
                          "--trainable_encoder_layers=3")
    with pytest.raises(cli.UserError, match=r"--trainable_encoder_layers=3, but the encoder "
                                            r".* has 2 transformer layers: use at most 2"):
        model_lib.build_classifier_for(config.model, config.modules.encoder_handle)


# ---------------------------------------------------------------------------------------------
# The head-only run (0)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_flags(tmp_path_factory, corpus_splits):
    return corpus_data_flags(tmp_path_factory.mktemp("frozen_data"), corpus_splits,
                             {"train": 64, "dev": 32, "test": 32}, stride=7)


def head_only_args(modules, model_dir, export_dir, data_flags):
    return [*tiny_train_args(modules, model_dir, export_dir), *data_flags, *RUN_ARGS,
            "--trainable_encoder_layers=0", "--dropout=0"]


@pytest.fixture(scope="module")
def head_only_run(dropout_free_modules, data_flags, tmp_path_factory):
    """A whole run with the encoder frozen, and its log."""
    root = tmp_path_factory.mktemp("head_only")
    with absl_log() as log:
        result = train.run(train_config(*head_only_args(
            dropout_free_modules, root / "model", root / "export", data_flags)))
    return result, "\n".join(log), root


def test_head_only_run_trains_the_head_alone(head_only_run, dropout_free_modules):
    result, log, _ = head_only_run
    assert result.optimizer_steps == 10
    check_trains_only(result, module_weights(dropout_free_modules.encoder), 0, log)
    assert "pooled outputs of 64 train and 32 dev examples computed" in log


def test_head_only_run_evaluates_and_exports_the_whole_classifier(head_only_run):
    result, _, root = head_only_run
    # The head trained on pooled outputs is the classifier's: validation of the last epoch (the
    # head on the dev split's pooled outputs) is the classifier's own evaluation on dev texts.
    history = (root / "model" / "history.csv").read_text().splitlines()
    last = dict(zip(history[0].split(","), history[-1].split(",")))
    assert float(last["val_accuracy"]) == pytest.approx(result.metrics["dev"]["accuracy"])
    assert float(last["val_loss"]) == pytest.approx(result.metrics["dev"]["loss"], abs=1e-5)
    # The usual export: raw text in, probability and label out, and the classify signature.
    expected = check_serves_what_it_trained(result)
    loaded = tf.saved_model.load(result.export_path)
    classified = loaded.signatures["classify"](inputs=tf.constant(
        [export.text_example(text).SerializeToString() for text in TEXTS]))
    np.testing.assert_allclose(classified["scores"].numpy()[:, 1], expected, atol=1e-6)


def test_head_only_run_resumes_to_the_same_weights(head_only_run, dropout_free_modules,
                                                   data_flags, tmp_path):
    uninterrupted, _, _ = head_only_run
    config = train_config(*head_only_args(dropout_free_modules, tmp_path / "model", "",
                                          data_flags))
    with pytest.raises(Crash):
        train.run(config, callbacks=[CrashAtStep(5)])
    with absl_log() as log:
        resumed = train.run(config)
    assert RESUMING.findall("\n".join(log)) == ["4"]
    assert resumed.optimizer_steps == 10
    for mine, theirs in zip(resumed.classifier.weights, uninterrupted.classifier.weights):
        assert mine.name == theirs.name
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=mine.name)


def test_head_only_run_under_mixed_bfloat16_exports_a_float32_copy(
        dropout_free_modules, data_flags, tmp_path, set_policy):
    """The encoder rebuilt under the policy and frozen whole; the export is a float32 copy."""
    with absl_log() as log:
        result = train.run(train_config(
            *head_only_args(dropout_free_modules, tmp_path / "model", tmp_path / "export",
                            data_flags), "--mixed_precision=mixed_bfloat16"))
    log = "\n".join(log)
    assert "Exporting a float32 copy" in log
    check_trains_only(result, module_weights(dropout_free_modules.encoder), 0, log)
    check_serves_what_it_trained(result)


# ---------------------------------------------------------------------------------------------
# The top layers (N > 0)
# ---------------------------------------------------------------------------------------------

def test_top_layer_trains_and_the_rest_stays_frozen_through_a_kill_and_resume(
        two_layer_modules, data_flags, tmp_path):
    config = train_config(*tiny_train_args(two_layer_modules, tmp_path / "model",
                                           tmp_path / "export"),
                          *data_flags, *RUN_ARGS, "--trainable_encoder_layers=1")
    with pytest.raises(Crash):
        train.run(config, callbacks=[CrashAtStep(5)])
    with absl_log() as log:
        result = train.run(config)
    log = "\n".join(log)
    assert RESUMING.findall(log) == ["4"]
    check_trains_only(result, module_weights(two_layer_modules.encoder), 1, log)
    check_serves_what_it_trained(result)
