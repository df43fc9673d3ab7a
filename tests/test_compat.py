"""Each private TensorFlow / tf_keras / Beam name of bert_tf2.compat, against the installed
versions: the name is there and does what the project relies on it for. A failure here after
an upgrade names the function of compat.py to rewrite (its comment says what would replace it).
"""

import inspect
import os
import sys

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from bert_tf2 import compat

STEPS_PER_EPOCH = 4


def _tiny_model(**compile_kwargs) -> tf_keras.Model:
    model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(2,))])
    model.compile("sgd", "mse", **compile_kwargs)
    return model


def _fit_data():
    return np.ones((2 * STEPS_PER_EPOCH, 2), "float32"), np.ones((2 * STEPS_PER_EPOCH, 1))


class _Killed(Exception):
    pass


def test_always_call_train_batch_hooks_makes_keras_call_them_per_batch(tmp_path):
    calls = []

    @compat.always_call_train_batch_hooks
    class EpochBackup(tf_keras.callbacks.BackupAndRestore):
        def on_train_batch_end(self, batch, logs=None):
            calls.append(batch)

    assert not tf_keras.callbacks.BackupAndRestore(
        str(tmp_path / "a"), save_freq="epoch")._implements_train_batch_hooks()
    x, y = _fit_data()
    _tiny_model().fit(x, y, batch_size=2, epochs=2, verbose=0,
                      callbacks=[EpochBackup(str(tmp_path / "b"), save_freq="epoch")])
    assert calls == list(range(STEPS_PER_EPOCH)) * 2


def test_a_backup_written_mid_epoch_is_resumed_after_the_recorded_batch(tmp_path):
    """What crash_safety.Backup relies on: write_backup after record_backed_up_batch makes
    the next `fit` start right after that batch, with the weights and step of then."""
    backup_dir = str(tmp_path / "backup")
    seen = {}

    class KilledMidEpoch(tf_keras.callbacks.BackupAndRestore):
        def on_train_batch_end(self, batch, logs=None):
            compat.record_backed_up_batch(self, batch)
            compat.back_up_if_preempted(self)  # no handler: a no-op
            if compat.current_epoch(self) == 1 and batch == 1:
                seen["directory"] = compat.backup_write_directory(self)
                assert isinstance(compat.backup_write_manager(self), tf.train.CheckpointManager)
                compat.write_backup(self, compat.current_epoch(self))
                raise _Killed()

    x, y = _fit_data()
    with pytest.raises(_Killed):
        _tiny_model().fit(x, y, batch_size=2, epochs=3, verbose=0,
                          callbacks=[KilledMidEpoch(backup_dir, save_freq=100,
                                                    delete_checkpoint=False)])
    assert seen["directory"] == os.path.join(backup_dir, "chief")  # the chief writes there
    resumed, batches = _tiny_model(), []
    counter = tf_keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: batches.append(batch))
    resumed.fit(x, y, batch_size=2, epochs=3, verbose=0,
                callbacks=[tf_keras.callbacks.BackupAndRestore(backup_dir, save_freq=100),
                           counter])
    assert batches == [2, 3] + list(range(STEPS_PER_EPOCH))  # epoch 2 from batch 2, epoch 3
    assert int(resumed.optimizer.iterations.numpy()) == 3 * STEPS_PER_EPOCH


def test_the_preemption_handler_hooks_are_where_let_handler_drive_backups_sets_them():
    # A PreemptionCheckpointHandler needs a cluster (tests/test_resilience.py runs one): here
    # the names are checked where TensorFlow and tf_keras read them.
    handler_source = inspect.getsource(tf.distribute.experimental.PreemptionCheckpointHandler)
    assert "self._run_counter" in handler_source
    assert "self._received_checkpoint_step" in handler_source
    from tf_keras.src.distribute import worker_training_state
    state_source = inspect.getsource(worker_training_state.WorkerTrainingState)
    assert "self._enable_save_before_preemption" in state_source
    assert "self.preemption_handler" in state_source
    assert "def backup_if_preempted" in state_source
    from tf_keras.src.distribute import distributed_training_utils
    assert 'getattr(model, "_preemption_handler"' in inspect.getsource(distributed_training_utils)


def test_remove_temp_backup_directory_keeps_the_chiefs(tmp_path):
    compat.remove_temp_backup_directory(str(tmp_path), tf.distribute.get_strategy())
    assert tmp_path.is_dir()


def test_mask_for_metrics_leaves_masked_rows_out_of_compiled_metrics():
    model = _tiny_model(metrics=["binary_accuracy"])
    model.build((None, 2))
    y = tf.constant([[1.0], [1.0], [0.0], [0.0]])
    y_pred = tf.constant([[0.9], [0.9], [0.9], [0.9]])
    assert model.compute_metrics(None, y, y_pred, None)["binary_accuracy"] == 0.5
    model.reset_metrics()
    masked = tf.identity(y_pred)
    compat.mask_for_metrics(masked, tf.constant([True, True, False, False]))
    assert model.compute_metrics(None, y, masked, None)["binary_accuracy"] == 1.0


def test_steps_per_execution_variable_is_compiles_setting():
    assert compat.steps_per_execution_variable(tf_keras.Sequential()) is None
    variable = compat.steps_per_execution_variable(_tiny_model(steps_per_execution=3))
    assert int(variable.numpy()) == 3


def test_replace_layer_call_changes_what_a_built_functional_model_computes():
    inputs = tf_keras.Input((3, 4))
    layer = tf_keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 2),
                                        bias_axes="d")
    model = tf_keras.Model(inputs, layer(inputs))
    assert {"equation", "kernel", "bias", "activation"} <= set(dir(layer))
    compat.replace_layer_call(layer, lambda x: tf.zeros_like(x[..., :2]) + 7.0)
    np.testing.assert_array_equal(model(np.ones((1, 3, 4), "float32")), np.full((1, 3, 2), 7))


def test_write_saved_model_fingerprint_matches_a_rewritten_saved_model_pb(tmp_path):
    module = tf.Module()
    module.v = tf.Variable(1.0)
    module.f = tf.function(lambda: module.v * 2, input_signature=[])
    tf.saved_model.save(module, str(tmp_path), signatures=module.f)
    before = tf.saved_model.experimental.read_fingerprint(str(tmp_path)).saved_model_checksum
    from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((tmp_path / "saved_model.pb").read_bytes())
    proto.meta_graphs[0].signature_def["serving_default"].method_name = "elsewhere"
    (tmp_path / "saved_model.pb").write_bytes(proto.SerializeToString(deterministic=True))
    compat.write_saved_model_fingerprint(str(tmp_path))
    after = tf.saved_model.experimental.read_fingerprint(str(tmp_path)).saved_model_checksum
    assert after != before


def _tiny_tflite() -> bytes:
    function = tf.function(lambda x: x + 1.0,
                           input_signature=[tf.TensorSpec([1], tf.float32)])
    return tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()]).convert()


def test_set_tflite_custom_op_registerers_is_what_calibration_reads():
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [tf.function(lambda x: x, input_signature=[tf.TensorSpec([1])]).get_concrete_function()])
    compat.set_tflite_custom_op_registerers(converter, ("Registerer",))
    # pylint: disable-next=protected-access
    assert converter.target_spec._experimental_custom_op_registerers == ["Registerer"]
    from tensorflow.lite.python import lite as lite_converter  # pylint: disable=g-import-not-at-top
    assert ("self.target_spec._experimental_custom_op_registerers"
            in inspect.getsource(lite_converter))


def test_tflite_schema_and_flatbuffer_utils_round_trip_a_metadata_entry():
    schema, flatbuffer_utils = compat.tflite_schema(), compat.tflite_flatbuffer_utils()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(_tiny_tflite()))
    buffer = schema.BufferT()
    buffer.data = list(b"{}")
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = "compat_test", len(model.buffers) - 1
    model.metadata = list(model.metadata or []) + [entry]
    read = schema.Model.GetRootAsModel(
        bytes(flatbuffer_utils.convert_object_to_bytearray(model)), 0)
    entries = {read.Metadata(i).Name().decode(): read.Metadata(i).Buffer()
               for i in range(read.MetadataLength())}
    assert read.Buffers(entries["compat_test"]).DataAsNumpy().tobytes() == b"{}"


def test_saved_model_cli_main_shows_a_saved_model(tmp_path, monkeypatch, capsys):
    module = tf.Module()
    module.f = tf.function(lambda: tf.constant(1.0), input_signature=[])
    tf.saved_model.save(module, str(tmp_path), signatures=module.f)
    monkeypatch.setattr(sys, "argv", ["saved_model_cli", "show", "--dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:  # it ends through absl's app.run
        compat.saved_model_cli_main()
    assert not exit_info.value.code
    assert "'serve'" in capsys.readouterr().out


def test_parse_pipeline_options_splits_beams_options_from_the_rest():
    known, unknown = compat.parse_pipeline_options(
        ["--runner=DirectRunner", "--direct_num_workers=2", "--bogus=1", "--runne=x"])
    assert known.runner == "DirectRunner" and known.direct_num_workers == 2
    assert unknown == ["--bogus=1", "--runne=x"]  # no abbreviations


@pytest.mark.slow
def test_compat_imports_no_tensorflow_or_beam():
    code = ("import sys; import bert_tf2.compat; "
            "print(sorted(m for m in ('tensorflow', 'tf_keras', 'apache_beam') "
            "if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    import subprocess  # pylint: disable=g-import-not-at-top
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"
