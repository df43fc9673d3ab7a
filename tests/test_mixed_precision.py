"""Mixed precision: what a hub encoder computes in under each policy, the encoder rebuilt under
the policy, and bfloat16 / float16 training runs on the CPU.

Findings these tests pin down: a `hub.KerasLayer` encoder is a SavedModel and computes in
float32 under every Keras policy (sequence_output, pooled_output and every matmul inside); the
encoder rebuilt as a BertEncoder under a mixed policy runs its matmuls in bfloat16 / float16
with float32 variables, returns pooled_output in the compute dtype and sequence_output in
float32 (Model Garden keeps the final LayerNorm in float32), and computes what the module does.
"""

import collections
import logging
import shutil

import bert_tf2  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tensorflow_text  # noqa: F401
import tf_keras
from tensorflow.core.protobuf import saved_model_pb2

from bert_tf2 import checkpoints, distribution, hub_modules
from bert_tf2 import model as model_lib
from tests.tiny_fixtures import (FIXED_SHAPE_ARGS, corpus_data_flags, tiny_train_args,
                                 train_config)

_MATMULS = ("MatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum")


@pytest.fixture
def set_policy():
    """Sets the global Keras dtype policy for one test and puts float32 back afterwards."""
    yield tf_keras.mixed_precision.set_global_policy
    tf_keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, corpus_splits):
    """--train_data/--eval_data/--test_data flags for 64/64/64 rows of the built-in corpus."""
    return corpus_data_flags(tmp_path_factory.mktemp("mp_data"), corpus_splits,
                             {"train": 64, "dev": 64, "test": 64}, stride=9)


def encoder_inputs(batch=2, length=12):
    mask = tf.sequence_mask([length, length - 4], length, dtype=tf.int32)
    ids = tf.random.stateless_uniform([batch, length], seed=[1, 2], minval=5, maxval=200,
                                      dtype=tf.int32) * mask
    return {"input_word_ids": ids, "input_mask": mask, "input_type_ids": tf.zeros_like(ids)}


def matmul_dtypes(layer) -> collections.Counter:
    """(op type, dtype) of every matmul in `layer`'s training-mode graph, nested functions too."""
    graph = tf.function(lambda x: layer(x, training=True)).get_concrete_function(
        encoder_inputs()).graph
    found = collections.Counter(
        (op.type, op.outputs[0].dtype.name) for op in graph.get_operations()
        if op.type in _MATMULS)
    for function in graph.as_graph_def().library.function:
        for node in function.node_def:
            if node.op in _MATMULS:
                found[(node.op, tf.dtypes.as_dtype(node.attr["T"].type).name)] += 1
    return found


def computed_dtypes(layer) -> set:
    return {dtype for _, dtype in matmul_dtypes(layer)}


# ---------------------------------------------------------------------------------------------
# What the encoder computes in
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_hub_encoder_computes_in_float32_under_every_policy(tiny_hub_modules, set_policy,
                                                            policy):
    set_policy(policy)
    layer = hub.KerasLayer(tiny_hub_modules.encoder, trainable=True)
    outputs = layer(encoder_inputs())
    assert outputs["sequence_output"].dtype == tf.float32
    assert outputs["pooled_output"].dtype == tf.float32
    assert computed_dtypes(layer) == {"float32"}  # the policy changes nothing inside


@pytest.mark.parametrize("policy, dtype", [("mixed_bfloat16", "bfloat16"),
                                           ("mixed_float16", "float16")])
def test_rebuilt_encoder_computes_in_the_policy_with_the_module_weights(
        tiny_hub_modules, set_policy, policy, dtype):
    set_policy(policy)
    encoder = model_lib.rebuild_encoder(tiny_hub_modules.encoder)
    assert computed_dtypes(encoder) == {dtype}
    assert {v.dtype for v in encoder.variables} == {tf.float32}
    inputs = encoder_inputs()
    outputs = encoder(inputs, training=False)
    assert outputs["pooled_output"].dtype == dtype
    assert outputs["sequence_output"].dtype == tf.float32  # final LayerNorm kept in float32
    module = hub.load(tiny_hub_modules.encoder)
    expected = module(inputs, training=False)["pooled_output"].numpy()
    np.testing.assert_allclose(tf.cast(outputs["pooled_output"], tf.float32).numpy(), expected,
                               atol=0.03)


def test_rebuilt_encoder_in_float32_is_the_module(tiny_hub_modules, tiny_bert_config_file):
    module = hub.load(tiny_hub_modules.encoder)
    config = hub_modules.bert_config_from_variables(module.variables)
    expected = hub_modules.read_bert_config(tiny_bert_config_file)
    for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "max_position_embeddings", "type_vocab_size"):
        assert getattr(config, field) == getattr(expected, field), field
    encoder = model_lib.rebuild_encoder(tiny_hub_modules.encoder)
    inputs = encoder_inputs()
    for output in ("sequence_output", "pooled_output"):
        np.testing.assert_allclose(encoder(inputs, training=False)[output].numpy(),
                                   module(inputs, training=False)[output].numpy(), atol=1e-5)


def test_pooled_only_encoder_computes_the_modules_pooled_output(tiny_hub_modules):
    encoder = model_lib.rebuild_encoder(tiny_hub_modules.encoder, pooled_only=True)
    module = hub.load(tiny_hub_modules.encoder)
    inputs = encoder_inputs(length=12)
    outputs = encoder(inputs, training=False)
    expected = module(inputs, training=False)
    np.testing.assert_allclose(outputs["pooled_output"].numpy(),
                               expected["pooled_output"].numpy(), atol=1e-5)
    assert outputs["sequence_output"].shape[1] == 1  # the last layer computed [CLS] alone
    np.testing.assert_allclose(outputs["sequence_output"][:, 0].numpy(),
                               expected["sequence_output"][:, 0].numpy(), atol=1e-5)


def test_dropout_rates_are_read_from_the_modules_keras_metadata(tiny_hub_modules,
                                                                dropout_free_modules, tmp_path):
    assert hub_modules.saved_dropout_rates(tiny_hub_modules.encoder) == (0.1, 0.1)
    assert hub_modules.saved_dropout_rates(dropout_free_modules.encoder) == (0.0, 0.0)
    assert hub_modules.saved_dropout_rates(str(tmp_path)) is None


def test_float32_classifier_rebuilds_its_encoder_with_the_same_probabilities(
        tiny_hub_modules):
    args = tiny_train_args(tiny_hub_modules, "/tmp/unused", "")
    rebuilt = model_lib.build_classifier_for(train_config(*args).model, tiny_hub_modules.encoder)
    as_saved = model_lib.build_classifier_for(
        train_config(*args, "--norebuild_encoder_under_policy").model, tiny_hub_modules.encoder)
    assert not any(isinstance(layer, hub.KerasLayer) for layer in rebuilt.layers)
    assert isinstance(as_saved.get_layer("encoder"), hub.KerasLayer)
    as_saved.get_layer("classifier").set_weights(rebuilt.get_layer("classifier").get_weights())
    inputs = encoder_inputs(batch=2, length=12)
    np.testing.assert_allclose(rebuilt(inputs, training=False).numpy(),
                               as_saved(inputs, training=False).numpy(), atol=1e-6)


def not_a_bert_encoder_module(path) -> str:
    """A SavedModel with the encoder interface whose variables are not a BertEncoder's."""
    inputs = {name: tf_keras.Input(shape=(None,), dtype=tf.int32, name=name)
              for name in model_lib.ENCODER_INPUTS}
    sequence = tf_keras.layers.Embedding(300, 8)(inputs["input_word_ids"])
    pooled = tf_keras.layers.GlobalAveragePooling1D()(sequence)
    tf_keras.Model(inputs, {"pooled_output": pooled, "sequence_output": sequence}).save(
        str(path), save_format="tf")
    return str(path)


def test_a_module_that_cannot_be_rebuilt_exactly_runs_as_saved_in_float32(
        tiny_hub_modules, tmp_path, set_policy, caplog):
    config = train_config(*tiny_train_args(tiny_hub_modules, "/tmp/unused", "")).model
    not_bert = not_a_bert_encoder_module(tmp_path / "not_bert")
    no_rates = shutil.copytree(tiny_hub_modules.encoder, tmp_path / "no_rates")
    (no_rates / "keras_metadata.pb").unlink()
    with caplog.at_level(logging.INFO, logger="absl"):
        for handle, reason in ((not_bert, "cannot read a BERT config"),
                               (str(no_rates), "no dropout rates")):
            classifier = model_lib.build_classifier_for(config, handle)
            assert isinstance(classifier.get_layer("encoder"), hub.KerasLayer), handle
            assert reason in caplog.text
            assert classifier(encoder_inputs(), training=False).shape == (2, 1)
    set_policy("mixed_bfloat16")  # the module as saved cannot compute in it: rebuilt or an error
    with pytest.raises(ValueError, match="cannot read a BERT config"):
        model_lib.build_classifier_for(config, not_bert)
    classifier = model_lib.build_classifier_for(config, str(no_rates))
    assert not any(isinstance(layer, hub.KerasLayer) for layer in classifier.layers)


def test_a_rebuild_that_fails_names_the_flag_that_needs_it(tiny_hub_modules, tmp_path,
                                                           set_policy):
    not_bert = not_a_bert_encoder_module(tmp_path / "not_bert")
    args = tiny_train_args(tiny_hub_modules, "/tmp/unused", "")
    partly = train_config(*args, "--trainable_encoder_layers=1").model
    with pytest.raises(model_lib.EncoderRebuildError, match=r"cannot read a BERT config.*; "
                       r"--trainable_encoder_layers=1 trains only its top layers.*pass "
                       r"--trainable_encoder_layers=-1 \(all of it\) or 0"):
        model_lib.build_classifier_for(partly, not_bert)
    set_policy("mixed_bfloat16")
    with pytest.raises(ValueError, match=r"; --mixed_precision=mixed_bfloat16 computes it in "
                       r"that policy.*--norebuild_encoder_under_policy") as raised:
        model_lib.build_classifier_for(train_config(*args).model, not_bert)
    assert "--trainable_encoder_layers" not in str(raised.value)


def test_config_cannot_be_read_off_a_module_that_is_not_a_bert_encoder():
    variables = [tf.Variable(tf.zeros([3, 4]), name="dense/kernel")]
    with pytest.raises(ValueError, match="no variable.*word_embeddings/embeddings"):
        hub_modules.bert_config_from_variables(variables, source="m")


def test_exported_encoder_module_is_float32_under_a_mixed_policy(
        tiny_vocab_file, tiny_bert_config_file, tmp_path, set_policy):
    set_policy("mixed_bfloat16")
    hub_modules.export_encoder(str(tmp_path / "encoder"),
                               bert_config=hub_modules.read_bert_config(tiny_bert_config_file),
                               vocab_file=tiny_vocab_file)
    assert tf_keras.mixed_precision.global_policy().name == "mixed_bfloat16"  # restored
    set_policy("float32")
    assert computed_dtypes(hub.KerasLayer(str(tmp_path / "encoder"))) == {"float32"}


# ---------------------------------------------------------------------------------------------
# Training runs
# ---------------------------------------------------------------------------------------------

def _saved_dtypes(saved_model_dir) -> set:
    proto = saved_model_pb2.SavedModel()
    with open(f"{saved_model_dir}/saved_model.pb", "rb") as f:
        proto.ParseFromString(f.read())
    return {tf.dtypes.as_dtype(node.attr["T"].type).name
            for meta_graph in proto.meta_graphs
            for function in meta_graph.graph_def.library.function
            for node in function.node_def if node.op in _MATMULS}


def test_bfloat16_run_trains_and_exports_in_float32(tiny_hub_modules, tiny_data, tmp_path,
                                                    set_policy, caplog):
    from bert_tf2 import train
    config = train_config(
        *tiny_train_args(tiny_hub_modules, tmp_path / "model", tmp_path / "export"),
        *tiny_data, "--mixed_precision=mixed_bfloat16", "--epochs=4", "--train_steps=0",
        "--learning_rate=5e-3", "--warmup_fraction=0", "--eval_batch_size=32",
        *FIXED_SHAPE_ARGS)
    # The absl logger's own level (set by absl's --verbosity, which other tests change) decides
    # what reaches caplog: set it explicitly.
    with caplog.at_level(logging.INFO, logger="absl"):
        result = train.run(config)
    assert "the encoder computes in bfloat16 (rebuilt under mixed_bfloat16)" in caplog.text
    trained, metrics = result.classifier, result.metrics
    encoder = next(layer for layer in trained.layers if isinstance(layer, tf_keras.Model))
    assert computed_dtypes(encoder) == {"bfloat16"}
    assert trained.get_layer("classifier").compute_dtype == "float32"
    assert trained.output.dtype == tf.float32
    # The loss falls epoch after epoch, and every number is finite.
    history = (tmp_path / "model" / "history.csv").read_text().splitlines()
    header = history[0].split(",")
    losses = [float(row.split(",")[header.index("loss")]) for row in history[1:]]
    assert len(losses) == 4 and all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0] - 0.01, losses
    assert all(np.isfinite(v) for split in metrics.values() for v in split.values())
    # The export is a float32 copy: no bfloat16 matmul in the SavedModel; it serves.
    assert _saved_dtypes(tmp_path / "export" / "1") == {"float32"}
    served = tf.saved_model.load(str(tmp_path / "export" / "1")).signatures["serving_default"](
        text=tf.constant(["很好", "很差"]))
    assert served["probability"].dtype == tf.float32
    # The classifier checkpoint still converts back to an encoder module (--init_checkpoint).
    fresh = hub_modules.build_encoder(hub_modules.bert_config_from_variables(encoder.variables))
    plan = checkpoints.load_encoder_weights(fresh.network, str(tmp_path / "model"))
    assert plan.kind == checkpoints.BERT_TF2_CLASSIFIER
    np.testing.assert_array_equal(
        fresh.network.get_layer("word_embeddings").embeddings.numpy(),
        encoder.network.get_layer("word_embeddings").embeddings.numpy())


def test_mixed_float16_trains_with_dynamic_loss_scaling(tiny_hub_modules, tiny_data, tmp_path,
                                                        set_policy):
    from bert_tf2 import train
    config = train_config(
        *tiny_train_args(tiny_hub_modules, tmp_path / "model", ""), *tiny_data,
        "--mixed_precision=mixed_float16", "--train_steps=3", "--eval_batch_size=32",
        *FIXED_SHAPE_ARGS)
    result = train.run(config)
    metrics, optimizer = result.metrics, result.classifier.optimizer
    assert isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
    assert optimizer.dynamic
    assert int(optimizer.iterations.numpy()) == 3
    assert all(np.isfinite(split["loss"]) for split in metrics.values())


def test_without_rebuilding_the_hub_encoder_stays_float32_and_says_so(tiny_hub_modules,
                                                                      set_policy, caplog):
    config = train_config(
        *tiny_train_args(tiny_hub_modules, "/tmp/unused", ""),
        "--mixed_precision=mixed_bfloat16", "--norebuild_encoder_under_policy")
    assert not config.model.rebuild_encoder
    set_policy("mixed_bfloat16")
    with caplog.at_level(logging.WARNING):
        classifier = model_lib.build_classifier_for(config.model,
                                                    config.modules.encoder_handle)
    assert isinstance(classifier.get_layer("encoder"), hub.KerasLayer)
    assert "the encoder computes in float32" in caplog.text


def test_slow_policies_for_the_hardware_are_warned_about(caplog):
    strategy = tf.distribute.get_strategy()
    with caplog.at_level(logging.WARNING):
        distribution.check_precision_policy("mixed_float16", strategy)
    if not tf.config.list_physical_devices("GPU"):
        assert "mixed_float16 without a GPU" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        distribution.check_precision_policy("mixed_bfloat16", strategy)
    assert ("bfloat16 units" in caplog.text) != distribution.cpu_has_bfloat16()
