"""Fine-tunes a BERT sentiment classifier, evaluates it and exports it for TF Serving.

  python -m bert_tf2.train --flagfile=configs/quickstart.flags --model_dir=M --export_dir=E

Read top to bottom, `run` is the whole job: strategy -> (modules) -> data -> model -> fit ->
evaluate -> export. Everything a run leaves behind is under --model_dir (checkpoints,
TensorBoard logs, history.csv, metrics.json) and --export_dir (SavedModel versions).

A run killed at any point and started again with the same command resumes from its last
backup (model, optimizer, step and data position) instead of starting over; see
docs/crash_safety.md.
"""

import functools
import json
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, Optional

import bert_tf2  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from absl import app, flags, logging
import tensorflow as tf
import tf_keras
from official.nlp import optimization

from bert_tf2 import data
from bert_tf2 import distribution
from bert_tf2 import export
from bert_tf2 import flags as project_flags
from bert_tf2 import hub_modules
from bert_tf2 import model as model_lib
from bert_tf2 import plots
from bert_tf2 import pretrain as pretrain_lib

FLAGS = flags.FLAGS
# A positive and a negative review from each kind the built-in corpus holds (hotels,
# electronics, books), printed with their P(positive) at the end of a run.
EXAMPLE_REVIEWS = ("房间很干净，服务很周到，下次还会再来。",
                   "房间又小又脏，服务态度很差，再也不会来了。",
                   "屏幕很清晰，运行速度快，性价比很高，非常满意。",
                   "电池不耐用，做工粗糙，客服也不理人，后悔买了。",
                   "这本书写得太好了，强烈推荐，值得一读！",
                   "书的内容很空洞，纸张也差，不值这个价。")


def run(flags_) -> Dict[str, Dict[str, float]]:
    """Runs the whole job described by the parsed flags and returns the metrics it wrote."""
    strategy = distribution.get_strategy(flags_.distribution_strategy,
                                         num_gpus=flags_.num_gpus, tpu=flags_.tpu)
    tf_keras.utils.set_random_seed(flags_.seed)
    tf_keras.mixed_precision.set_global_policy(flags_.mixed_precision)
    logging.info("Strategy %s with %d replica(s) (%s); dtype policy %s",
                 flags_.distribution_strategy, strategy.num_replicas_in_sync,
                 type(strategy).__name__, flags_.mixed_precision)
    distribution.check_precision_policy(flags_.mixed_precision, strategy)
    # --batch_size and --eval_batch_size are global: each replica gets an equal share.
    for flag in ("batch_size", "eval_batch_size"):
        distribution.per_replica_batch_size(getattr(flags_, flag), strategy.num_replicas_in_sync,
                                            f"--{flag}")
    model_dir = distribution.writable_dir(flags_.model_dir)
    _check_writable_dir(model_dir, "--model_dir")
    if flags_.export_dir and distribution.is_chief():
        _check_writable_dir(flags_.export_dir, "--export_dir")
    splits = data.load_splits(flags_.train_data, flags_.eval_data, flags_.test_data,
                              seed=flags_.seed, **data.reader_options(flags_))
    if flags_.build_missing_modules:
        _build_missing_modules(flags_, splits["train"].texts, model_dir)
    preprocessor = model_lib.load_preprocessor(flags_.preprocess_handle)

    steps_per_epoch = len(splits["train"]) // flags_.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"--batch_size={flags_.batch_size} is larger than the "
                         f"{len(splits['train'])} training examples")
    total_steps = steps_per_epoch * flags_.epochs
    if flags_.train_steps:
        total_steps = min(total_steps, flags_.train_steps)
    epochs = math.ceil(total_steps / steps_per_epoch)
    logging.info("Training for %d optimizer steps (%d per epoch)", total_steps, steps_per_epoch)

    classifier = compile_classifier(flags_, strategy, total_steps)
    _check_free_space(classifier.count_params(), model_dir,
                      flags_.export_dir if distribution.is_chief() else None)
    # Every worker restores the chief's backup (Keras writes only the chief's copy there).
    backup_dir = os.path.join(flags_.model_dir, "backup")
    resume_step = _backed_up_step(backup_dir) or 0
    if resume_step >= total_steps:  # backups stop short of the last step
        raise ValueError(f"the backup in {backup_dir} is of step {resume_step}, but this run "
                         f"has only {total_steps} steps: raise --train_steps/--epochs, or "
                         "delete the backup to start over")
    if resume_step:
        logging.info("Resuming from step %d (epoch %d) with the backup in %s", resume_step,
                     resume_step // steps_per_epoch + 1, backup_dir)

    dataset_fn = functools.partial(distributed_dataset, flags_, strategy, preprocessor)
    dev = splits.get("dev")
    classifier.fit(
        dataset_fn(splits["train"], flags_.batch_size, training=True, skip_steps=resume_step),
        epochs=epochs, steps_per_epoch=steps_per_epoch,
        validation_data=dataset_fn(dev, flags_.eval_batch_size, False) if dev else None,
        callbacks=[
            _StopOnNonFiniteLoss(backup_dir),  # first: a NaN step never reaches the backup
            tf_keras.callbacks.TensorBoard(os.path.join(model_dir, "logs")),
            tf_keras.callbacks.CSVLogger(os.path.join(model_dir, "history.csv"), append=True),
            _StopAtStep(total_steps),
            # Last: an epoch is backed up only once it is logged, and not at the last step.
            _Backup(backup_dir, checkpoint_steps=flags_.checkpoint_steps),
        ],
        verbose=2)
    logging.info("Finished after %d optimizer steps", int(classifier.optimizer.iterations.numpy()))
    classifier.save_weights(os.path.join(model_dir, "checkpoints", "final"))
    plots.plot_training_curves(os.path.join(model_dir, "history.csv"),
                               os.path.join(model_dir, "training_curves.png"))

    metrics = {name: classifier.evaluate(dataset_fn(splits[name], flags_.eval_batch_size,
                                                    training=False),
                                         return_dict=True, verbose=0)
               for name in ("dev", "test") if name in splits}
    metrics = {split: {k: float(v) for k, v in values.items()}
               for split, values in metrics.items()}
    with open(os.path.join(model_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
    logging.info("Metrics: %s", json.dumps(metrics, sort_keys=True))

    text_classifier = model_lib.build_text_classifier(preprocessor,
                                                      _export_copy(flags_, classifier),
                                                      seq_length=flags_.seq_length)
    if flags_.export_dir and distribution.is_chief():
        path = export.export_text_classifier(text_classifier, flags_.export_dir,
                                             keep=flags_.keep_exports)
        logging.info("Exported SavedModel to %s", path)
    if distribution.is_chief():  # kept until now, so a run killed in evaluation or export
        shutil.rmtree(backup_dir, ignore_errors=True)  # resumes rather than starting over
    probabilities = text_classifier(tf.constant(EXAMPLE_REVIEWS), training=False)
    for review, probability in zip(EXAMPLE_REVIEWS, probabilities.numpy()[:, 0]):
        print(f"P(positive)={probability:.3f}  {review}")
    return metrics


def compile_classifier(flags_, strategy: tf.distribute.Strategy,
                       total_steps: int) -> tf_keras.Model:
    """The classifier, built and compiled in `strategy`'s scope under the global dtype policy.

    AdamW with warmup and decay over `total_steps` (wrapped for dynamic loss scaling under
    mixed_float16), binary cross-entropy, accuracy and AUC, and --jit_compile and
    --steps_per_execution. The training benchmark compiles its cases through here too.
    """
    with strategy.scope():
        classifier = _build_classifier(flags_)
        optimizer = _create_optimizer(flags_, total_steps)
        if flags_.mixed_precision == "mixed_float16":  # float16 needs loss scaling
            optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer, dynamic=True)
        classifier.compile(optimizer=optimizer,
                           loss=tf_keras.losses.BinaryCrossentropy(),
                           metrics=[tf_keras.metrics.BinaryAccuracy(name="accuracy"),
                                    tf_keras.metrics.AUC(name="auc")],
                           jit_compile=flags_.jit_compile,
                           steps_per_execution=flags_.steps_per_execution)
    return classifier


def distributed_dataset(flags_, strategy: tf.distribute.Strategy, preprocessor,
                        examples: data.Examples, batch_size: int, training: bool,
                        skip_steps: int = 0) -> tf.distribute.DistributedDataset:
    """`examples` as `strategy`'s dataset: each input pipeline makes its replicas' batches.

    `batch_size` is global (`data.make_dataset` gets the per-replica share). `skip_steps`
    optimizer steps' worth of batches are skipped, for a resumed run.
    """
    def fn(input_context):
        return data.make_dataset(
            examples, batch_size=input_context.get_per_replica_batch_size(batch_size),
            preprocessor=preprocessor, seq_length=flags_.seq_length, training=training,
            seed=flags_.seed, dynamic_padding=flags_.dynamic_padding,
            bucket_by_length=flags_.bucket_by_length,
            # XLA compiles a program per shape: pad to the bucket boundaries, few shapes.
            pad_to_bucket_boundary=flags_.jit_compile,
            input_context=input_context,
            # A step takes one batch per replica; this pipeline feeds its share of them.
            skip_batches=skip_steps * strategy.num_replicas_in_sync
            // input_context.num_input_pipelines)
    return strategy.distribute_datasets_from_function(fn)


def _rebuilds_encoder(flags_) -> bool:
    """Whether the classifier's encoder is rebuilt as a BertEncoder under the dtype policy."""
    return flags_.mixed_precision != "float32" and flags_.rebuild_encoder_under_policy


def _build_classifier(flags_, *, load_encoder_weights: bool = True) -> tf_keras.Model:
    """The classifier under the global dtype policy; logs in which dtype the encoder computes.

    A hub encoder is a SavedModel, which computes in the dtypes it was saved with (float32)
    whatever the policy; under a mixed policy --rebuild_encoder_under_policy rebuilds it as a
    BertEncoder that computes in the policy (see `model_lib.rebuild_encoder`).
    """
    policy = tf_keras.mixed_precision.global_policy()
    encoder = None
    if _rebuilds_encoder(flags_):
        encoder = model_lib.rebuild_encoder(flags_.encoder_handle,
                                            load_weights=load_encoder_weights)
        if policy.compute_dtype != "float32":
            logging.info("Mixed precision: the encoder computes in %s (rebuilt under %s); the "
                         "head and the loss in float32", policy.compute_dtype, policy.name)
    elif policy.compute_dtype != "float32":
        logging.warning("Mixed precision: the encoder computes in float32 (the hub module as "
                        "saved, --norebuild_encoder_under_policy), and so does the head: %s "
                        "changes nothing", policy.name)
    return model_lib.build_classifier(flags_.encoder_handle, dropout_rate=flags_.dropout,
                                      encoder=encoder)


def _export_copy(flags_, classifier: tf_keras.Model) -> tf_keras.Model:
    """`classifier`, or a plain float32 copy of it, for the export.

    The export computes in float32 whatever the training policy: float16 and bfloat16 are slow
    or emulated on many serving machines, and float32 gives the same numbers everywhere. And it
    holds plain variables, made outside the strategy: saving a strategy's distributed variables
    reads the sync-on-read ones collectively, which would wait forever for the workers of a
    multi-worker cluster that do not export.
    """
    if not _rebuilds_encoder(flags_) and flags_.distribution_strategy == "one_device":
        return classifier
    with distribution.dtype_policy("float32"):
        copy = _build_classifier(flags_, load_encoder_weights=False)
    copy.set_weights(classifier.get_weights())
    logging.info("Exporting a float32 copy of the classifier trained under %s with %s",
                 flags_.mixed_precision, flags_.distribution_strategy)
    return copy


def _build_missing_modules(flags_, train_texts, model_dir: str) -> None:
    """Builds the hub modules at the local handle paths if they are not there yet.

    With --pretrain_epochs the new encoder is first pretrained with masked LM on the training
    texts (never the dev or test texts).
    """
    preprocess, encoder = flags_.preprocess_handle, flags_.encoder_handle
    output_dir = os.path.dirname(os.path.abspath(encoder))
    expected = hub_modules.HubModules(os.path.join(output_dir, "preprocess"),
                                      os.path.join(output_dir, "encoder"))
    if (os.path.abspath(preprocess), os.path.abspath(encoder)) != (expected.preprocess,
                                                                   expected.encoder):
        raise ValueError("--build_missing_modules needs --preprocess_handle=D/preprocess and "
                         "--encoder_handle=D/encoder in one directory D")
    if os.path.exists(expected.preprocess) and os.path.exists(expected.encoder):
        logging.info("Using the existing hub modules in %s", output_dir)
        return
    if os.path.exists(expected.preprocess) or os.path.exists(expected.encoder):
        raise ValueError(f"{output_dir} holds only one of preprocess/ and encoder/; remove it "
                         "to rebuild both")
    def pretrain(preprocess_path, bert_config):
        return pretrain_lib.pretrain_encoder(
            bert_config, model_lib.load_preprocessor(preprocess_path), train_texts,
            output_prefix=os.path.join(model_dir, "pretrain", "encoder"),
            epochs=flags_.pretrain_epochs, batch_size=flags_.pretrain_batch_size,
            seq_length=flags_.seq_length, learning_rate=flags_.pretrain_learning_rate,
            seed=flags_.seed)

    hub_modules.build_hub_modules(output_dir, vocab_file=flags_.vocab_file,
                                  bert_config_file=flags_.bert_config_file,
                                  init_checkpoint=flags_.init_checkpoint,
                                  normalization=flags_.normalization,
                                  seq_length=flags_.seq_length,
                                  pretrain=pretrain if flags_.pretrain_epochs else None)


def _create_optimizer(flags_, total_steps: int):
    """AdamW with linear warmup then linear decay to 0 (BERT's recipe, from Model Garden)."""
    schedule = tf_keras.optimizers.schedules.PolynomialDecay(
        initial_learning_rate=flags_.learning_rate, decay_steps=total_steps,
        end_learning_rate=0.0)
    warmup_steps = int(total_steps * flags_.warmup_fraction)
    if warmup_steps:
        schedule = optimization.WarmUp(initial_learning_rate=flags_.learning_rate,
                                       decay_schedule_fn=schedule, warmup_steps=warmup_steps)
    return optimization.AdamWeightDecay(
        learning_rate=schedule, weight_decay_rate=flags_.weight_decay, epsilon=1e-6,
        exclude_from_weight_decay=["LayerNorm", "layer_norm", "bias"])


class _StopAtStep(tf_keras.callbacks.Callback):
    """Stops `fit` once the optimizer has taken `total_steps` steps (the --train_steps cap)."""

    def __init__(self, total_steps: int):
        super().__init__()
        self.total_steps = total_steps

    def on_train_batch_end(self, batch, logs=None):
        del batch, logs
        if int(self.model.optimizer.iterations.numpy()) >= self.total_steps:
            self.model.stop_training = True


# ---------------------------------------------------------------------------------------------
# Crash safety: output checks before training, backups, resume and the NaN guard
# (docs/crash_safety.md)
# ---------------------------------------------------------------------------------------------

class OutputDirError(RuntimeError):
    """--model_dir or --export_dir cannot take the run's output; found before training starts."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step."""


# Space for TensorBoard logs, history, plots and the vocab, on top of the weights.
_FREE_SPACE_SLACK_BYTES = 64 << 20


def _check_writable_dir(path: str, flag: str) -> None:
    """Creates `path` if needed and proves it writable with a probe file, or raises."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-"):
            pass
    except OSError as error:
        raise OutputDirError(f"{flag}={path} is not a writable directory: "
                             f"{error.strerror or error}") from error


def _check_free_space(num_params: int, model_dir: str, export_dir: Optional[str]) -> None:
    """Raises if a directory's disk has less room than the run will write there.

    Backups hold the float32 weights and AdamW's two slots (12 bytes a parameter) and a new
    one is written before the old one is removed; an export holds the weights once.
    """
    needs = [("--model_dir", model_dir, 2 * 12 * num_params + _FREE_SPACE_SLACK_BYTES)]
    if export_dir:
        needs.append(("--export_dir", export_dir, 4 * num_params + _FREE_SPACE_SLACK_BYTES))
    for flag, path, needed in needs:
        free = shutil.disk_usage(path).free
        if free < needed:
            raise OutputDirError(
                f"{flag}={path}: only {free / 2**20:.0f} MiB free on its disk, but the run "
                f"writes about {needed / 2**20:.0f} MiB there ({num_params:,} parameters); "
                "free some space or choose another directory")


def _backed_up_step(backup_dir: str) -> Optional[int]:
    """The optimizer step of the backup that `fit` will resume from, or None if there is none."""
    checkpoint = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))
    if not checkpoint:
        return None
    reader = tf.train.load_checkpoint(checkpoint)
    names = sorted(reader.get_variable_to_shape_map())
    # model/optimizer/iter, or .../base_optimizer/iter under a LossScaleOptimizer.
    for name in names:
        if name.startswith("model/optimizer/") and name.endswith(
                "/iter/.ATTRIBUTES/VARIABLE_VALUE"):
            return int(reader.get_tensor(name))
    return int(reader.get_tensor("train_counter/.ATTRIBUTES/VARIABLE_VALUE"))


class _Backup(tf_keras.callbacks.BackupAndRestore):
    """Backs up at every epoch end and, with `checkpoint_steps`, every N optimizer steps.

    Keras' integer `save_freq` (which also makes `fit` resume mid-epoch) counts batches since
    `fit` started and then drops the epoch-end backup; this counts optimizer steps, so backups
    fall on the same steps after a resume, and keeps the epoch-end one. It also records the
    last batch a `steps_per_execution` call ran (Keras records the first), so a resume starts
    right after it.
    """

    def __init__(self, backup_dir: str, checkpoint_steps: Optional[int] = None):
        # `run` deletes the backup once the model is evaluated and exported, not `fit`.
        super().__init__(backup_dir, save_freq=checkpoint_steps or "epoch",
                         delete_checkpoint=False)
        self.checkpoint_steps = checkpoint_steps
        self._last_step = self._backed_up_step = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)  # restores the backup, if any
        self._last_step = self._backed_up_step = int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        if not self.checkpoint_steps:
            return super().on_train_batch_end(batch, logs)
        self._training_state.backup_if_preempted()
        self._training_state._ckpt_saved_batch.assign(batch)  # the call's last batch
        step = int(self.model.optimizer.iterations.numpy())
        if step // self.checkpoint_steps > self._last_step // self.checkpoint_steps:
            self._back_up_at(step, self._current_epoch)
        self._last_step = step
        return None

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step != self._backed_up_step:
            self._back_up_at(step, epoch)

    def _back_up_at(self, step: int, epoch: int) -> None:
        # Not the last step (`_StopAtStep` has just stopped `fit`): `fit` cannot resume from
        # there (it would take a step more), so a run killed after it, in evaluation or
        # export, resumes from the backup before and retakes the steps since.
        if not self.model.stop_training:
            self._back_up_finite(step, epoch)

    def _back_up_finite(self, step: int, epoch: int) -> None:
        # The loss guard sees a step's loss, computed before its update; this sees the update.
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(weight))
                                for weight in self.model.trainable_weights])
        if not bool(finite):
            raise _non_finite_error("the weights hold NaN or Inf", step, epoch, self.backup_dir)
        self._backup(epoch=epoch)
        self._backed_up_step = step


class _StopOnNonFiniteLoss(tf_keras.callbacks.Callback):
    """Raises NonFiniteLossError at the first NaN/Inf loss, before anything saves the weights.

    Unlike Keras' TerminateOnNaN, which ends `fit` normally (whose BackupAndRestore then deletes
    the backup and whose epoch end would back up the NaN weights), raising keeps the last good
    backup for a resume.
    """

    def __init__(self, backup_dir: str):
        super().__init__()
        self.backup_dir = backup_dir
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs)

    def _check(self, logs) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise _non_finite_error(f"the training loss is {float(loss)}",
                                    int(self.model.optimizer.iterations.numpy()), self._epoch,
                                    self.backup_dir)


def _non_finite_error(what: str, step: int, epoch: int, backup_dir: str) -> NonFiniteLossError:
    backed_up_step = _backed_up_step(backup_dir)
    return NonFiniteLossError(
        f"{what} at optimizer step {step} (epoch {epoch + 1}); training stopped and these "
        "weights were not saved. "
        + (f"The last good backup, of step {backed_up_step}, is kept in {backup_dir}: the same "
           "command resumes from it (fix the cause first, e.g. with a lower --learning_rate; "
           "delete it to start over)." if backed_up_step is not None else
           "No backup had been written yet; try a lower --learning_rate."))


def main(argv):
    del argv
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required")
    start = time.time()
    try:
        run(FLAGS)
    except (data.DataError, OutputDirError, NonFiniteLossError,
            distribution.StrategyError) as error:
        sys.exit(f"train: {error}")  # one line on stderr and exit status 1, no traceback
    logging.info("Done in %.1f s", time.time() - start)


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines every flag `run` reads: module, data, pretraining and training flags."""
    project_flags.define_module_flags(flag_values)
    project_flags.define_data_flags(flag_values)
    project_flags.define_pretraining_flags(flag_values)
    project_flags.define_training_flags(flag_values)


if __name__ == "__main__":
    define_flags()
    app.run(main)
