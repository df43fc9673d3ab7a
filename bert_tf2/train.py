"""Fine-tunes a BERT sentiment classifier, evaluates it and exports it for TF Serving.

  python -m bert_tf2.train --flagfile=configs/quickstart.flags --model_dir=M --export_dir=E

Read top to bottom, `run` is the whole job: strategy -> (modules) -> data -> model -> fit ->
evaluate -> export. Everything a run leaves behind is under --model_dir (checkpoints,
TensorBoard logs, history.csv, metrics.json) and --export_dir (SavedModel versions).

A run killed at any point and started again with the same command resumes from its last
backup (model, optimizer and step) instead of starting over.
"""

import json
import math
import os
import time
from typing import Dict

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
EXAMPLE_REVIEWS = ("这本书写得太好了，强烈推荐，值得一读！",
                   "质量很差，用了两天就坏了，非常失望。")


def run(flags_) -> Dict[str, Dict[str, float]]:
    """Runs the whole job described by the parsed flags and returns the metrics it wrote."""
    strategy = distribution.get_strategy(flags_.distribution_strategy,
                                         num_gpus=flags_.num_gpus, tpu=flags_.tpu)
    tf_keras.utils.set_random_seed(flags_.seed)
    tf_keras.mixed_precision.set_global_policy(flags_.mixed_precision)
    logging.info("Strategy %s with %d replica(s); dtype policy %s",
                 type(strategy).__name__, strategy.num_replicas_in_sync, flags_.mixed_precision)
    model_dir = distribution.writable_dir(flags_.model_dir)
    os.makedirs(model_dir, exist_ok=True)
    splits = data.load_splits(flags_.train_data, flags_.eval_data, flags_.test_data,
                              seed=flags_.seed, text_column=flags_.text_column,
                              label_column=flags_.label_column,
                              label_map=data.parse_label_map(flags_.label_map),
                              skip_bad_rows=flags_.skip_bad_rows)
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

    with strategy.scope():
        classifier = model_lib.build_classifier(flags_.encoder_handle,
                                                dropout_rate=flags_.dropout)
        classifier.compile(optimizer=_create_optimizer(flags_, total_steps),
                           loss=tf_keras.losses.BinaryCrossentropy(),
                           metrics=[tf_keras.metrics.BinaryAccuracy(name="accuracy"),
                                    tf_keras.metrics.AUC(name="auc")])

    def dataset_fn(examples, batch_size, training):
        def fn(input_context):
            return data.make_dataset(
                examples, batch_size=input_context.get_per_replica_batch_size(batch_size),
                preprocessor=preprocessor, seq_length=flags_.seq_length, training=training,
                seed=flags_.seed, dynamic_padding=flags_.dynamic_padding,
                input_context=input_context)
        return strategy.distribute_datasets_from_function(fn)

    dev = splits.get("dev")
    classifier.fit(
        dataset_fn(splits["train"], flags_.batch_size, training=True),
        epochs=epochs, steps_per_epoch=steps_per_epoch,
        validation_data=dataset_fn(dev, flags_.eval_batch_size, False) if dev else None,
        callbacks=[
            tf_keras.callbacks.BackupAndRestore(os.path.join(model_dir, "backup")),
            tf_keras.callbacks.TensorBoard(os.path.join(model_dir, "logs")),
            tf_keras.callbacks.CSVLogger(os.path.join(model_dir, "history.csv"), append=True),
            _StopAtStep(total_steps),
        ],
        verbose=2)
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

    text_classifier = model_lib.build_text_classifier(preprocessor, classifier,
                                                      seq_length=flags_.seq_length)
    if flags_.export_dir and distribution.is_chief():
        path = export.export_text_classifier(text_classifier, flags_.export_dir,
                                             keep=flags_.keep_exports)
        logging.info("Exported SavedModel to %s", path)
    probabilities = text_classifier(tf.constant(EXAMPLE_REVIEWS), training=False)
    for review, probability in zip(EXAMPLE_REVIEWS, probabilities.numpy()[:, 0]):
        print(f"P(positive)={probability:.3f}  {review}")
    return metrics


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
            epochs=flags_.pretrain_epochs, batch_size=flags_.batch_size,
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
        if int(self.model.optimizer.iterations) >= self.total_steps:
            self.model.stop_training = True


def main(argv):
    del argv
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required")
    start = time.time()
    run(FLAGS)
    logging.info("Done in %.1f s", time.time() - start)


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines every flag `run` reads: module, data and training flags."""
    project_flags.define_module_flags(flag_values)
    project_flags.define_data_flags(flag_values)
    project_flags.define_training_flags(flag_values)


if __name__ == "__main__":
    define_flags()
    app.run(main)
