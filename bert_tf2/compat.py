"""Every private TensorFlow, tf_keras and Apache Beam name the project relies on, in one place.

Each is reached through a function or constant here named for what it does, with a comment
saying what public API would replace it if one appears. tests/test_compat.py checks each one
against the installed versions (that the name is there and does what it is relied on for), so
an upgrade that moves or renames one fails a test instead of, say, resuming a run quietly
wrong.

Imports TensorFlow, tf_keras and Beam only inside the functions that need them: importing this
module costs nothing.
"""

from typing import List, Sequence, Tuple

# What this module is for: every protected access of TensorFlow, tf_keras and Beam is here.
# pylint: disable=protected-access


# ---------------------------------------------------------------------------------------------
# tf_keras' BackupAndRestore (bert_tf2.crash_safety.Backup)
# ---------------------------------------------------------------------------------------------
# tf_keras exposes no public way to back up at a step of one's choosing, to record which batch
# a backup follows, or to have TensorFlow's PreemptionCheckpointHandler drive the backups
# outside GCP. A public `BackupAndRestore.backup(epoch, batch)` and a `preemption_handler`
# argument would replace all of these.

def always_call_train_batch_hooks(callback_class):
    """Class decorator: Keras calls the callback's on_train_batch_* after every call into the
    train function, whatever the callback's save_freq (BackupAndRestore's own
    `_implements_train_batch_hooks` says no for save_freq='epoch')."""
    callback_class._implements_train_batch_hooks = lambda self: True
    return callback_class


def backup_state(callback):
    """The WorkerTrainingState of a BackupAndRestore callback (set by on_train_begin)."""
    return callback._training_state


def record_backed_up_batch(callback, batch: int) -> None:
    """Makes the next backup record `batch` as the last one run (what `fit` resumes after)."""
    backup_state(callback)._ckpt_saved_batch.assign(batch)


def current_epoch(callback) -> int:
    """The epoch BackupAndRestore is in (it records it in on_epoch_begin)."""
    return callback._current_epoch


def write_backup(callback, epoch: int) -> None:
    """Writes a BackupAndRestore backup of the training state now, as of `epoch`."""
    callback._backup(epoch=epoch)


def backup_write_manager(callback):
    """The tf.train.CheckpointManager this worker writes its backups with."""
    return backup_state(callback).write_checkpoint_manager


def backup_write_directory(callback) -> str:
    """The directory this worker writes its backups to (a non-chief's is a temporary copy)."""
    return backup_write_manager(callback).directory


def remove_temp_backup_directory(directory: str, strategy) -> None:
    """Removes a non-chief worker's temporary backup copy (a no-op on the chief)."""
    # Public replacement: none (tf_keras.src is tf_keras' implementation package).
    # pylint: disable-next=g-import-not-at-top
    from tf_keras.src.distribute import distributed_file_utils
    distributed_file_utils.remove_temp_dirpath(directory, strategy)


def handler_watches_preemption(handler) -> bool:
    """Whether a tf.distribute.experimental.PreemptionCheckpointHandler is watching for a
    preemption signal (on a CPU VM of GCP it declines to, and has no step to save at)."""
    # Public replacement: a property of PreemptionCheckpointHandler saying it is active.
    return hasattr(handler, "_received_checkpoint_step")


def let_handler_drive_backups(callback, handler) -> None:
    """Has `handler` (a PreemptionCheckpointHandler over the callback's write checkpoint
    manager) back up the BackupAndRestore `callback`'s training state when a worker is
    preempted, and `fit` resume mid-epoch from that backup.

    Keras does this itself only on GCP. The handler counts the steps it is told of from 0 on
    every worker alike (the backup is already restored; what each worker restored may differ).
    """
    state = backup_state(callback)
    handler._run_counter = 0
    # `fit` runs each step inside the handler's watch_preemption_scope through this attribute.
    state.preemption_handler = callback.model._preemption_handler = handler
    state._enable_save_before_preemption = True


def back_up_if_preempted(callback) -> None:
    """Lets the preemption handler back up (and end the run) if a worker was preempted."""
    backup_state(callback).backup_if_preempted()


# ---------------------------------------------------------------------------------------------
# tf_keras models and layers
# ---------------------------------------------------------------------------------------------

def mask_for_metrics(y_pred, mask) -> None:
    """Makes compiled metrics (`Model.compute_metrics`) count only the rows where `mask` is
    True: Keras' metrics container reads a prediction's Keras mask."""
    # Public replacement: a `sample_weight`-like `mask` argument of compute_metrics.
    y_pred._keras_mask = mask


def steps_per_execution_variable(model):
    """The tf.Variable holding compile's steps_per_execution (None before compile)."""
    # Public replacement: a settable `Model.steps_per_execution`.
    return getattr(model, "_steps_per_execution", None)


def replace_layer_call(layer, call) -> None:
    """Makes `layer` compute `call(inputs)` instead of its class's `call`, its variables and
    everything else unchanged: Keras' `__call__` looks `call` up on the instance."""
    # Public replacement: none (a subclass of the layer would be one, at the cost of its
    # config and SavedModel class names).
    layer.call = call


# ---------------------------------------------------------------------------------------------
# TensorFlow SavedModel and TFLite
# ---------------------------------------------------------------------------------------------

def write_saved_model_fingerprint(saved_model_dir: str) -> None:
    """Writes saved_model_dir/fingerprint.pb anew, from the saved_model.pb there."""
    # Public replacement: a writer beside tf.saved_model.experimental.read_fingerprint.
    # pylint: disable-next=g-import-not-at-top
    from tensorflow.python.saved_model import fingerprinting_utils
    fingerprinting_utils.write_fingerprint(saved_model_dir)


def set_tflite_custom_op_registerers(converter, registerers: Sequence[object]) -> None:
    """Registers custom ops (e.g. TF Text's) in the interpreter that a TFLiteConverter runs
    the model in to calibrate int8 quantization."""
    # Public replacement: a public TargetSpec field (the name says it is experimental).
    converter.target_spec._experimental_custom_op_registerers = list(registerers)


def tflite_schema():
    """The Python bindings of the TFLite flatbuffer schema (Model, BufferT, MetadataT...)."""
    # Public replacement: the `tflite` package of the same schema, not a TensorFlow dependency.
    from tensorflow.lite.python import schema_py_generated  # pylint: disable=g-import-not-at-top
    return schema_py_generated


def tflite_flatbuffer_utils():
    """TensorFlow's reader and writer of a TFLite flatbuffer as mutable objects."""
    # Public replacement: none in TensorFlow's API.
    from tensorflow.lite.tools import flatbuffer_utils  # pylint: disable=g-import-not-at-top
    return flatbuffer_utils


def saved_model_cli_main():
    """TensorFlow's `saved_model_cli` entry point (it parses sys.argv)."""
    # Public replacement: the installed `saved_model_cli` script, which cannot register the
    # TF Text ops first.
    from tensorflow.python.tools import saved_model_cli  # pylint: disable=g-import-not-at-top
    return saved_model_cli.main()


# ---------------------------------------------------------------------------------------------
# Apache Beam
# ---------------------------------------------------------------------------------------------

def parse_pipeline_options(args: Sequence[str]) -> Tuple[object, List[str]]:
    """(the Beam pipeline options in `args` as an argparse namespace, the arguments that are
    none of them), parsed as Beam's PipelineOptions.get_all_options parses them."""
    # Public replacement: PipelineOptions.get_all_options returning the unknown options (it
    # logs and drops them, or keeps them without saying which they are).
    from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
    parser = pipeline_options._BeamArgumentParser(allow_abbrev=False)
    for options_class in {str(c): c for c in
                          pipeline_options.PipelineOptions.__subclasses__()}.values():
        options_class._add_argparse_args(parser)
    known, unknown = parser.parse_known_args(list(args))
    return known, unknown
